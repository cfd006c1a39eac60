// Small DOM helpers. Every value from the server goes into the page as text, never as markup.
export const $ = (selector) => document.querySelector(selector);

export function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

export function row(cells) {
  const tr = document.createElement("tr");
  for (const cell of cells) {
    if (cell instanceof Node) {
      const td = document.createElement("td");
      td.append(cell);
      tr.append(td);
    } else {
      tr.append(el("td", cell));
    }
  }
  return tr;
}

// Replace a table body's rows; an empty list shows ``emptyText`` across ``columns``.
export function fill(tbody, rows, emptyText, columns) {
  tbody.replaceChildren(...rows);
  if (!rows.length) {
    const td = el("td", emptyText, "empty");
    td.colSpan = columns;
    const tr = document.createElement("tr");
    tr.append(td);
    tbody.append(tr);
  }
}

export function notify(text, isError) {
  const notice = $("#notice");
  notice.textContent = text;
  notice.classList.toggle("error", Boolean(isError));
  notice.hidden = !text;
}

export const number = (value) => Number(value).toLocaleString("en");
export const shortTime = (iso) => (iso ? iso.replace("T", " ").replace("Z", "") : "–");

export function button(text, className, onClick) {
  const node = el("button", text, className);
  node.type = "button";
  node.addEventListener("click", onClick);
  return node;
}

// The keys page: the table (filtered, a page of rows at a time), create, rotate, revoke (after a
// confirmation), the secret shown once.
import { $, button, el, fill, notify, number, row, shortTime } from "./dom.js";
import { api, getPage, integer, readJson, remember, signedInId } from "./session.js";

// Rows on a page: the server finds and pages the keys (a listing of every key would cost the
// gateway a second and tens of megabytes at 100,000 keys).
const PAGE_SIZE = 50;
const COLUMNS = 10;
// Typing pauses this long before the server is asked.
const FILTER_PAUSE_MS = 200;

let page = 0;
// The newest load: an answer to an older one (slower, or overtaken by typing) is dropped.
let loading = 0;
let typing = null;

export async function loadKeys() {
  const ticket = ++loading;
  const words = $("#keys-filter").value.trim();
  const query = new URLSearchParams({ limit: PAGE_SIZE, offset: page * PAGE_SIZE });
  if (words) query.set("q", words);
  const found = await getPage("keys?" + query);
  if (ticket !== loading) return;
  const pages = Math.max(1, Math.ceil(found.total / PAGE_SIZE));
  if (page >= pages) {
    // Fewer keys than when the page was chosen (deleted meanwhile): show the last page there is.
    page = pages - 1;
    await loadKeys();
    return;
  }
  render(found.items, found.total, Boolean(words));
}

function render(shown, total, filtered) {
  const pages = Math.max(1, Math.ceil(total / PAGE_SIZE));
  const first = page * PAGE_SIZE;
  fill($("#keys-table tbody"), shown.map(keyRow), filtered ? "No key matches the filter." : "No keys yet.", COLUMNS);
  const range = shown.length ? `${number(first + 1)}–${number(first + shown.length)} of ` : "";
  $("#keys-count").textContent = `${range}${number(total)} ${filtered ? "matching keys" : "keys"}`;
  $("#keys-page").textContent = `Page ${number(page + 1)} of ${number(pages)}`;
  $("#keys-prev").disabled = page === 0;
  $("#keys-next").disabled = page >= pages - 1;
}

// Show ``key`` (just created) whatever the filter and page: at the top of the table when it is
// not on the page (it has its place by name on the next load).
function pin(key) {
  const body = $("#keys-table tbody");
  if (body.querySelector(`tr[data-key="${CSS.escape(key.name)}"]`)) return;
  body.querySelector("td.empty")?.parentElement.remove();
  const tr = keyRow(key);
  tr.classList.add("pinned");
  body.prepend(tr);
}

function turn(step) {
  page = Math.max(0, page + step);
  loadKeys().catch((error) => notify(error.message, true));
}

function keyRow(key) {
  const actions = el("span", null, "actions");
  // An expired key gets a new expiry before a new secret (the server refuses otherwise).
  if (key.status === "active") actions.append(button("Rotate", "quiet", () => rotateKey(key)));
  if (key.status !== "revoked") actions.append(button("Revoke", "danger", () => revokeKey(key)));
  const tr = row([
    el("strong", key.name, "name"),
    el("code", key.id),
    el("span", key.status, "status " + key.status),
    key.scopes.join(", "),
    key.models.join(", ") || "all",
    limits(key),
    ollamaKeys(key),
    shortTime(key.expires_at),
    shortTime(key.last_used_at),
    actions,
  ]);
  tr.dataset.key = key.name;
  return tr;
}

// The limits set on the key, one a line; a number as the server sent it, digit for digit.
function limits(key) {
  const set = Object.entries(key.limits).filter(([, value]) => value !== "default");
  const list = el("span", set.length ? null : "defaults", "limits");
  for (const [name, value] of set) {
    // A long number may go to the next line after its "=", rather than be cut anywhere.
    const item = el("span", name + "=");
    item.append(document.createElement("wbr"), String(value));
    list.append(item);
  }
  return list;
}

// The Ollama public keys whose signed requests act as this key, each with a way to detach it.
function ollamaKeys(key) {
  const list = el("span", key.ollama_keys.length ? null : "–", "ollama-keys");
  for (const item of key.ollama_keys) {
    const entry = el("span", null, "ollama-key");
    const print = el("code", item.fingerprint.slice(0, 19) + "…");
    print.title = item.fingerprint + (item.comment ? " " + item.comment : "");
    entry.append(print, button("Detach", "quiet small", () => detach(key, item)));
    list.append(entry);
  }
  return list;
}

async function detach(key, item) {
  const question = `Detach ${item.fingerprint} from key ${key.name}? Its signed requests stop working at once.`;
  if (!(await confirmed(question, "Detach"))) return;
  try {
    await api("PATCH", "keys/" + encodeURIComponent(key.id), { remove_ollama_keys: [item.fingerprint] });
    notify("Detached " + item.fingerprint + " from key " + key.name + ".");
    await loadKeys();
  } catch (error) {
    notify(error.message, true);
  }
}

function showSecret(title, secret) {
  $("#secret-title").textContent = title;
  $("#secret-value").textContent = secret;
  $("#secret-copy").textContent = "Copy";
  $("#secret-panel").hidden = false;
}

export function hideSecret() {
  $("#secret-panel").hidden = true;
  $("#secret-value").textContent = "";
}

async function copySecret() {
  try {
    await navigator.clipboard.writeText($("#secret-value").textContent);
    $("#secret-copy").textContent = "Copied";
  } catch (ignored) {
    // No clipboard permission: select the text so Ctrl+C works.
    const range = document.createRange();
    range.selectNodeContents($("#secret-value"));
    const selection = getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
    $("#secret-copy").textContent = "Press Ctrl+C";
  }
}

function limitValue(text) {
  const value = text.trim();
  if (value === "") return undefined;
  return /^\d+$/.test(value) ? integer(value) : value;
}

async function createKey(event) {
  event.preventDefault();
  const form = event.target;
  const data = new FormData(form);
  const limits = {};
  // The form's limit inputs name the limits (index.html has one per limit).
  for (const input of form.querySelectorAll("input[data-limit]")) {
    const value = limitValue(String(data.get(input.name) || ""));
    if (value !== undefined) limits[input.name] = value;
  }
  const body = {
    name: String(data.get("name") || "").trim(),
    scopes: data.getAll("scope"), // exactly the boxes ticked (none: the server says a key needs one)
    models: String(data.get("models") || "")
      .split(",")
      .map((item) => item.trim())
      .filter(Boolean),
    limits,
    expires: String(data.get("expires") || "").trim() || "never",
  };
  try {
    const created = await readJson(await api("POST", "keys", body));
    showSecret("Key " + created.name + " created", created.key);
    form.reset();
    $("#create-box").open = false;
    notify("");
    await loadKeys();
    pin(created);
  } catch (error) {
    notify(error.message, true);
  }
}

async function rotateKey(key) {
  const own = key.id === signedInId();
  try {
    const rotated = await readJson(await api("POST", "keys/" + encodeURIComponent(key.id) + "/rotate"));
    let title = "Key " + rotated.name + " rotated";
    if (own) {
      // The old secret stopped working: this page goes on with the new one (else the reload
      // below would be refused, sign out, and the new secret would be lost).
      remember(rotated.key);
      title += " (the key you are signed in with: this page now uses the new secret)";
    }
    showSecret(title, rotated.key);
    await loadKeys();
  } catch (error) {
    notify(error.message, true);
  }
}

export function confirmed(text, answer = "Revoke") {
  const dialog = $("#confirm");
  $("#confirm-text").textContent = text;
  $("#confirm-yes").textContent = answer;
  return new Promise((resolve) => {
    const finish = (answer) => {
      $("#confirm-yes").removeEventListener("click", yes);
      $("#confirm-no").removeEventListener("click", no);
      dialog.removeEventListener("cancel", no);
      dialog.close();
      resolve(answer);
    };
    const yes = () => finish(true);
    const no = () => finish(false);
    $("#confirm-yes").addEventListener("click", yes);
    $("#confirm-no").addEventListener("click", no);
    dialog.addEventListener("cancel", no);
    dialog.showModal();
  });
}

async function revokeKey(key) {
  let question = "Revoke key " + key.name + " (" + key.id + ")? It stops working at once; this cannot be undone.";
  if (key.id === signedInId()) question += " It is the key you are signed in with: this page signs out.";
  if (!(await confirmed(question))) return;
  try {
    await api("POST", "keys/" + encodeURIComponent(key.id) + "/revoke");
    notify("Key " + key.name + " revoked.");
    await loadKeys();
  } catch (error) {
    notify(error.message, true);
  }
}

export function setUpKeys() {
  $("#create-form").addEventListener("submit", createKey);
  $("#keys-filter").addEventListener("input", () => {
    clearTimeout(typing);
    typing = setTimeout(() => {
      page = 0;
      turn(0);
    }, FILTER_PAUSE_MS);
  });
  $("#keys-prev").addEventListener("click", () => turn(-1));
  $("#keys-next").addEventListener("click", () => turn(1));
  $("#secret-copy").addEventListener("click", copySecret);
  $("#secret-done").addEventListener("click", hideSecret);
}

// The keys page: the table, create, rotate, revoke (after a confirmation), the secret shown once.
import { $, button, el, fill, notify, row, shortTime } from "./dom.js";
import { api, getJson, remember, signedInId } from "./session.js";

export async function loadKeys() {
  const keys = await getJson("keys");
  const rows = keys.map((key) => {
    const actions = el("span", null, "actions");
    // An expired key gets a new expiry before a new secret (the server refuses otherwise).
    if (key.status === "active") actions.append(button("Rotate", "quiet", () => rotateKey(key)));
    if (key.status !== "revoked") actions.append(button("Revoke", "danger", () => revokeKey(key)));
    const limits = Object.entries(key.limits)
      .filter(([, value]) => value !== "default")
      .map(([name, value]) => name + "=" + value)
      .join(", ");
    const tr = row([
      el("strong", key.name),
      el("code", key.id),
      el("span", key.status, "status " + key.status),
      key.scopes.join(", "),
      key.models.join(", ") || "all",
      limits || "defaults",
      ollamaKeys(key),
      shortTime(key.expires_at),
      shortTime(key.last_used_at),
      actions,
    ]);
    tr.dataset.key = key.name;
    return tr;
  });
  fill($("#keys-table tbody"), rows, "No keys yet.", 10);
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
  return /^\d+$/.test(value) ? Number(value) : value;
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
    const created = await (await api("POST", "keys", body)).json();
    showSecret("Key " + created.name + " created", created.key);
    form.reset();
    $("#create-box").open = false;
    notify("");
    await loadKeys();
  } catch (error) {
    notify(error.message, true);
  }
}

async function rotateKey(key) {
  const own = key.id === signedInId();
  try {
    const rotated = await (await api("POST", "keys/" + encodeURIComponent(key.id) + "/rotate")).json();
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
  $("#secret-copy").addEventListener("click", copySecret);
  $("#secret-done").addEventListener("click", hideSecret);
}

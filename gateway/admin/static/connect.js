// The connect page: Ollama public keys asking for access (`ollama signin` against the gateway
// sends its user to #/connect?key=<token>), and granting one to an existing or a new key.
import { $, el, fill, notify, row, shortTime } from "./dom.js";
import { confirmed, loadKeys } from "./keys.js";
import { api, getJson, getPage } from "./session.js";

let current = null; // the key on show: {fingerprint, line, token, owner, request}
// Keys offered at once, and the newest listing of them (an older answer is dropped).
const CHOICES = 100;
let choosing = 0;
let typing = null;

export async function loadConnect(params) {
  const token = params.get("key");
  $("#connect-detail").hidden = !token;
  if (token) await showRequest(token);
  const pending = await getJson("connect/pending");
  const rows = pending.map((item) => {
    const link = el("a", item.fingerprint);
    link.href = "#/connect?key=" + encodeURIComponent(item.token);
    return row([link, item.request.user_agent || "–", item.request.address, shortTime(item.request.last_seen),
      String(item.request.count)]);
  });
  fill($("#connect-pending tbody"), rows, "No Ollama key is waiting for access.", 5);
}

async function showRequest(token) {
  current = await getJson("connect?key=" + encodeURIComponent(token));
  $("#connect-fingerprint").textContent = current.fingerprint;
  const seen = current.request;
  $("#connect-seen").textContent = seen
    ? `Asked ${seen.count} time(s), last ${shortTime(seen.last_seen)} from ${seen.address}, ` +
      `as ${seen.user_agent || "an unnamed client"}.`
    : "No request from this key has reached this gateway process yet (or it was long ago).";
  $("#connect-owner").textContent = current.owner
    ? `It already acts as the key ${current.owner.name} (${current.owner.id}).`
    : "";
  $("#connect-form").hidden = Boolean(current.owner);
  $("#connect-find").value = "";
  await listChoices();
}

// The active keys to choose from: the first by name, or those the words typed find (the server
// searches: there may be far more keys than a list can hold).
async function listChoices() {
  const ticket = ++choosing;
  const query = new URLSearchParams({ status: "active", limit: CHOICES });
  const words = $("#connect-find").value.trim();
  if (words) query.set("q", words);
  const found = await getPage("keys?" + query);
  if (ticket !== choosing) return;
  const choices = found.items.map((key) => {
    const option = el("option", key.name + " (" + key.id + ")");
    option.value = key.id;
    return option;
  });
  $("#connect-existing").replaceChildren(...choices);
  // Nothing found: nothing to attach to (until typing finds something).
  $("#connect-to-existing").disabled = !choices.length;
  if (!choices.length) $("#connect-to-new").checked = true;
  $("#connect-more").textContent =
    found.total > choices.length ? `the first ${choices.length} of ${found.total}: type to find others` : "";
}

async function grant(event) {
  event.preventDefault();
  if (!current) return;
  const data = new FormData(event.target);
  const toNew = data.get("target") === "new";
  const name = String(data.get("name") || "").trim();
  const existing = $("#connect-existing");
  if (!toNew && !existing.value) {
    notify("Choose the key to attach it to, or create a new one.", true);
    return;
  }
  const target = toNew ? "a new key " + name : "the key " + existing.selectedOptions[0]?.textContent;
  const question = `Let requests signed by ${current.fingerprint} act as ${target}?`;
  if (!(await confirmed(question, "Grant"))) return;
  try {
    if (toNew) {
      await api("POST", "keys", {
        name,
        scopes: data.getAll("scope"),
        models: String(data.get("models") || "").split(",").map((item) => item.trim()).filter(Boolean),
        add_ollama_keys: [current.line],
      });
    } else {
      await api("PATCH", "keys/" + encodeURIComponent(existing.value), { add_ollama_keys: [current.line] });
    }
  } catch (error) {
    notify(error.message, true);
    return;
  }
  notify(`Granted: the next \`ollama signin\` with that key says it is signed in as ${toNew ? name : "that key"}.`);
  event.target.reset();
  await loadConnect(new URLSearchParams({ key: current.token }));
  await loadKeys();
}

export function setUpConnect() {
  $("#connect-form").addEventListener("submit", grant);
  $("#connect-find").addEventListener("input", () => {
    clearTimeout(typing);
    typing = setTimeout(() => listChoices().catch((error) => notify(error.message, true)), 200);
  });
}


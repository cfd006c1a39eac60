// The admin page: sign in, then one of three pages chosen by the URL's #fragment. Plain DOM
// modules, no framework, no build step; uPlot (a classic script) draws the usage chart.
import { loadConnect, setUpConnect } from "./connect.js";
import { $, notify } from "./dom.js";
import { hideSecret, loadKeys, setUpKeys } from "./keys.js";
import { startLive, stopLive } from "./live.js";
import { api, forget, onUnauthorized, remember, signedIn } from "./session.js";
import { loadUsage, setUpUsage } from "./usage.js";

const PAGES = { keys: loadKeys, usage: loadUsage, live: startLive, connect: loadConnect };

function show(page) {
  for (const section of document.querySelectorAll("main > section")) {
    section.hidden = section.id !== "page-" + page;
  }
  $("#nav").hidden = page === "signin";
  for (const link of document.querySelectorAll("#nav a")) {
    link.classList.toggle("current", link.dataset.page === page);
  }
  if (page !== "live") stopLive();
  if (page !== "keys") hideSecret(); // a secret is shown once: leaving the page forgets it
}

function signOut(message) {
  forget();
  hideSecret();
  show("signin");
  notify(message || "", Boolean(message));
}

async function signIn(event) {
  event.preventDefault();
  const field = $("#signin-key");
  remember(field.value.trim());
  field.value = "";
  try {
    await api("GET", "keys?limit=1"); // the cheapest admin-only question: is this key an admin?
  } catch (error) {
    forget();
    show("signin");
    notify(error.status === 403 ? "That key lacks the admin scope." : error.message, true);
    return;
  }
  notify("");
  if (!location.hash || location.hash === "#signin") {
    location.hash = "#keys"; // the hashchange routes there
  } else {
    route();
  }
}

function route() {
  if (!signedIn()) {
    show("signin");
    return;
  }
  // "#keys", or "#/connect?key=…" (the sign-in link the ollama command prints).
  const [path, query] = (location.hash || "#keys").slice(1).replace(/^\//, "").split("?");
  const load = PAGES[path];
  if (!load) {
    location.hash = "#keys";
    return;
  }
  show(path);
  load(new URLSearchParams(query || "")).catch((error) => notify(error.message, true));
}

onUnauthorized(() => signOut("The key was refused (revoked, rotated or mistyped): sign in again."));
$("#signin-form").addEventListener("submit", signIn);
$("#sign-out").addEventListener("click", () => signOut(""));
setUpKeys();
setUpConnect();
setUpUsage();
window.addEventListener("hashchange", route);
route();

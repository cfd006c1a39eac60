// The live page: in flight (running on a server) and queued (waiting for a slot there), the
// upstreams and recent refusals, every few seconds.
import { $, el, fill, notify, number, row } from "./dom.js";
import { getJson } from "./session.js";

const LIVE_EVERY_MS = 3000;
let timer = null;

export async function startLive() {
  if (timer === null) {
    timer = setInterval(() => {
      // A tab nobody looks at asks nothing (each answer costs the upstream a version check).
      if (!document.hidden) loadLive().catch((error) => notify(error.message, true));
    }, LIVE_EVERY_MS);
  }
  await loadLive();
}

async function loadLive() {
  const live = await getJson("live");
  $("#live-time").textContent = "Last update " + new Date(live.time * 1000).toISOString().slice(11, 19) + " UTC.";
  $("#live-in-flight").textContent = number(live.in_flight);
  $("#live-waiting").textContent = number(live.queue.waiting ?? 0);
  $("#live-oldest").textContent = Number(live.queue.oldest_wait_s || 0).toFixed(1) + " s";
  $("#live-capacity").textContent = live.queue.capacity == null ? "no cap" : number(live.queue.capacity);
  fill(
    $("#live-upstreams tbody"),
    live.upstreams.map((up) =>
      row([
        up.name,
        el("span", up.state + (up.reason ? " (" + up.reason + ")" : ""), "status " + up.state),
        up.version ?? "–",
        number(up.in_flight ?? 0),
        number(up.queued ?? 0),
        Number(up.oldest_wait_s || 0).toFixed(1) + " s",
      ]),
    ),
    "No upstream.",
    6,
  );
  fill(
    $("#live-keys tbody"),
    live.keys.map((key) => row([key.key_name, el("code", key.key_id), number(key.in_flight), number(key.queued)])),
    "Nothing in flight or queued.",
    4,
  );
  fill(
    $("#live-refusals tbody"),
    live.refusals.map((item) =>
      row([
        new Date(item.time * 1000).toISOString().slice(11, 19),
        String(item.status),
        item.outcome,
        item.key_name ?? "–",
        item.client,
        item.method + " " + item.path,
      ]),
    ),
    "No refusals lately.",
    6,
  );
}

export function stopLive() {
  if (timer !== null) {
    clearInterval(timer);
    timer = null;
  }
}

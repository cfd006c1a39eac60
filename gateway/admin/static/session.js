// The admin key and the API. The key lives in this tab's sessionStorage only and goes out as a
// bearer header: no cookie, nothing in a URL.
const STORE_KEY = "ollama-gateway-admin-key";
let unauthorized = () => {};

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export const signedIn = () => Boolean(sessionStorage.getItem(STORE_KEY));
export const remember = (key) => sessionStorage.setItem(STORE_KEY, key);
export const forget = () => sessionStorage.removeItem(STORE_KEY);
// The public id inside the signed-in key (ogw_<id>_<secret>), to recognise it in the table.
export const signedInId = () => (sessionStorage.getItem(STORE_KEY) || "").split("_")[1] || null;

// What to do when the server refuses the key (revoked, rotated, mistyped).
export function onUnauthorized(handler) {
  unauthorized = handler;
}

export async function api(method, path, body) {
  const headers = { Authorization: "Bearer " + sessionStorage.getItem(STORE_KEY) };
  const init = { method, headers, cache: "no-store", credentials: "omit", referrerPolicy: "no-referrer" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch("api/" + path, init);
  if (!response.ok) {
    let message = response.statusText;
    try {
      message = (await response.json()).error || message;
    } catch (ignored) {
      // not JSON: keep the status text
    }
    if (response.status === 401) unauthorized();
    throw new ApiError(response.status, message);
  }
  return response;
}

// Limits go up to 2^63-1, past the integers a JS number holds exactly (2^53): such a number is
// read from its source text as a BigInt (shown digit for digit), and sent back as raw JSON text.
// (JSON.parse's source text and JSON.rawJSON: Chrome 114, Firefox 135, Safari 18.4.)
function exact(key, value, context) {
  if (typeof value === "number" && !Number.isSafeInteger(value) && /^-?\d+$/.test(context?.source ?? "")) {
    return BigInt(context.source);
  }
  return value;
}

export const readJson = async (response) => JSON.parse(await response.text(), exact);
export const getJson = async (path) => readJson(await api("GET", path));

// A page of a listing, and how many items the listing finds in all (its X-Total-Count).
export async function getPage(path) {
  const response = await api("GET", path);
  return { items: await readJson(response), total: Number(response.headers.get("X-Total-Count")) };
}

// A whole number typed as digits, for JSON.stringify: exactly, however large. (A browser without
// JSON.rawJSON sends a large one as text, which the API refuses rather than store it rounded.)
export function integer(digits) {
  const value = digits.replace(/^0+(?=\d)/, "");
  if (Number.isSafeInteger(Number(value))) return Number(value);
  return JSON.rawJSON ? JSON.rawJSON(value) : value;
}

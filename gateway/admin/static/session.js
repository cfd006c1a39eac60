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

export const getJson = async (path) => (await api("GET", path)).json();

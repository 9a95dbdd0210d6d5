// The gateway's HTTP API as the dashboard calls it: the paths it uses, and one
// caller that turns JSON errors into Errors and, on a 401, waits for the
// visitor to sign in and tries once more. No DOM here: signing in is passed in.

/**
 * The page's API caller, `api(method, path, body)`: resolves to the JSON
 * answer (null for 204), throws an Error with `status` and `code` on an error.
 * `signIn()` resolves once the session cookie is set.
 */
export function createApi(signIn) {
  const api = async (method, path, body, signedIn = false) => {
    const init = { method, headers: {} };
    if (body !== undefined) {
      init.headers['content-type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    const response = await fetch(path, init);
    if (response.status === 401 && !signedIn) {
      await signIn();
      return api(method, path, body, true);
    }
    let data = null;
    if (response.status !== 204) {
      try { data = await response.json(); } catch { data = null; }
    }
    if (!response.ok) {
      const message = data?.error?.message ?? `${response.status} ${response.statusText}`;
      throw Object.assign(new Error(message), { status: response.status, code: data?.error?.code });
    }
    return data;
  };
  return api;
}

/** Trades an API key for the session cookie; resolves to the raw response. */
export function startSession(key) {
  return fetch('/api/session', { method: 'POST', headers: { authorization: `Bearer ${key}` } });
}

export const AGENTS_PATH = '/api/agents';
export const RUNS_PATH = '/api/runs';
export const runsPath = (limit) => `${RUNS_PATH}?limit=${limit}`;
export const runPath = (id) => `${RUNS_PATH}/${encodeURIComponent(id)}`;
export const runEventsPath = (id) => `${runPath(id)}/events`;
export const deliveriesPath = (status, limit) => `/api/webhooks/deliveries?status=${status}&limit=${limit}`;
export const retryPath = (id) => `/api/webhooks/deliveries/${encodeURIComponent(id)}/retry`;

// Serves Web-standard route handlers (Request in, Response out), as Next.js
// calls them, on a Node http server: the request is built from the socket's
// bytes, and the response body is streamed back as the handler produces it.
import http from 'node:http';
import { Readable } from 'node:stream';

/** Starts a server for `routes` ({ 'POST /api/chat': handler, … }); resolves to { base, seen, close }. */
export async function serveRoutes(routes) {
  const seen = [];
  const server = http.createServer(async (req, res) => {
    const chunks = [];
    for await (const chunk of req) chunks.push(chunk);
    const body = Buffer.concat(chunks);
    const url = `http://${req.headers.host}${req.url}`;
    const entry = { method: req.method, url, headers: req.headers, body: body.toString('utf8'), aborted: false };
    seen.push(entry);
    res.on('close', () => { if (!res.writableFinished) entry.aborted = true; });
    const handler = routes[`${req.method} ${new URL(url).pathname}`];
    if (!handler) { res.writeHead(404).end(); return; }
    const request = new Request(url, {
      method: req.method,
      headers: req.headers,
      body: req.method === 'GET' ? undefined : body,
    });
    const response = await handler(request);
    res.writeHead(response.status, Object.fromEntries(response.headers));
    if (!response.body) { res.end(); return; }
    Readable.fromWeb(response.body).on('error', () => res.destroy()).pipe(res);
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    base: `http://127.0.0.1:${server.address().port}`,
    seen,
    close: () => new Promise((resolve) => { server.closeAllConnections(); server.close(resolve); }),
  };
}

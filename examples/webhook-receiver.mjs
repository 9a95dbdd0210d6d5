// A receiver for Sluice's run webhooks (SPEC 13) on node:http and the
// official Standard Webhooks package (npm install standardwebhooks).
//
//   SLUICE_WEBHOOK_SECRET=whsec_... node examples/webhook-receiver.mjs [PORT]
//
// PORT (or $PORT; default 8000; 0 takes a free one) on $HOST (default
// 127.0.0.1). It prints "listening on http://HOST:PORT" first, then one JSON
// line per run that ended: {"id", "run_id", "status", "text"}.
//
// What to answer Sluice:
// - 2xx once the event is stored: delivered. Answer at once and do the work
//   afterwards. A delivery can come again (when an answer is lost); every
//   attempt carries the same webhook-id, so a known id gets 200 at once and
//   is not handled twice.
// - 410 Gone: stop, no more attempts (this URL is retired).
// - anything else, or no answer within timeout_secs: tried again after the
//   next wait of retry_secs. A bad signature gets 400 and is never handled.
import http from 'node:http';
import { pathToFileURL } from 'node:url';
import { Webhook } from 'standardwebhooks';

const MAX_BODY = 16 << 20; // the run's whole text rides in the body

/** Handles a new event, after the answer: here, one JSON line on stdout. */
function handle(id, event) {
  if (event?.type !== 'run.finished') return; // a type this receiver does not know yet
  const run = event.data;
  console.log(JSON.stringify({ id, run_id: run.id, status: run.status, text: run.text }));
}

/** An http.Server that verifies, stores and answers, then hands each new event to `onEvent`. */
export function createReceiver(secret, onEvent = handle) {
  const webhook = new Webhook(secret);
  // The ids stored. In production: a unique column written in the same
  // transaction as the event, and a worker that takes the work from there.
  const stored = new Set();
  return http.createServer((request, response) => {
    if (request.method !== 'POST') return response.writeHead(405).end();
    const chunks = [];
    let size = 0;
    request.on('data', (chunk) => {
      size += chunk.length;
      if (size <= MAX_BODY) return chunks.push(chunk);
      response.writeHead(413, { connection: 'close' }).end();
      request.destroy();
    });
    request.on('end', () => {
      const body = Buffer.concat(chunks); // the raw bytes: the signature covers them
      let event;
      try {
        event = webhook.verify(body, request.headers);
      } catch (error) {
        console.error(`refused: ${error.message}`);
        return response.writeHead(400).end();
      }
      const id = request.headers['webhook-id'];
      if (stored.has(id)) return response.writeHead(200).end(); // a retry: already ours
      stored.add(id);
      response.writeHead(204).end();
      setImmediate(() => {
        try {
          onEvent(id, event);
        } catch (error) {
          console.error(`cannot handle ${id}: ${error.stack}`); // in production: retried from the store
        }
      });
    });
  });
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const port = Number(process.argv[2] ?? process.env.PORT ?? 8000);
  const host = process.env.HOST ?? '127.0.0.1';
  const server = createReceiver(process.env.SLUICE_WEBHOOK_SECRET);
  server.listen(port, host, () => console.log(`listening on http://${host}:${server.address().port}`));
}

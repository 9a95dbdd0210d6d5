"""A receiver for Sluice's run webhooks (SPEC 13), on the stdlib's HTTP
server and the Standard Webhooks library (pip install standardwebhooks).

  SLUICE_WEBHOOK_SECRET=whsec_... python examples/webhook_receiver.py [PORT]

PORT (or $PORT; default 8000; 0 takes a free one) on $HOST (default
127.0.0.1). It prints "listening on http://HOST:PORT" first, then one JSON
line per run that ended: {"id", "run_id", "status", "text"}.

What to answer Sluice:
- 2xx once the event is stored: delivered. A delivery can come again (when
  an answer is lost); every attempt carries the same webhook-id, so a known
  id gets 200 at once and is not handled twice.
- 410 Gone: stop, no more attempts (this URL is retired).
- anything else, or no answer within timeout_secs: tried again after the
  next wait of retry_secs. A bad signature gets 400 and is never handled.
"""
import json, os, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

WEBHOOK = Webhook(os.environ["SLUICE_WEBHOOK_SECRET"])
MAX_BODY = 16 << 20  # the run's whole text rides in the body
# The ids handled. In production: a unique column written in the same
# transaction as the event, so a crash cannot store one without the other.
handled, lock = set(), threading.Lock()


def store(msg_id, event):
    """Handles a new event: here, one JSON line on stdout."""
    if event.get("type") != "run.finished":
        return  # a type this receiver does not know yet: acknowledged
    run = event["data"]
    line = {"id": msg_id, "run_id": run["id"], "status": run["status"], "text": run["text"]}
    print(json.dumps(line), flush=True)


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            return self.answer(411)
        if not 0 <= length <= MAX_BODY:
            return self.answer(413)
        body = self.rfile.read(length)  # the raw bytes: the signature covers them
        try:
            event = WEBHOOK.verify(body, dict(self.headers.items()))
        except (WebhookVerificationError, ValueError) as e:
            self.log_message("refused: %s", e)
            return self.answer(400)
        msg_id = self.headers["webhook-id"]
        with lock:  # a retry arriving meanwhile waits for this one's outcome
            if msg_id in handled:
                return self.answer(200)
            try:
                store(msg_id, event)
            except Exception as e:  # not stored: answer so, Sluice retries
                self.log_message("cannot store %s: %r", msg_id, e)
                return self.answer(500)
            handled.add(msg_id)
        self.answer(204)

    def answer(self, status):
        self.send_response(status)
        if status != 204:
            self.send_header("Content-Length", "0")
        self.end_headers()


if __name__ == "__main__":
    port = int(sys.argv[1] if len(sys.argv) > 1 else os.environ.get("PORT", "8000"))
    server = ThreadingHTTPServer((os.environ.get("HOST", "127.0.0.1"), port), Handler)
    host, port = server.server_address[:2]
    print(f"listening on http://{host}:{port}", flush=True)
    server.serve_forever()

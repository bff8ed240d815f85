"""A webhook receiver for the integration tests, verifying with the official
`standardwebhooks` library (not Haven's code).

    webhook_receiver.py DIR

Listens on 127.0.0.1 (an ephemeral port, written to DIR/port). For each
request it reads, fresh from DIR:
  secrets      one whsec_ secret per line; the request must verify under EVERY
               listed secret (during a secret rotation both must sign)
  mode         "ok" (default), "fail" (always 500), or "fail-first N" (500 for
               the first N attempts of each webhook-id, then 200)
  delay_ms     sleep before answering (a slow receiver)
  hold         N: while this file exists, every request after the first N
               this receiver has seen is held unanswered (a delivery in
               flight); when the file goes, each held request is answered 503
               and logged with "held": true, so it never counts as accepted
It appends one JSON line per request to DIR/log.jsonl:
  {"webhook_id", "attempt", "verified", "status", "type", "data", "signatures"}
"""

import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook

DIR = sys.argv[1]
LOCK = threading.Lock()
SEEN = {}
ARRIVED = [0]


def read(name, default=""):
    try:
        with open(os.path.join(DIR, name)) as f:
            return f.read().strip()
    except FileNotFoundError:
        return default


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        headers = {k.lower(): v for k, v in self.headers.items()}
        secrets = [s for s in read("secrets").splitlines() if s.strip()]
        verified = bool(secrets)
        for secret in secrets:
            try:
                Webhook(secret.strip()).verify(body, headers)
            except Exception:
                verified = False
        msg_id = headers.get("webhook-id", "")
        with LOCK:
            SEEN[msg_id] = SEEN.get(msg_id, 0) + 1
            attempt = SEEN[msg_id]
            ARRIVED[0] += 1
            arrival = ARRIVED[0]
            with open(os.path.join(DIR, "arrivals"), "w") as f:
                f.write(str(arrival))
        hold = read("hold", "")
        held = bool(hold) and arrival > int(hold)
        if held:
            deadline = time.monotonic() + 120
            while os.path.exists(os.path.join(DIR, "hold")) and time.monotonic() < deadline:
                time.sleep(0.02)
        mode = read("mode", "ok")
        if held:
            status = 503
        elif not verified:
            status = 401
        elif mode == "fail":
            status = 500
        elif mode.startswith("fail-first"):
            status = 500 if attempt <= int(mode.split()[1]) else 200
        else:
            status = 200
        delay = int(read("delay_ms", "0") or 0)
        if delay:
            time.sleep(delay / 1000)
        try:
            doc = json.loads(body)
            event_type, data = doc.get("type"), doc.get("data")
        except ValueError:
            event_type, data = None, None
        line = {"webhook_id": msg_id, "attempt": attempt, "verified": verified,
                "status": status, "type": event_type, "data": data,
                "signatures": len(headers.get("webhook-signature", "").split())}
        if held:
            line["held"] = True
        with LOCK:
            with open(os.path.join(DIR, "log.jsonl"), "a") as f:
                f.write(json.dumps(line) + "\n")
        try:
            self.send_response(status)
            self.send_header("content-length", "0")
            self.end_headers()
        except OSError:
            pass  # the sender is gone (killed while this request was held)


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
with open(os.path.join(DIR, "port.tmp"), "w") as f:
    f.write(str(server.server_address[1]))
os.rename(os.path.join(DIR, "port.tmp"), os.path.join(DIR, "port"))
server.serve_forever()

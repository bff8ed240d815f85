"""An SMTP relay for the integration tests, built on the third-party `aiosmtpd`
server (not Haven's code), with DKIM verification by `dkimpy`.

    smtp_server.py --port 0 --dir D [--cert C --key K] [--require-starttls]
                   [--implicit-tls] [--auth USER:PASS] [--dkim-txt NAME=FILE]...

Listens on 127.0.0.1 only and prints one JSON line {"ready": true, "port": N}
to stdout once it accepts connections (--port 0 picks a free port).

  --cert/--key        PEM certificate chain and key. Without --implicit-tls
                      they enable STARTTLS (advertised in EHLO); without them
                      the server speaks plaintext only and offers no STARTTLS.
  --require-starttls  refuse mail transactions until STARTTLS was done.
  --implicit-tls      TLS from the first byte (SMTPS, port 465 style).
  --auth USER:PASS    offer AUTH PLAIN/LOGIN (only over TLS) and require it.
  --dkim-txt N=FILE   answer the DKIM key query for N (for example
                      "sel._domainkey.example.org") with the TXT record in
                      FILE; may be given several times.

Each transaction reads DIR/mode afresh:
  accept         (default) take every message
  tempfail       451 at RCPT
  tempfail-data  451 after DATA
  reject         550 at RCPT (the reply names the recipient, like real relays)
  reject-data    554 after DATA

Every accepted message is stored as DIR/<queue_id>.eml and appended as one JSON
line to DIR/mail.jsonl:
  mail_from, rcpt_tos, message_id, subject, text, html, x_haven_message_id,
  tls (the session was encrypted), auth_user, dkim_signature (the header is
  present), dkim_verified (dkimpy's verdict, null without --dkim-txt),
  queue_id (as sent in the 250 reply), peer_port (the client's source port),
  content_type, headers ([name, value] pairs).

SIGTERM or SIGINT stops it cleanly.
"""

import argparse
import asyncio
import email
import email.policy
import json
import os
import secrets
import signal
import ssl
import sys
import warnings

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

# aiosmtpd itself still sets the deprecated Session.login_data on AUTH.
warnings.filterwarnings("ignore", message="Session.login_data is deprecated")

try:
    import dkim
except ImportError:  # pragma: no cover - dkimpy is in requirements.txt
    dkim = None


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--dir", required=True)
    p.add_argument("--cert")
    p.add_argument("--key")
    p.add_argument("--require-starttls", action="store_true")
    p.add_argument("--implicit-tls", action="store_true")
    p.add_argument("--auth")
    p.add_argument("--dkim-txt", action="append", default=[])
    args = p.parse_args()
    if bool(args.cert) != bool(args.key):
        p.error("--cert and --key go together")
    if (args.require_starttls or args.implicit_tls) and not args.cert:
        p.error("--require-starttls and --implicit-tls need --cert and --key")
    if args.require_starttls and args.implicit_tls:
        p.error("--require-starttls and --implicit-tls exclude each other")
    if args.auth and ":" not in args.auth:
        p.error("--auth takes USER:PASS")
    return args


class Handler:
    def __init__(self, directory, dkim_records):
        self.dir = directory
        self.dkim_records = dkim_records

    def mode(self):
        try:
            with open(os.path.join(self.dir, "mode")) as f:
                return f.read().strip() or "accept"
        except FileNotFoundError:
            return "accept"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        mode = self.mode()
        if mode == "tempfail":
            return "451 4.3.0 Temporary local problem, try again later"
        if mode == "reject":
            return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        mode = self.mode()
        if mode == "tempfail-data":
            return "451 4.3.0 Queue full, try again later"
        if mode == "reject-data":
            return "554 5.7.1 Message refused by content policy"
        raw = envelope.original_content or envelope.content
        if isinstance(raw, str):
            raw = raw.encode("utf-8")
        queue_id = secrets.token_hex(6).upper()
        record = describe(raw)
        transport = server.transport
        record.update(
            mail_from=envelope.mail_from,
            rcpt_tos=list(envelope.rcpt_tos),
            tls=session.ssl is not None
            or (transport is not None and transport.get_extra_info("ssl_object") is not None),
            auth_user=auth_user(session),
            dkim_verified=self.verify_dkim(raw) if record["dkim_signature"] else None,
            queue_id=queue_id,
            # The client's port: the same on two messages when a connection was reused.
            peer_port=session.peer[1] if session.peer else None,
        )
        with open(os.path.join(self.dir, f"{queue_id}.eml"), "wb") as f:
            f.write(raw)
        with open(os.path.join(self.dir, "mail.jsonl"), "a") as f:
            f.write(json.dumps(record) + "\n")
        return f"250 2.0.0 Ok: queued as {queue_id}"

    def verify_dkim(self, raw):
        if dkim is None or not self.dkim_records:
            return None

        def dnsfunc(name, timeout=5):
            if isinstance(name, bytes):
                name = name.decode("ascii")
            return self.dkim_records.get(name.rstrip(".").lower())

        try:
            return bool(dkim.verify(raw, dnsfunc=dnsfunc))
        except Exception as e:  # a malformed signature is a failed one
            print(f"dkim verification error: {e}", file=sys.stderr)
            return False


def auth_user(session):
    data = getattr(session, "auth_data", None)
    if data is None:
        return None
    login = getattr(data, "login", data)
    return login.decode() if isinstance(login, bytes) else str(login)


def describe(raw):
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    text = html = None
    for part in msg.walk():
        if part.is_multipart():
            continue
        ctype = part.get_content_type()
        if ctype == "text/plain" and text is None:
            text = part.get_content()
        elif ctype == "text/html" and html is None:
            html = part.get_content()
    return {
        "message_id": msg.get("Message-ID"),
        "subject": msg.get("Subject"),
        "text": text,
        "html": html,
        "x_haven_message_id": msg.get("X-Haven-Message-Id"),
        "dkim_signature": msg.get("DKIM-Signature") is not None,
        "content_type": msg.get_content_type(),
        "headers": [[k, str(v)] for k, v in msg.items()],
    }


def make_authenticator(user, password):
    def authenticate(server, session, envelope, mechanism, auth_data):
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login == user.encode()
            and auth_data.password == password.encode()
        )
        if ok:
            return AuthResult(success=True, auth_data=auth_data.login)
        # handled=False: let aiosmtpd answer 535 itself.
        return AuthResult(success=False, handled=False)

    return authenticate


def load_dkim_records(items):
    records = {}
    for item in items:
        name, _, path = item.partition("=")
        with open(path) as f:
            records[name.rstrip(".").lower()] = f.read().strip().encode("ascii")
    return records


async def main():
    args = parse_args()
    os.makedirs(args.dir, exist_ok=True)
    handler = Handler(args.dir, load_dkim_records(args.dkim_txt))

    tls_context = None
    if args.cert:
        tls_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls_context.load_cert_chain(args.cert, args.key)

    kwargs = {"hostname": "smtp.test", "ident": "haven test relay"}
    if args.auth:
        user, _, password = args.auth.partition(":")
        kwargs.update(
            authenticator=make_authenticator(user, password),
            auth_required=True,
            # aiosmtpd only counts STARTTLS as TLS: with implicit TLS every
            # session is encrypted already.
            auth_require_tls=not args.implicit_tls,
        )
    if tls_context is not None and not args.implicit_tls:
        kwargs.update(tls_context=tls_context, require_starttls=args.require_starttls)

    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(handler, **kwargs),
        host="127.0.0.1",
        port=args.port,
        ssl=tls_context if args.implicit_tls else None,
    )
    port = server.sockets[0].getsockname()[1]

    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    print(json.dumps({"ready": True, "port": port}), flush=True)
    await stop.wait()
    server.close()
    try:
        # Newer Pythons wait for open client connections here: bound it.
        await asyncio.wait_for(server.wait_closed(), timeout=2)
    except asyncio.TimeoutError:
        pass


if __name__ == "__main__":
    asyncio.run(main())

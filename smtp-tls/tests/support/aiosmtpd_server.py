#!/usr/bin/python3
"""A real SMTP server for smtp-tls's tests: Debian's python3-aiosmtpd.

usage: aiosmtpd_server.py PORT OUTDIR [--cert PEM --key PEM] [--implicit]
                          [--auth USER:PASS] [--auth-require-tls] [--extra-mechs]

Prints "ready" once listening. Each message is written to OUTDIR as
<n>.eml (the data as received) with <n>.json (envelope, TLS, auth user).
Every session's commands go to OUTDIR/sessions.log as
"<peer> <tls:0|1> <line>", so tests can check what crossed in plaintext.

With --extra-mechs the server also offers CRAM-MD5 (RFC 2195),
SCRAM-SHA-256 (RFC 5802, RFC 7677) and XOAUTH2 (the bearer token is PASS),
written here from the RFCs with Python's hashlib and hmac: an implementation
independent of the client's.
"""
import base64
import hashlib
import hmac
import secrets
import asyncio
import json
import os
import ssl
import sys

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import MISSING, SMTP, AuthResult, LoginPassword


def main():
    args = sys.argv[1:]
    port, outdir = int(args[0]), args[1]
    opts = {}
    i = 2
    while i < len(args):
        a = args[i]
        if a in ("--cert", "--key", "--auth"):
            opts[a] = args[i + 1]
            i += 2
        else:
            opts[a] = True
            i += 1
    context = None
    if "--cert" in opts:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(opts["--cert"], opts["--key"])
    user, password = (opts.get("--auth") or ":").split(":", 1)
    count = [0]

    def tls(session):
        # aiosmtpd records STARTTLS in session.ssl; implicit TLS is the whole listener.
        return session.ssl is not None or "--implicit" in opts
    log = open(os.path.join(outdir, "sessions.log"), "a", buffering=1)

    class Handler:
        async def handle_DATA(self, server, session, envelope):
            count[0] += 1
            n = count[0]
            with open(os.path.join(outdir, f"{n}.eml"), "wb") as f:
                f.write(envelope.original_content or envelope.content)
            meta = {
                "mail_from": envelope.mail_from,
                "rcpt_tos": envelope.rcpt_tos,
                "tls": tls(session),
                "auth_user": (session.auth_data.login.decode() if session.auth_data else None),
            }
            with open(os.path.join(outdir, f"{n}.json"), "w") as f:
                json.dump(meta, f)
            return "250 2.0.0 stored"

    def b64(data):
        return base64.b64encode(data).decode()

    def logged_in(server, login, ok):
        log.write(f"{server.session.peer} {int(tls(server.session))} AUTH-CREDENTIALS\n")
        if not ok:
            return AuthResult(success=False, handled=False)
        return AuthResult(success=True, auth_data=LoginPassword(login.encode(), b""))

    async def initial_response(server, args):
        if len(args) > 1:
            return base64.b64decode(args[1])
        return await server.challenge_auth("")

    class ExtraMechanisms(Handler):
        async def auth_CRAM__MD5(self, server, args):
            challenge = f"<{secrets.token_hex(8)}@aiosmtpd.test>".encode()
            response = await server.challenge_auth(challenge)
            if response is MISSING:
                return AuthResult(success=False, handled=True)
            login, _, digest = response.decode().rpartition(" ")
            expected = hmac.new(password.encode(), challenge, hashlib.md5).hexdigest()
            return logged_in(server, login, login == user and hmac.compare_digest(digest, expected))

        async def auth_XOAUTH2(self, server, args):
            blob = await initial_response(server, args)
            fields = dict(f.split("=", 1) for f in blob.decode().split("\x01") if "=" in f)
            login = fields.get("user", "")
            if login == user and fields.get("auth") == "Bearer " + password:
                return logged_in(server, login, True)
            # The error goes in a challenge, which the client answers empty.
            await server.challenge_auth('{"status":"401","schemes":"bearer"}')
            return logged_in(server, login, False)

        async def auth_SCRAM__SHA__256(self, server, args):
            first = (await initial_response(server, args)).decode()
            flag, authzid, bare = first.split(",", 2)
            gs2_header = f"{flag},{authzid},"
            attrs = dict(a.split("=", 1) for a in bare.split(","))
            login = attrs["n"].replace("=2C", ",").replace("=3D", "=")
            nonce = attrs["r"] + secrets.token_urlsafe(18)
            salt, iterations = secrets.token_bytes(16), 4096
            server_first = f"r={nonce},s={b64(salt)},i={iterations}"
            final = (await server.challenge_auth(server_first)).decode()
            without_proof, _, proof = final.rpartition(",p=")
            fattrs = dict(a.split("=", 1) for a in without_proof.split(","))
            salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
            client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
            stored_key = hashlib.sha256(client_key).digest()
            auth_message = f"{bare},{server_first},{without_proof}".encode()
            signature = hmac.new(stored_key, auth_message, hashlib.sha256).digest()
            expected = bytes(a ^ b for a, b in zip(client_key, signature))
            ok = (
                login == user
                and fattrs.get("r") == nonce
                and fattrs.get("c") == b64(gs2_header.encode())
                and hmac.compare_digest(base64.b64decode(proof), expected)
            )
            if ok:
                server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
                verifier = hmac.new(server_key, auth_message, hashlib.sha256).digest()
                # The server's proof, answered with an empty line.
                await server.challenge_auth("v=" + b64(verifier))
            return logged_in(server, login, ok)

    def authenticator(server, session, envelope, mechanism, auth_data):
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login.decode() == user
            and auth_data.password.decode() == password
        )
        log.write(f"{session.peer} {int(tls(session))} AUTH-CREDENTIALS\n")
        return AuthResult(success=ok, handled=False, auth_data=auth_data)

    class LoggingSMTP(SMTP):
        async def smtp_MAIL(self, arg):
            log.write(f"{self.session.peer} {int(tls(self.session))} MAIL {arg}\n")
            return await super().smtp_MAIL(arg)

    class MyController(Controller):
        def factory(self):
            kwargs = dict(hostname="aiosmtpd.test")
            if context is not None and "--implicit" not in opts:
                kwargs.update(tls_context=context, require_starttls=False)
            if user:
                kwargs.update(
                    authenticator=authenticator,
                    auth_require_tls="--auth-require-tls" in opts,
                    auth_exclude_mechanism=[],
                )
            return LoggingSMTP(self.handler, **kwargs)

    ctl_kwargs = dict(hostname="127.0.0.1", port=port)
    if context is not None and "--implicit" in opts:
        ctl_kwargs["ssl_context"] = context
    handler = ExtraMechanisms() if "--extra-mechs" in opts else Handler()
    controller = MyController(handler, **ctl_kwargs)
    controller.start()
    print("ready", flush=True)
    try:
        sys.stdin.read()
    finally:
        controller.stop()


if __name__ == "__main__":
    main()

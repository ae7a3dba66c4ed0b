#!/usr/bin/python3
"""A real SMTP server for smtp-tls's tests: Debian's python3-aiosmtpd.

usage: aiosmtpd_server.py PORT OUTDIR [--cert PEM --key PEM] [--implicit]
                          [--auth USER:PASS] [--auth-require-tls]

Prints "ready" once listening. Each message is written to OUTDIR as
<n>.eml (the data as received) with <n>.json (envelope, TLS, auth user).
Every session's commands go to OUTDIR/sessions.log as
"<peer> <tls:0|1> <line>", so tests can check what crossed in plaintext.
"""
import asyncio
import json
import os
import ssl
import sys

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword


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
    controller = MyController(Handler(), **ctl_kwargs)
    controller.start()
    print("ready", flush=True)
    try:
        sys.stdin.read()
    finally:
        controller.stop()


if __name__ == "__main__":
    main()

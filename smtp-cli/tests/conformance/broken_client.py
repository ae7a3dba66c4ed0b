#!/usr/bin/env python3
"""A deliberately broken SMTP client, so that every judge of
`smtp conformance client` is seen to FAIL. Its faults, on purpose:
- reads replies through one buffer kept across STARTTLS (takes injected
  replies as answers), and does not verify certificates;
- goes on without TLS when STARTTLS is missing or refused, and sends
  AUTH PLAIN in the clear whenever AUTH is offered;
- no timeouts at all (hangs on a silent or dripping server);
- pipelines MAIL, RCPT, DATA and the body without waiting for the 354,
  and sends DATA whatever the recipients' replies;
- sends the message bytes as they are (bare LF, no dot-stuffing);
- exits 0 whatever happens after the dot (lost reply, 421, rejection).
With --sloppy first, a different set of faults, for the judges the first
set cannot reach: no EHLO and no STARTTLS at all (straight to MAIL after
the greeting, so MAIL goes in the clear and a server refusing EHLO still
gets the message), one command at a time, and exit 1 whatever happens.
Usage: broken_client.py [--sloppy] HOST PORT FROM PASSWORD-FILE MESSAGE TO...
"""
import base64, socket, ssl, sys

args = sys.argv[1:]
sloppy = args[:1] == ["--sloppy"]
if sloppy:
    args = args[1:]
host, port, sender, pwfile, msgfile = args[:5]
rcpts = args[5:]
password = open(pwfile).read().strip()
message = open(msgfile, "rb").read()
sock = socket.create_connection((host, int(port)))
buf = b""

def reply():
    global buf
    lines = []
    while True:
        while b"\n" not in buf:
            chunk = sock.recv(4096)
            if not chunk:
                sys.exit(3)
            buf += chunk
        line, buf = buf.split(b"\n", 1)
        lines.append(line.rstrip(b"\r").decode("latin-1"))
        if len(line) < 4 or line[3:4] != b"-":
            return lines

def send(s):
    sock.sendall(s if isinstance(s, bytes) else s.encode() + b"\r\n")

reply()
if sloppy:
    send(b"MAIL FROM:<%s>\r\n" % sender.encode())
    reply()
    for r in rcpts:
        send(b"RCPT TO:<%s>\r\n" % r.encode())
        reply()
    send("DATA")
    if reply()[0].startswith("354"):
        send(message + b".\r\n")
        reply()
    send("QUIT")
    sys.exit(1)
send("EHLO broken.test")
caps = reply()
if caps[0].startswith("5"):
    caps = []
if any("STARTTLS" in c for c in caps):
    send("STARTTLS")
    if reply()[0].startswith("220"):
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        sock = ctx.wrap_socket(sock)
        send("EHLO broken.test")
        caps = reply()
if any(c[4:].startswith("AUTH") for c in caps):
    token = base64.b64encode(b"\0conformance\0" + password.encode()).decode()
    send("AUTH PLAIN " + token)
    reply()
send(b"MAIL FROM:<%s>\r\n" % sender.encode() + b"".join(b"RCPT TO:<%s>\r\n" % r.encode() for r in rcpts)
     + b"DATA\r\n" + message + b".\r\n")
try:
    for _ in range(len(rcpts) + 3):
        reply()
except SystemExit:
    pass
send("QUIT")
sys.exit(0)

#!/usr/bin/env python3
"""Writes the queue benchmark's input: messages, DNS zone, Postfix transport map.

    gen.py DIR COUNT DOMAINS HOSTS SINK_PORT [SEED]

- DIR/msgs/m00000.eml ...: COUNT one-recipient messages, each with its own
  To: (u<i>@dNNNN.test), Subject, Message-ID and a personalised body of
  1-2 KiB (lines of at most 78 characters, CRLF). Every domain gets
  COUNT/DOMAINS messages; the files are numbered in sending order, which is
  a seeded shuffle (a real list is not sorted by domain).
- DIR/list: the message paths in sending order, one a line.
- DIR/zone: for dns_zone (smtp-testkit/examples/dns_zone.rs): domain i is
  d{i:04}.test, MX 10 mx.d{i:04}.test, whose A record is 127.0.0.{2 + i % HOSTS}.
- DIR/transport: the same mapping for Postfix (`d0000.test smtp:[127.0.0.2]:PORT`).
- DIR/sinks: the sink addresses, one a line.
- DIR/merge.csv and DIR/merge.eml: the same COUNT messages as a mail merge
  (`smtp send --merge merge.csv --template merge.eml`): one row per message
  in the same order (columns email, name, no, word, text; text holds the
  body's personalised lines), and a template with {{column}} placeholders
  that renders each row to the message file of the same number (but for
  the Message-ID, which a merge makes per message).
"""
import csv
import os
import random
import sys

out, count, domains, hosts, port = sys.argv[1], *map(int, sys.argv[2:6])
seed = int(sys.argv[6]) if len(sys.argv) > 6 else 14
if count % domains:
    sys.exit(f"gen.py: {count} messages do not split evenly over {domains} domains")
if not 1 <= hosts <= 254:
    sys.exit("gen.py: HOSTS must be 1..254")
rng = random.Random(seed)


def host_ip(d):
    return f"127.0.0.{2 + d % hosts}"


os.makedirs(f"{out}/msgs", exist_ok=True)
with open(f"{out}/zone", "w") as z, open(f"{out}/transport", "w") as t:
    for d in range(domains):
        z.write(f"MX d{d:04}.test 10 mx.d{d:04}.test\nA mx.d{d:04}.test {host_ip(d)}\n")
        t.write(f"d{d:04}.test smtp:[{host_ip(d)}]:{port}\n")
with open(f"{out}/sinks", "w") as s:
    for k in range(min(hosts, domains)):
        s.write(f"{host_ip(k)}:{port}\n")

# Recipient i goes to domain i % domains; the sending order is shuffled.
order = list(range(count))
rng.shuffle(order)
words = ("account invoice order parcel renewal balance reminder delivery "
         "subscription statement payment receipt update notice schedule").split()
paths = []
rows = []
for n, i in enumerate(order):
    d = i % domains
    name = f"Recipient {i:05d}"
    head = (f"From: Bench Sender <sender@bench.test>\r\n"
            f"To: {name} <u{i:05d}@d{d:04}.test>\r\n"
            f"Subject: Your {rng.choice(words)} no. {i:05d}\r\n"
            f"Date: Thu, 01 Jan 2026 00:00:00 +0000\r\n"
            f"Message-ID: <bench-{i:05d}@bench.test>\r\n"
            f"MIME-Version: 1.0\r\n"
            f"Content-Type: text/plain; charset=us-ascii\r\n\r\n"
            f"Dear {name},\r\n\r\n")
    body = head
    lines = []
    # A line is at most 80 bytes: the message ends within one line of target.
    target = rng.randint(1024 + 80, 2048)
    while True:
        line = f"Your {rng.choice(words)}"
        while len(line) < 50:
            line += " " + rng.choice(words)
        line += f" (ref {i:05d}-{rng.randint(0, 99999):05d})."
        if len(body) + len(line) + 40 > target:
            break
        body += line + "\r\n"
        lines.append(line)
    word = head.split("Subject: Your ", 1)[1].split(" ", 1)[0]
    rows.append((f"u{i:05d}@d{d:04}.test", name, f"{i:05d}", word, "\r\n".join(lines)))
    body += f"\r\nKind regards,\r\nThe bench ({i:05d})\r\n"
    path = f"{out}/msgs/m{n:05d}.eml"
    with open(path, "w", newline="") as f:
        f.write(body)
    paths.append(path)
with open(f"{out}/list", "w") as f:
    f.write("\n".join(paths) + "\n")
with open(f"{out}/merge.csv", "w", newline="") as f:
    w = csv.writer(f, lineterminator="\r\n")
    w.writerow(("email", "name", "no", "word", "text"))
    w.writerows(rows)
with open(f"{out}/merge.eml", "w", newline="") as f:
    f.write("From: Bench Sender <sender@bench.test>\r\n"
            "To: {{name}} <{{email}}>\r\n"
            "Subject: Your {{word}} no. {{no}}\r\n"
            "Date: Thu, 01 Jan 2026 00:00:00 +0000\r\n"
            "Message-ID: <bench-{{no}}@bench.test>\r\n"
            "MIME-Version: 1.0\r\n"
            "Content-Type: text/plain; charset=us-ascii\r\n\r\n"
            "Dear {{name}},\r\n\r\n{{text}}\r\n\r\nKind regards,\r\nThe bench ({{no}})\r\n")

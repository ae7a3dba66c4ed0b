#!/usr/bin/env python3
"""Starts N copies of a command at once and waits for all of them.

    workers.py --out JSON --n N --logs DIR -- COMMAND [ARG...]

Worker k (1..N) gets stdout DIR/worker-k.out and stderr DIR/worker-k.err.
Each is waited for with wait4, so its figures are its own and exact: JSON
gets a list, one object per worker, with rc, wall (seconds from the start
of the first to its own exit), user, sys and maxrss_kib (getrusage).

Exits 0 when every worker exited 0 or 75 (EX_TEMPFAIL: `smtp queue run`
says so when it finds nothing more to claim while other workers still
hold leases), else 1. Used by bench/queue-pg.sh under watch.py, which
times the whole and sums the CPU of the workers (its child's children).
"""
import argparse
import json
import os
import subprocess
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--n", type=int, required=True)
    ap.add_argument("--logs", required=True)
    ap.add_argument("command", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    command = a.command[1:] if a.command[:1] == ["--"] else a.command
    start = time.monotonic()
    children = {}
    for k in range(1, a.n + 1):
        out = open(f"{a.logs}/worker-{k}.out", "wb")
        err = open(f"{a.logs}/worker-{k}.err", "wb")
        children[subprocess.Popen(command, stdout=out, stderr=err).pid] = k
    result = {}
    while children:
        pid, status, ru = os.wait4(-1, 0)
        k = children.pop(pid, None)
        if k is None:
            continue
        result[k] = dict(worker=k, rc=os.waitstatus_to_exitcode(status),
                         wall=time.monotonic() - start, user=ru.ru_utime,
                         sys=ru.ru_stime, maxrss_kib=ru.ru_maxrss)
    workers = [result[k] for k in sorted(result)]
    with open(a.out, "w") as f:
        json.dump(workers, f)
    raise SystemExit(0 if all(w["rc"] in (0, 75) for w in workers) else 1)


if __name__ == "__main__":
    main()

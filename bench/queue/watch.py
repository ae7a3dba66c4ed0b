#!/usr/bin/env python3
"""Runs one command of the queue benchmark and watches it.

    watch.py [options] -- COMMAND [ARG...]

Starts COMMAND, samples every --interval seconds (default 0.02) until it
exits, and with --expect N until the sinks have counted N messages (or
--timeout), then prints one JSON object:

- start_epoch: when COMMAND was started (UNIX seconds);
- wall: seconds from starting COMMAND to its exit; rc, its exit status;
  user, sys, maxrss_kib (getrusage of COMMAND and the children it waited
  for, so peak RSS is exact, not sampled), nvcsw, nivcsw;
- done: seconds from starting COMMAND until the sinks' counts summed to
  --expect (null without --expect or if they never did); counts: the
  sinks' last counts (messages, sessions);
- max_tcp, max_sockets: most TCP sockets, and most sockets of any kind
  (TCP, UDP, Unix), COMMAND held open at one sample (its TCP sockets are
  its connections to the sinks, or to an injection port: DNS is UDP);
- with --postfix QUEUE_DIR: postfix_max_tcp, most TCP sockets held at
  one sample by Postfix's smtp and scache processes (its connections to the
  sinks, cached ones included); postfix_max_rss_kib and postfix_max_pss_kib,
  the largest sum over its master and the master's children (the process
  list and memory are sampled every 0.25 s), postfix_max_procs,
  postfix_cpu (CPU seconds of the master, its children and the children it
  reaped, over the run);
- samples: how many samples were taken; loop: seconds watched; cpu_busy
  and busy_cpu: the machine's busy fraction (all CPUs) and CPU seconds over
  them, from /proc/stat; of those, irq_cpu (interrupts and softirqs: the
  loopback network's receive path runs there), kthreads_cpu (kernel
  threads: writeback, the ext4 journal), watcher_cpu (this script).

--sink-out FILE (repeatable) names an smtp-sink -c output; its last
`sess=S quit=Q mesg=M` is read. --interrupt-when DIR sends COMMAND SIGINT
once DIR holds a file (the queue's bodies/: enqueueing has begun).

A process's sockets are counted from /proc/PID/fd (see Sockets).
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import time

class Sockets:
    """Counts the sockets a process holds open, by protocol.

    A process's sockets are the socket:[inode] links under /proc/PID/fd;
    the protocol of each new inode is read once from its
    `system.sockprotoname` attribute ("TCP", "UDP", "UNIX-STREAM", ...).
    This costs a few system calls per descriptor and nothing per
    connection elsewhere on the machine (a sock_diag dump, as `ss` does,
    walks every TIME-WAIT socket: 13 ms a sample after 10,000 sessions).
    """

    def __init__(self):
        self.proto = {}

    def count(self, pid):
        """(TCP sockets, sockets of any kind) held by PID; (0, 0) once gone."""
        tcp = total = 0
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            return 0, 0
        for fd in fds:
            path = f"/proc/{pid}/fd/{fd}"
            try:
                link = os.readlink(path)
            except OSError:
                continue
            if not link.startswith("socket:["):
                continue
            total += 1
            inode = link[8:-1]
            proto = self.proto.get(inode)
            if proto is None:
                try:
                    proto = os.getxattr(path, "system.sockprotoname").rstrip(b"\0")
                except OSError:
                    continue
                self.proto[inode] = proto
            tcp += proto in (b"TCP", b"TCPv6")
        return tcp, total


def sink_counts(path):
    """(messages, sessions) from the end of an smtp-sink -c output."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 200))
            tail = f.read().decode("ascii", "replace")
    except OSError:
        return 0, 0
    last = [p for p in tail.replace("\r", "\n").split("\n") if "mesg=" in p]
    if not last:
        return 0, 0
    fields = dict(kv.split("=", 1) for kv in last[-1].split() if "=" in kv)
    try:
        return int(fields.get("mesg", 0)), int(fields.get("sess", 0))
    except ValueError:
        return 0, 0


CLK = os.sysconf("SC_CLK_TCK")


def machine():
    """(all ticks, idle ticks, irq+softirq ticks) from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return sum(fields), fields[3] + fields[4], fields[5] + fields[6]


def processes():
    """{pid: (ppid, comm, fields after the comm)} of every process."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        out[int(entry)] = (int(fields[1]), stat[stat.index("(") + 1:stat.rindex(")")], fields)
    return out


def cpu(fields, children=False):
    """CPU seconds of a process (with its reaped children's if asked)."""
    t = int(fields[11]) + int(fields[12])
    if children:
        t += int(fields[13]) + int(fields[14])
    return t / CLK


def census(master):
    """(kernel threads' CPU, Postfix's CPU: the master, its reaped children
    and its live ones) in seconds so far."""
    procs = processes()
    kthreads = sum(cpu(f) for pid, (ppid, _, f) in procs.items() if 2 in (pid, ppid))
    postfix = 0.0
    if master is not None:
        postfix = sum(cpu(f, pid == master) for pid, (ppid, _, f) in procs.items()
                      if master in (pid, ppid))
    return kthreads, postfix


def postfix_usage(master):
    """(rss_kib, pss_kib, processes, [pids of smtp and scache]) of the master
    and its children."""
    rss = pss = count = 0
    clients = []
    for pid, (ppid, comm, _) in processes().items():
        if master not in (pid, ppid):
            continue
        count += 1
        if comm in ("smtp", "scache"):
            clients.append(pid)
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Rss:"):
                        rss += int(line.split()[1])
                    elif line.startswith("Pss:"):
                        pss += int(line.split()[1])
        except OSError:
            pass
    return rss, pss, count, clients


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--interval", type=float, default=0.02)
    ap.add_argument("--sink-port", type=int, required=True)
    ap.add_argument("--sink-out", action="append", default=[])
    ap.add_argument("--expect", type=int)
    ap.add_argument("--timeout", type=float, default=3600)
    ap.add_argument("--postfix")
    ap.add_argument("--interrupt-when")
    ap.add_argument("--stdout", default=os.devnull)
    ap.add_argument("--stderr")
    ap.add_argument("command", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    command = a.command[1:] if a.command[:1] == ["--"] else a.command
    if not command:
        ap.error("no command")

    sockets = Sockets()
    clients = []
    master = None
    if a.postfix:
        with open(f"{a.postfix}/pid/master.pid") as f:
            master = int(f.read().split()[0])
    stats = dict(max_tcp=0, max_sockets=0, samples=0, done=None)
    pf = dict(postfix_max_tcp=0, postfix_max_rss_kib=0, postfix_max_pss_kib=0, postfix_max_procs=0)
    kthreads0, postfix0 = census(master)
    total0, idle0, irq0 = machine()
    out = open(a.stdout, "wb")
    err = open(a.stderr, "wb") if a.stderr else None
    start_epoch = time.time()
    start = time.monotonic()
    child = subprocess.Popen(command, stdout=out, stderr=err)
    pid, rc, usage, wall = child.pid, None, None, None
    interrupted = a.interrupt_when is None
    next_pf = 0.0
    while True:
        now = time.monotonic()
        if rc is None:
            got, status, ru = os.wait4(pid, os.WNOHANG)
            if got == pid:
                wall = now - start
                rc = os.waitstatus_to_exitcode(status)
                usage = ru
        if rc is None:
            tcp, total = sockets.count(pid)
            stats["max_tcp"] = max(stats["max_tcp"], tcp)
            stats["max_sockets"] = max(stats["max_sockets"], total)
            if not interrupted and os.path.isdir(a.interrupt_when) and os.listdir(a.interrupt_when):
                os.kill(pid, signal.SIGINT)
                interrupted = True
        if master is not None and now >= next_pf:
            rss, pss, procs, clients = postfix_usage(master)
            pf["postfix_max_rss_kib"] = max(pf["postfix_max_rss_kib"], rss)
            pf["postfix_max_pss_kib"] = max(pf["postfix_max_pss_kib"], pss)
            pf["postfix_max_procs"] = max(pf["postfix_max_procs"], procs)
            next_pf = now + 0.25
        if clients:
            pf["postfix_max_tcp"] = max(pf["postfix_max_tcp"],
                                        sum(sockets.count(p)[0] for p in clients))
        counts = [sink_counts(p) for p in a.sink_out]
        delivered = sum(c[0] for c in counts)
        if a.expect is not None and stats["done"] is None and delivered >= a.expect:
            stats["done"] = now - start
        stats["samples"] += 1
        finished = a.expect is None or stats["done"] is not None
        if rc is not None and finished:
            break
        if now - start > a.timeout:
            if rc is None:
                child.kill()
                continue
            break
        time.sleep(a.interval)
    loop = time.monotonic() - start
    total1, idle1, irq1 = machine()
    kthreads1, postfix1 = census(master)
    result = dict(
        start_epoch=start_epoch, wall=wall, rc=rc,
        user=usage.ru_utime, sys=usage.ru_stime, maxrss_kib=usage.ru_maxrss,
        nvcsw=usage.ru_nvcsw, nivcsw=usage.ru_nivcsw,
        counts=[list(c) for c in counts], delivered=delivered,
        cpu_busy=1 - (idle1 - idle0) / max(1, total1 - total0),
        busy_cpu=((total1 - total0) - (idle1 - idle0)) / CLK, loop=loop,
        irq_cpu=(irq1 - irq0) / CLK, kthreads_cpu=kthreads1 - kthreads0,
        watcher_cpu=sum(os.times()[:2]),
        **stats)
    if master is not None:
        result.update(pf, postfix_cpu=postfix1 - postfix0)
    json.dump(result, sys.stdout)
    print()


if __name__ == "__main__":
    main()

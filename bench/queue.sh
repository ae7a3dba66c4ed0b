#!/usr/bin/env bash
# The queue benchmark: COUNT one-recipient personalised messages to DOMAINS
# domains, delivered from a durable queue by `smtp send --queue` (direct
# delivery: MX lookups against a loopback DNS zone) and by a throwaway
# Postfix instance, to the same 8 smtp-sink processes, in one run. A
# benchmark, not a test; see docs/performance.md ("Queue: 10,000 messages to
# 1,000 domains") for the method and the latest table.
#
#   bench/queue.sh [COUNT] [DOMAINS]        default 10000 1000
#
# Input (bench/queue/gen.py): message i goes to u<i>@dNNNN.test with
# NNNN = i % DOMAINS, so COUNT/DOMAINS messages per domain, each with its own
# To:, Subject, Message-ID and body (1-2 KiB); the messages are given in a
# seeded shuffle of that order (as a real list would be), as COUNT message
# files on one command line. Domain dNNNN.test has MX 10 mx.dNNNN.test, whose
# A record is 127.0.0.(2 + NNNN % 8): 8 sinks, 127.0.0.2 ... 127.0.0.9, one
# port (PORT, default 25625), each `smtp-sink -c` (its counters tell how many
# messages and sessions it took).
#
# Runs, each against fresh sinks:
# 1. ours, end to end: `smtp send --queue Q --dns-server DNS --mx-port PORT
#    -t FILE...` from process start to exit (the DNS zone is served by
#    smtp-testkit's dns_zone example on 127.0.0.1). The outcome log's
#    timestamps split it into reading the files, enqueueing, and delivery.
# 2. ours, split: the same command with --queue-only (enqueue durably,
#    deliver nothing, exit 0), then `smtp queue run` delivering everything:
#    enqueue only, and delivery only.
# 3. Ours, as a mail merge: `smtp send --merge merge.csv --template
#    merge.eml --queue Q ...` (the same messages as one CSV and one
#    template), end to end. MERGE=0 leaves it out.
# 4. Postfix: a throwaway instance (bench/queue/postfix.sh: its own
#    config, queue and data directories under the work directory) with a
#    transport map `dNNNN.test smtp:[127.0.0.k]:PORT`, because Postfix's
#    resolver cannot be pointed at a DNS server on another port (so Postfix
#    does no MX or address lookups, and its queue manager sees 8 next hops
#    rather than 1,000 domains). The messages are injected into its smtpd on
#    127.0.0.1:PF_PORT (default 25626) by INJECT_SESSIONS (default 4)
#    parallel `smtp send --server` sessions (bench/queue/inject.sh;
#    pipelined, the fastest client at hand), timed from the start of the
#    injection until the sinks have counted every message.
#
# Each run fails the benchmark if the sinks' counts fall short (or exceed).
# Nothing is pinned: both tools and the sinks share the machine's CPUs
# (Postfix is many processes; pinning it to one CPU would handicap it).
# Peak RSS: getrusage of our process (exact); for Postfix, the sum over its
# master and children, sampled every 0.25 s (RSS and PSS). Sockets: the
# TCP sockets held open at once, sampled every 20 ms from /proc/PID/fd
# (bench/queue/watch.py): by our process; by Postfix's smtp and scache
# processes.
#
# Before each run the script waits (up to QUIET_WAIT seconds, default 600)
# for the machine to be idle, and the report shows the CPU no measured
# process accounts for ("other"), flagging runs where other work intruded.
#
# Environment: PORT, PF_PORT, INJECT_SESSIONS, QUIET_WAIT, BENCH_DIR (where
# the work directory goes, default /var/tmp: a disk, as a real queue would
# be; both tools' queues are there), KEEP=1 (keep the work directory),
# SKIP_POSTFIX=1, OUR_BOUND (the session bound `smtp send --queue` runs
# with: default 32, smtp-cli's default for direct delivery; it is passed
# as --concurrency), OUR_FLAGS (more flags for our runs, e.g.
# "--mta-sts off" to measure what MTA-STS lookups cost).
#
# Needs: postfix (smtp-sink, the postfix command and daemons, the user
# postfix), python3, root for the Postfix run (its master starts as root).
set -euo pipefail
cd "$(dirname "$0")/.."
count=${1:-10000}
domains=${2:-1000}
hosts=8
port=${PORT:-25625}
pf_port=${PF_PORT:-25626}
our_bound=${OUR_BOUND:-32}
inject=${INJECT_SESSIONS:-4}

die() { echo "queue.sh: $*" >&2; exit 1; }
for tool in /usr/sbin/smtp-sink python3; do
    command -v "$tool" >/dev/null || die "$tool not found (apt-get install postfix python3)"
done
if [ "${SKIP_POSTFIX:-}" != 1 ]; then
    command -v /usr/sbin/postfix >/dev/null || die "no /usr/sbin/postfix (install postfix, or SKIP_POSTFIX=1)"
    [ "$(id -u)" -eq 0 ] || die "the Postfix run needs root (Postfix's master starts as root); run as root or SKIP_POSTFIX=1"
fi

cargo build --release --locked -q -p smtp-cli
cargo build --release --locked -q -p smtp-testkit --example dns_zone
target=${CARGO_TARGET_DIR:-target}/release
smtp=$(realpath "$target/smtp")
dns_zone=$(realpath "$target/examples/dns_zone")

work=$(mktemp -d "${BENCH_DIR:-/var/tmp}/queue-bench.XXXXXX")
chmod 755 "$work"
pids=()
postfix_up=""
cleanup() {
    [ -z "$postfix_up" ] || bench/queue/postfix.sh stop "$work/pf" >/dev/null 2>&1 || true
    stop_sinks
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [ "${KEEP:-}" = 1 ]; then echo "kept $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT

echo "generating $count messages to $domains domains in $work ..." >&2
python3 bench/queue/gen.py "$work" "$count" "$domains" "$hosts" "$port"
mapfile -t files <"$work/list"
# Write the generated files out now, so that their writeback does not fall
# into (and slow the fsyncs of) whichever run comes first.
sync

"$dns_zone" "$work/zone" >"$work/dns.addr" &
dns_pid=$!
pids+=("$dns_pid")
for _ in $(seq 50); do [ -s "$work/dns.addr" ] && break; sleep 0.1; done
dns=$(head -1 "$work/dns.addr")
[ -n "$dns" ] || die "dns_zone did not start"

user=()
[ "$(id -u)" -eq 0 ] && user=(-u nobody)
sink_pids=()
sink_args=()
quiet() { # waits (up to QUIET_WAIT s, default 600) for the machine to idle
    python3 - "${QUIET_WAIT:-600}" <<'PY' >&2
import sys, time
def ticks():
    f = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    return sum(f), f[3] + f[4]
deadline = time.time() + float(sys.argv[1])
while True:
    t0, i0 = ticks(); time.sleep(2); t1, i1 = ticks()
    busy = 1 - (i1 - i0) / max(1, t1 - t0)
    if busy < 0.10:
        break
    if time.time() > deadline:
        print(f"queue.sh: warning: the machine stays {busy:.0%} busy with other work; measuring anyway")
        break
    print(f"queue.sh: waiting for other work to finish ({busy:.0%} busy) ...")
    time.sleep(4)
PY
}
start_sinks() { # PHASE: fresh sinks, their outputs in $work/sinks-PHASE
    stop_sinks
    sync # nothing of the previous run left to write back
    mkdir -p "$work/sinks-$1"
    sink_args=()
    local a
    while read -r a; do
        /usr/sbin/smtp-sink "${user[@]}" -c "$a" 1024 >"$work/sinks-$1/$a" 2>&1 &
        sink_pids+=($!)
        sink_args+=(--sink-out "$work/sinks-$1/$a")
    done <"$work/sinks"
    sleep 0.3
    for p in "${sink_pids[@]}"; do kill -0 "$p" 2>/dev/null || die "an smtp-sink did not start (port $port taken?)"; done
}
stop_sinks() {
    local p
    for p in "${sink_pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${sink_pids[@]}"; do wait "$p" 2>/dev/null || true; done
    sink_pids=()
}
cpu_of() { # PID...: user+sys seconds so far
    local p t=0
    for p in "$@"; do
        t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat")))
    done
    python3 -c "import os,sys; print(int(sys.argv[1]) / os.sysconf('SC_CLK_TCK'))" "$t"
}
field() { # JSON-FILE KEY
    python3 -c "import json,sys; v=json.load(open(sys.argv[1]))[sys.argv[2]]; print('' if v is None else v)" "$1" "$2"
}
check_delivered() { # JSON-FILE WHAT
    local got
    got=$(field "$1" delivered)
    [ "$got" = "$count" ] || die "$2: the sinks counted $got messages, not $count ($(cat "$1"))"
}
watch() { # JSON-OUT [watch.py options] -- COMMAND...
    local out=$1
    shift
    python3 bench/queue/watch.py --sink-port "$port" "${sink_args[@]}" "$@" >"$out"
}
phase_cpu() { # NAME: DNS server and sinks CPU seconds since the last call
    local d s
    d=$(cpu_of "$dns_pid")
    s=$(cpu_of "${sink_pids[@]}")
    echo "{\"dns_cpu\": $(python3 -c "print($d - ${dns_cpu0:-0})"), \"sinks_cpu\": $s}" >"$work/$1.side.json"
    dns_cpu0=$d
}

direct=(--dns-server "$dns" --mx-port "$port" --concurrency "$our_bound")
# shellcheck disable=SC2206 # OUR_FLAGS is split into words on purpose
direct+=(${OUR_FLAGS:-})

# 1. Ours, end to end.
echo "ours: end to end ..." >&2
start_sinks e2e
dns_cpu0=$(cpu_of "$dns_pid")
quiet
watch "$work/e2e.json" --expect "$count" --stdout "$work/e2e.out" --stderr "$work/e2e.err" -- \
    "$smtp" send --queue "$work/q-e2e" "${direct[@]}" -t "${files[@]}"
phase_cpu e2e
[ "$(field "$work/e2e.json" rc)" = 0 ] || die "smtp send --queue exited $(field "$work/e2e.json" rc): $(tail -3 "$work/e2e.err")"
check_delivered "$work/e2e.json" "smtp send --queue"

# 2. Ours, enqueue only, then delivery only.
echo "ours: enqueue only, then delivery only ..." >&2
start_sinks split
quiet
watch "$work/enqueue.json" \
    --stdout "$work/enqueue.out" --stderr "$work/enqueue.err" -- \
    "$smtp" send --queue="$work/q-split" --queue-only "${direct[@]}" -t "${files[@]}"
phase_cpu enqueue
queued=$("$smtp" queue stats --queue "$work/q-split" --json |
    python3 -c "import json,sys; print(json.load(sys.stdin)['recipients']['queued'])")
[ "$(field "$work/enqueue.json" rc)" = 0 ] && [ "$queued" = "$count" ] ||
    die "the enqueue-only run (--queue-only) exited $(field "$work/enqueue.json" rc) with $queued queued, not 0 with $count: $(tail -3 "$work/enqueue.err")"
quiet
watch "$work/deliver.json" --expect "$count" --stdout "$work/deliver.out" --stderr "$work/deliver.err" -- \
    "$smtp" queue run --queue "$work/q-split" "${direct[@]}"
phase_cpu deliver
[ "$(field "$work/deliver.json" rc)" = 0 ] || die "smtp queue run exited $(field "$work/deliver.json" rc): $(tail -3 "$work/deliver.err")"
check_delivered "$work/deliver.json" "smtp queue run"
stop_sinks

# 3. Ours, as a mail merge.
if [ "${MERGE:-1}" != 0 ]; then
    echo "ours: mail merge, end to end ..." >&2
    start_sinks merge
    quiet
    watch "$work/merge.json" --expect "$count" --stdout "$work/merge.out" --stderr "$work/merge.err" -- \
        "$smtp" send --queue="$work/q-merge" "${direct[@]}" --merge "$work/merge.csv" --template "$work/merge.eml"
    phase_cpu merge
    [ "$(field "$work/merge.json" rc)" = 0 ] || die "smtp send --merge exited $(field "$work/merge.json" rc): $(tail -3 "$work/merge.err")"
    check_delivered "$work/merge.json" "smtp send --merge"
    stop_sinks
fi

# 4. Postfix.
if [ "${SKIP_POSTFIX:-}" != 1 ]; then
    echo "postfix: injection and delivery ..." >&2
    bench/queue/postfix.sh setup "$work/pf" "$pf_port" "$work/transport"
    bench/queue/postfix.sh start "$work/pf" ||
        die "postfix did not start: $(tail -5 "$work/pf/maillog" 2>/dev/null)"
    postfix_up=1
    for _ in $(seq 50); do
        python3 -c "import socket,sys; socket.create_connection(('127.0.0.1', int(sys.argv[1])), 0.2).close()" "$pf_port" 2>/dev/null && break
        sleep 0.1
    done
    start_sinks postfix
    quiet
    watch "$work/postfix.json" --expect "$count" --timeout 1800 --postfix "$work/pf/queue" \
        --stdout "$work/postfix.out" --stderr "$work/postfix.err" -- \
        bench/queue/inject.sh "$inject" "$smtp" "127.0.0.1:$pf_port" "$work/list"
    phase_cpu postfix
    [ "$(field "$work/postfix.json" rc)" = 0 ] || die "injection into Postfix exited $(field "$work/postfix.json" rc): $(tail -3 "$work/postfix.err")"
    check_delivered "$work/postfix.json" "Postfix"
    pf_limit=$(postconf -c "$work/pf/etc" -h default_process_limit)
    pf_dest=$(postconf -c "$work/pf/etc" -h default_destination_concurrency_limit)
    pf_version=$(postconf -c "$work/pf/etc" -h mail_version)
    bench/queue/postfix.sh stop "$work/pf" >/dev/null 2>&1 || true
    postfix_up=""
    grep -q "status=deferred\|status=bounced" "$work/pf/maillog" &&
        echo "queue.sh: note: Postfix deferred or bounced some deliveries (see the maillog)" >&2
fi
stop_sinks

python3 - "$work" "$count" "$domains" "$our_bound" "${pf_limit:-}" "${pf_dest:-}" "${pf_version:-}" "$inject" <<'PY'
import json, os, sys
work, count, domains, bound, pf_limit, pf_dest, pf_version, inject = sys.argv[1:]
count = int(count)
def load(name):
    p = f"{work}/{name}.json"
    if not os.path.exists(p):
        return None
    r = json.load(open(p))
    side = f"{work}/{name}.side.json"
    if os.path.exists(side):
        r.update(json.load(open(side)))
    return r
e2e, enq, dlv, mrg, pf = (load(n) for n in ("e2e", "enqueue", "deliver", "merge", "postfix"))
mib = lambda kib: kib / 1024
def row(name, n, secs, rss, socks, bnd):
    rate = f"{n / secs:,.0f}" if n else "–"
    print(f"| {name} | {rate} | {secs:.2f} | {rss} | {socks} | {bnd} |")
print(f"\n{count:,} messages to {domains} domains; one recipient each\n")
print("| run | messages/s | wall s | peak RSS | max sockets | concurrency bound |")
print("|---|---|---|---|---|---|")
row("smtp send --queue, end to end", count, e2e["wall"], f"{mib(e2e['maxrss_kib']):.1f} MiB",
    e2e["max_tcp"], bound)
row("– enqueue only (send --queue --queue-only)", count, enq["wall"], f"{mib(enq['maxrss_kib']):.1f} MiB",
    enq["max_tcp"], bound)
row("– delivery only (queue run)", count, dlv["wall"], f"{mib(dlv['maxrss_kib']):.1f} MiB",
    dlv["max_tcp"], bound)
if mrg:
    row("smtp send --merge (one CSV, one template), end to end", count, mrg["wall"],
        f"{mib(mrg['maxrss_kib']):.1f} MiB", mrg["max_tcp"], bound)
if pf:
    row(f"Postfix {pf_version}, injection to last message at the sinks", count, pf["done"],
        f"{mib(pf['postfix_max_rss_kib']):.1f} MiB RSS ({mib(pf['postfix_max_pss_kib']):.1f} PSS, {pf['postfix_max_procs']} processes)",
        pf["postfix_max_tcp"], f"{pf_limit} smtp processes ({pf_dest} per next hop), and cached connections")
    row(f"– injection only ({inject} smtpd sessions)", count, pf["wall"], "", "", "")

# Where ours spends it: the outcome log of run 1.
ev = {}
with open(f"{work}/q-e2e/outcomes.jsonl") as f:
    for line in f:
        o = json.loads(line)
        k = o["event"]
        ev.setdefault(k, []).append(o["at_ms"] / 1000)
t0 = e2e["start_epoch"]
enq_at, claim_at, last_dlv = min(ev["enqueued"]), min(ev["claimed"]), max(ev["delivered"])
print("\nRun 1 by its outcome log (seconds from process start):")
print(f"- reading and preparing the files: {enq_at - t0:.2f}")
print(f"- enqueue (bodies, fsyncs, one commit): {claim_at - enq_at:.2f}")
print(f"- delivery (first claim to last delivered): {last_dlv - claim_at:.2f}")
print(f"- report and exit: {t0 + e2e['wall'] - last_dlv:.2f}")
ncpu = os.cpu_count()
noisy = []
def cpu_line(name, tool, r):
    """Where the machine's CPU went during a run, in seconds."""
    tool_cpu = sum(tool.values())
    known = tool_cpu + r.get("dns_cpu", 0) + r.get("sinks_cpu", 0) + r["watcher_cpu"]
    known += r["kthreads_cpu"] + r["irq_cpu"]
    rest = r["busy_cpu"] - known
    if rest > 0.1 * ncpu * r["loop"]:
        noisy.append(f"{name}: {rest:.1f} s")
    parts = ", ".join(f"{k} {v:.2f}" for k, v in tool.items())
    print(f"| {name} | {r['loop']:.1f} | {r['busy_cpu']:.2f} | {parts} | {r.get('dns_cpu', 0):.2f} "
          f"| {r.get('sinks_cpu', 0):.2f} | {r['irq_cpu']:.2f} | {r['kthreads_cpu']:.2f} "
          f"| {r['watcher_cpu']:.2f} | {rest:.2f} |")
print("\nCPU seconds, by whom (machine: all CPUs, busy, over the watched seconds; other: what no"
      " column accounts for, such as other work on the machine):\n")
print("| run | watched s | machine | tool | DNS server | sinks | irq+softirq | kernel threads | watcher | other |")
print("|---|---|---|---|---|---|---|---|---|---|")
cpu_line("end to end", {"user": e2e["user"], "sys": e2e["sys"]}, e2e)
cpu_line("enqueue only", {"user": enq["user"], "sys": enq["sys"]}, enq)
cpu_line("delivery only", {"user": dlv["user"], "sys": dlv["sys"]}, dlv)
if mrg:
    cpu_line("merge", {"user": mrg["user"], "sys": mrg["sys"]}, mrg)
if pf:
    cpu_line("Postfix", {"Postfix": pf["postfix_cpu"], "injector": pf["user"] + pf["sys"]}, pf)
print("\nCPU per message (the tool's own user + system, divided by the messages):\n")
print("| run | CPU s | ms per message |")
print("|---|---|---|")
for name, r in (("ours, end to end (enqueue included)", e2e), ("ours, enqueue only", enq),
                ("ours, delivery only (`smtp queue run`)", dlv)):
    c = r["user"] + r["sys"]
    print(f"| {name} | {c:.2f} | {c / count * 1e3:.3f} |")
if pf:
    c = pf["postfix_cpu"] + pf["user"] + pf["sys"]
    print(f"| Postfix, injection included | {c:.2f} | {c / count * 1e3:.3f} |")
    print(f"| Postfix alone | {pf['postfix_cpu']:.2f} | {pf['postfix_cpu'] / count * 1e3:.3f} |")
if noisy:
    print("\nWARNING: other work took more than a tenth of the machine during " + "; ".join(noisy)
          + " of CPU: those figures are not clean; run again on a quiet machine.")
print("\nSessions and sockets:")
for name, r in (("end to end", e2e), ("delivery only", dlv)):
    print(f"- ours, {name}: {sum(c[1] for c in r['counts']):,} sessions at the sinks; at most "
          f"{r['max_tcp']} TCP sockets and {r['max_sockets']} sockets of any kind held; "
          f"{r['nvcsw']:,} voluntary context switches")
if pf:
    print(f"- Postfix: {sum(c[1] for c in pf['counts']):,} sessions at the sinks; at most "
          f"{pf['postfix_max_tcp']} TCP sockets held by its smtp and scache processes")
print("\nTargets (issue):")
if pf:
    ratio = (count / e2e["wall"]) / (count / pf["done"])
    print(f"- end to end >= 3x Postfix: {ratio:.2f}x {'(met)' if ratio >= 3 else '(NOT met)'}")
    if mrg:
        print(f"- merge end to end: {pf['done'] / mrg['wall']:.2f}x Postfix")
print(f"- peak RSS <= 64 MiB: {mib(e2e['maxrss_kib']):.1f} MiB {'(met)' if e2e['maxrss_kib'] <= 65536 else '(NOT met)'}")
worst = max(e2e["max_tcp"], dlv["max_tcp"])
print(f"- sockets never above the bound ({bound}): at most {worst} seen {'(met)' if worst <= int(bound) else '(NOT met)'}")
PY
echo
echo "$(date -u +%Y-%m-%d), $(uname -sr), $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), work directory on $(stat -f -c %T "$work")"

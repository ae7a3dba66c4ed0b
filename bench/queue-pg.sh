#!/usr/bin/env bash
# The queue benchmark's bulk scenario on PostgreSQL, with 1, 2 and 3
# `smtp queue run` workers sharing one queue, beside the SQLite store, in
# one run. A benchmark, not a test; see docs/performance.md ("Queue on
# PostgreSQL: 1, 2, 3 workers") for the method and the latest table.
#
#   bench/queue-pg.sh [COUNT] [DOMAINS]        default 10000 1000
#
# The messages, the DNS zone and the sinks are bench/queue.sh's (its
# bench/queue/gen.py, smtp-testkit's dns_zone example, 8 `smtp-sink -c` on
# 127.0.0.2 ... 127.0.0.9, port PORT, default 25625); each run is watched
# by its bench/queue/watch.py. Runs, each against fresh sinks:
#
# 1. SQLite (queue.sh's run 2): `smtp send --queue DIR --queue-only ...
#    -t FILE...` (enqueue only), then `smtp queue run --queue DIR ...`
#    (delivery only).
# 2. For each N of WORKERS (default "1 2 3"), on a fresh database of one
#    throwaway PostgreSQL cluster: `smtp queue migrate --queue URL`; the
#    same `send --queue URL --queue-only` (enqueue only); then N `smtp
#    queue run --queue URL` workers started at once (bench/queue/workers.py;
#    without --watch a worker exits when it finds nothing more to claim,
#    exit 0, or 75 while others still hold leases), timed from the start
#    of the first worker until the sinks have counted every message.
#
# Every run must leave the sinks with exactly COUNT messages and the store
# with every recipient delivered (none queued, none leased): each message
# delivered exactly once. Reported per run: messages/s, CPU seconds of our
# processes (user+sys, summed over the workers) and of PostgreSQL (the
# postmaster, its live children and the backends it reaped, from /proc),
# peak RSS of each worker (getrusage), sessions at the sinks, and the
# ratio to the SQLite run of the same invocation.
#
# The cluster: initdb into WORK/pg as the `postgres` user (through
# setpriv, when root: initdb and postgres refuse root), postgres on a free
# port of 127.0.0.1 with its Unix socket in WORK/pg, trust authentication,
# stopped by its PID (SIGINT, fast shutdown) and removed at the end; the
# system's PostgreSQL service is never touched. Unlike smtp-testkit's test
# cluster, durability is PostgreSQL's default (fsync, synchronous_commit
# on), as the SQLite store's is on: a benchmark of a durable queue.
# PG_OPTS adds settings ("-c shared_buffers=256MB ..."); PG_BIN names the
# directory of initdb and postgres (default: the newest
# /usr/lib/postgresql/*/bin).
#
# Environment: as bench/queue.sh: PORT, QUIET_WAIT (default here 60: the
# seconds each run waits for the machine to go idle), BENCH_DIR, KEEP=1,
# OUR_BOUND, OUR_FLAGS; and WORKERS, CLAIM (passed to the workers as
# --claim), PG_BIN, PG_OPTS.
#
# Needs: postfix's smtp-sink, python3, PostgreSQL's server binaries.
set -euo pipefail
cd "$(dirname "$0")/.."
count=${1:-10000}
domains=${2:-1000}
hosts=8
port=${PORT:-25625}
our_bound=${OUR_BOUND:-32}
workers=${WORKERS:-1 2 3}

die() { echo "queue-pg.sh: $*" >&2; exit 1; }
for tool in /usr/sbin/smtp-sink python3; do
    command -v "$tool" >/dev/null || die "$tool not found (apt-get install postfix python3)"
done
pg_bin=${PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)}
[ -x "$pg_bin/initdb" ] && [ -x "$pg_bin/postgres" ] ||
    die "no PostgreSQL server binaries (apt-get install postgresql, or PG_BIN=DIR)"
run_pg=()
if [ "$(id -u)" -eq 0 ]; then
    id postgres >/dev/null 2>&1 || die "as root, PostgreSQL runs as the user postgres, which does not exist"
    run_pg=(setpriv --reuid=postgres --regid=postgres --init-groups --)
fi

# Two commands: with --example, cargo builds only examples, not smtp-cli's binary.
nice -n 19 cargo build --release --locked -q -p smtp-cli
nice -n 19 cargo build --release --locked -q -p smtp-testkit --example dns_zone
target=${CARGO_TARGET_DIR:-target}/release
smtp=$(realpath "$target/smtp")
dns_zone=$(realpath "$target/examples/dns_zone")

work=$(mktemp -d "${BENCH_DIR:-/var/tmp}/queue-pg-bench.XXXXXX")
chmod 755 "$work"
pids=()
pg_pid=""
sink_pids=()
stop_sinks() {
    local p
    for p in "${sink_pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${sink_pids[@]}"; do wait "$p" 2>/dev/null || true; done
    sink_pids=()
}
stop_pg() { # fast shutdown by the postmaster's PID; SIGKILL after 20 s
    [ -n "$pg_pid" ] || return 0
    kill -INT "$pg_pid" 2>/dev/null || true
    local i
    for i in $(seq 200); do kill -0 "$pg_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pg_pid" 2>/dev/null || true
    wait "$pg_pid" 2>/dev/null || true
    pg_pid=""
}
cleanup() {
    stop_sinks
    stop_pg
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [ "${KEEP:-}" = 1 ]; then echo "kept $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT

echo "generating $count messages to $domains domains in $work ..." >&2
python3 bench/queue/gen.py "$work" "$count" "$domains" "$hosts" "$port"
mapfile -t files <"$work/list"
sync

"$dns_zone" "$work/zone" >"$work/dns.addr" &
dns_pid=$!
pids+=("$dns_pid")
for _ in $(seq 50); do [ -s "$work/dns.addr" ] && break; sleep 0.1; done
dns=$(head -1 "$work/dns.addr")
[ -n "$dns" ] || die "dns_zone did not start"

# The throwaway cluster.
echo "starting a throwaway PostgreSQL cluster in $work/pg ..." >&2
mkdir "$work/pg"
[ ${#run_pg[@]} -eq 0 ] || chown postgres:postgres "$work/pg"
"${run_pg[@]}" "$pg_bin/initdb" -D "$work/pg/data" -U postgres -A trust -E UTF8 --no-locale \
    >"$work/pg/initdb.log" 2>&1 || die "initdb failed: $(tail -5 "$work/pg/initdb.log")"
pg_port=$(python3 -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
# shellcheck disable=SC2206 # PG_OPTS is split into words on purpose
pg_opts=(-c listen_addresses=127.0.0.1 -c max_connections=100 ${PG_OPTS:-})
touch "$work/pg/server.log"
[ ${#run_pg[@]} -eq 0 ] || chown postgres:postgres "$work/pg/server.log"
"${run_pg[@]}" "$pg_bin/postgres" -D "$work/pg/data" -p "$pg_port" -k "$work/pg" "${pg_opts[@]}" \
    </dev/null >>"$work/pg/server.log" 2>&1 &
pg_pid=$!
for _ in $(seq 600); do
    kill -0 "$pg_pid" 2>/dev/null || die "postgres exited at start: $(tail -5 "$work/pg/server.log")"
    "$pg_bin/pg_isready" -q -h 127.0.0.1 -p "$pg_port" -U postgres -d postgres && break
    sleep 0.1
done
"$pg_bin/pg_isready" -q -h 127.0.0.1 -p "$pg_port" -U postgres -d postgres ||
    die "postgres did not accept connections: $(tail -5 "$work/pg/server.log")"
pg_version=$("$pg_bin/postgres" --version | awk '{print $3}')
pg_settings=$("$pg_bin/psql" -h 127.0.0.1 -p "$pg_port" -U postgres -d postgres -Atc \
    "select string_agg(name || '=' || current_setting(name), ', ' order by name) from pg_settings
     where name in ('fsync', 'synchronous_commit', 'shared_buffers', 'wal_level', 'full_page_writes', 'max_connections')")

user=()
[ "$(id -u)" -eq 0 ] && user=(-u nobody)
sink_args=()
quiet() { # waits (up to QUIET_WAIT s, default 60 here) for the machine to idle
    python3 - "${QUIET_WAIT:-60}" <<'PY' >&2
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
        print(f"queue-pg.sh: warning: the machine stays {busy:.0%} busy with other work; measuring anyway")
        break
    print(f"queue-pg.sh: waiting for other work to finish ({busy:.0%} busy) ...")
    time.sleep(4)
PY
}
start_sinks() { # PHASE: fresh sinks, their outputs in $work/sinks-PHASE
    stop_sinks
    sync
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
cpu_of() { # PID...: user+sys seconds so far
    local p t=0
    for p in "$@"; do
        t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat")))
    done
    python3 -c "import os,sys; print(int(sys.argv[1]) / os.sysconf('SC_CLK_TCK'))" "$t"
}
pg_cpu() { # PostgreSQL's CPU seconds so far: the postmaster, the backends it reaped, its live children
    python3 - "$pg_pid" <<'PY'
import os, sys
master = int(sys.argv[1])
total = 0
for e in os.listdir("/proc"):
    if not e.isdigit():
        continue
    try:
        s = open(f"/proc/{e}/stat").read()
    except OSError:
        continue
    f = s[s.rindex(")") + 2:].split()
    pid, ppid = int(e), int(f[1])
    if pid == master:
        total += sum(int(x) for x in f[11:15])
    elif ppid == master:
        total += int(f[11]) + int(f[12])
print(total / os.sysconf("SC_CLK_TCK"))
PY
}
field() { # JSON-FILE KEY
    python3 -c "import json,sys; v=json.load(open(sys.argv[1]))[sys.argv[2]]; print('' if v is None else v)" "$1" "$2"
}
recipients() { # QUEUE STATE: how many recipients are in STATE
    "$smtp" queue stats --queue "$1" --json |
        python3 -c "import json,sys; print(json.load(sys.stdin)['recipients'].get(sys.argv[1], 0))" "$2"
}
check_delivered() { # JSON-FILE WHAT QUEUE
    local got delivered left
    got=$(field "$1" delivered)
    [ "$got" = "$count" ] || die "$2: the sinks counted $got messages, not $count ($(cat "$1"))"
    delivered=$(recipients "$3" delivered)
    left=$(($(recipients "$3" queued) + $(recipients "$3" delivering) + $(recipients "$3" deferred)))
    [ "$delivered" = "$count" ] && [ "$left" = 0 ] ||
        die "$2: the store has $delivered recipients delivered and $left queued, deferred or leased, not $count and 0"
}
watch() { # JSON-OUT [watch.py options] -- COMMAND...
    local out=$1
    shift
    python3 bench/queue/watch.py --sink-port "$port" "${sink_args[@]}" "$@" >"$out"
}
side() { # NAME: DNS server, sinks and PostgreSQL CPU seconds since the last call
    local d s p
    d=$(cpu_of "$dns_pid")
    s=$(cpu_of "${sink_pids[@]}")
    p=$(pg_cpu)
    echo "{\"dns_cpu\": $(python3 -c "print($d - $dns_cpu0)"), \"sinks_cpu\": $s, \"pg_cpu\": $(python3 -c "print($p - $pg_cpu0)")}" >"$work/$1.side.json"
    dns_cpu0=$d
    pg_cpu0=$p
}
mark() { dns_cpu0=$(cpu_of "$dns_pid"); pg_cpu0=$(pg_cpu); }

direct=(--dns-server "$dns" --mx-port "$port" --concurrency "$our_bound")
# shellcheck disable=SC2206 # OUR_FLAGS is split into words on purpose
direct+=(${OUR_FLAGS:-})
claim=()
[ -z "${CLAIM:-}" ] || claim=(--claim "$CLAIM")
uptime >"$work/uptime.start"

# 1. SQLite: enqueue only, then delivery only.
echo "sqlite: enqueue only, then delivery only ..." >&2
start_sinks sqlite
quiet
mark
watch "$work/sqlite-enqueue.json" --stdout "$work/sqlite-enqueue.out" --stderr "$work/sqlite-enqueue.err" -- \
    "$smtp" send --queue="$work/q-sqlite" --queue-only "${direct[@]}" -t "${files[@]}"
side sqlite-enqueue
[ "$(field "$work/sqlite-enqueue.json" rc)" = 0 ] && [ "$(recipients "$work/q-sqlite" queued)" = "$count" ] ||
    die "the SQLite enqueue exited $(field "$work/sqlite-enqueue.json" rc): $(tail -3 "$work/sqlite-enqueue.err")"
quiet
mark
watch "$work/sqlite-deliver.json" --expect "$count" --timeout 1800 \
    --stdout "$work/sqlite-deliver.out" --stderr "$work/sqlite-deliver.err" -- \
    "$smtp" queue run --queue "$work/q-sqlite" "${direct[@]}"
side sqlite-deliver
[ "$(field "$work/sqlite-deliver.json" rc)" = 0 ] ||
    die "smtp queue run (SQLite) exited $(field "$work/sqlite-deliver.json" rc): $(tail -3 "$work/sqlite-deliver.err")"
check_delivered "$work/sqlite-deliver.json" "SQLite, queue run" "$work/q-sqlite"
stop_sinks

# 2. PostgreSQL, N workers: a fresh database, the enqueue, the delivery.
for n in $workers; do
    echo "postgres: $n worker(s): enqueue only, then delivery ..." >&2
    "$pg_bin/createdb" -h 127.0.0.1 -p "$pg_port" -U postgres "bench$n"
    url="postgres://postgres@127.0.0.1:$pg_port/bench$n"
    "$smtp" queue migrate --queue "$url" >"$work/pg$n-migrate.out" 2>&1 ||
        die "smtp queue migrate failed: $(tail -3 "$work/pg$n-migrate.out")"
    start_sinks "pg$n"
    quiet
    mark
    watch "$work/pg$n-enqueue.json" --stdout "$work/pg$n-enqueue.out" --stderr "$work/pg$n-enqueue.err" -- \
        "$smtp" send --queue "$url" --queue-only "${direct[@]}" -t "${files[@]}"
    side "pg$n-enqueue"
    [ "$(field "$work/pg$n-enqueue.json" rc)" = 0 ] && [ "$(recipients "$url" queued)" = "$count" ] ||
        die "the PostgreSQL enqueue exited $(field "$work/pg$n-enqueue.json" rc): $(tail -3 "$work/pg$n-enqueue.err")"
    mkdir -p "$work/pg$n-logs"
    quiet
    mark
    watch "$work/pg$n-deliver.json" --expect "$count" --timeout 1800 \
        --stdout "$work/pg$n-deliver.out" --stderr "$work/pg$n-deliver.err" -- \
        python3 bench/queue/workers.py --out "$work/pg$n-workers.json" --n "$n" --logs "$work/pg$n-logs" -- \
        "$smtp" queue run --queue "$url" "${direct[@]}" "${claim[@]}"
    side "pg$n-deliver"
    [ "$(field "$work/pg$n-deliver.json" rc)" = 0 ] ||
        die "$n workers: one exited other than 0 or 75: $(cat "$work/pg$n-workers.json"); $(tail -3 "$work/pg$n-logs"/*.err)"
    check_delivered "$work/pg$n-deliver.json" "PostgreSQL, $n workers" "$url"
    stop_sinks
done
uptime >"$work/uptime.end"

python3 - "$work" "$count" "$domains" "$our_bound" "${CLAIM:-default}" "$pg_version" "$pg_settings" $workers <<'PY'
import json, os, sys
work, count, domains, bound, claim, pg_version, pg_settings, *workers = sys.argv[1:]
count = int(count)
def load(name):
    r = json.load(open(f"{work}/{name}.json"))
    r.update(json.load(open(f"{work}/{name}.side.json")))
    return r
mib = lambda kib: kib / 1024
se, sd = load("sqlite-enqueue"), load("sqlite-deliver")
sqlite_enq_rate = count / se["wall"]
sqlite_rate = count / sd["done"]
print(f"\n{count:,} messages to {domains} domains, one recipient each; --concurrency {bound} "
      f"per process, --claim {claim}; PostgreSQL {pg_version} ({pg_settings})\n")
print("Enqueue only (`smtp send --queue Q --queue-only`):\n")
print("| store | messages/s | wall s | ratio to SQLite | our CPU s | PostgreSQL CPU s | peak RSS |")
print("|---|---|---|---|---|---|---|")
print(f"| SQLite | {sqlite_enq_rate:,.0f} | {se['wall']:.2f} | 1 | {se['user'] + se['sys']:.2f} | – "
      f"| {mib(se['maxrss_kib']):.1f} MiB |")
for n in workers:
    e = load(f"pg{n}-enqueue")
    print(f"| PostgreSQL (before the {n}-worker run) | {count / e['wall']:,.0f} | {e['wall']:.2f} "
          f"| {count / e['wall'] / sqlite_enq_rate:.2f} | {e['user'] + e['sys']:.2f} | {e['pg_cpu']:.2f} "
          f"| {mib(e['maxrss_kib']):.1f} MiB |")
print("\nDelivery (`smtp queue run`; timed from the first worker's start to the last message at the sinks):\n")
print("| store, workers | messages/s | s to the last message | ratio to SQLite | our CPU s (user + sys) "
      "| PostgreSQL CPU s | peak RSS per worker | sessions at the sinks | workers' exit |")
print("|---|---|---|---|---|---|---|---|---|")
sess = lambda r: sum(c[1] for c in r["counts"])
print(f"| SQLite, 1 | {sqlite_rate:,.0f} | {sd['done']:.2f} | 1 | {sd['user']:.2f} + {sd['sys']:.2f} | – "
      f"| {mib(sd['maxrss_kib']):.1f} MiB | {sess(sd):,} | {sd['rc']} |")
noisy = []
def other(name, r, ours):
    known = ours + r["dns_cpu"] + r["sinks_cpu"] + r.get("pg_cpu", 0) + r["watcher_cpu"] \
        + r["kthreads_cpu"] + r["irq_cpu"]
    rest = r["busy_cpu"] - known
    if rest > 0.1 * os.cpu_count() * r["loop"]:
        noisy.append(f"{name}: {rest:.1f} s")
    return rest
rows = []
for n in workers:
    d = load(f"pg{n}-deliver")
    w = json.load(open(f"{work}/pg{n}-workers.json"))
    user, sys_ = sum(x["user"] for x in w), sum(x["sys"] for x in w)
    rss = ", ".join(f"{mib(x['maxrss_kib']):.1f}" for x in w)
    print(f"| PostgreSQL, {n} | {count / d['done']:,.0f} | {d['done']:.2f} | {count / d['done'] / sqlite_rate:.2f} "
          f"| {user:.2f} + {sys_:.2f} | {d['pg_cpu']:.2f} | {rss} MiB | {sess(d):,} "
          f"| {', '.join(str(x['rc']) for x in w)} |")
    rows.append((f"PostgreSQL, {n} worker{'s' * (n != '1')}", d, user + sys_))
print("\nCPU seconds during each delivery, by whom (machine: all CPUs busy over the watched seconds;"
      " other: what no column accounts for, such as other work on the machine):\n")
print("| run | watched s | machine | ours | PostgreSQL | DNS server | sinks | irq+softirq | kernel threads | watcher | other |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for name, r, ours in [("SQLite, 1 worker", sd, sd["user"] + sd["sys"])] + rows:
    rest = other(name, r, ours)
    print(f"| {name} | {r['loop']:.1f} | {r['busy_cpu']:.2f} | {ours:.2f} | {r.get('pg_cpu', 0):.2f} "
          f"| {r['dns_cpu']:.2f} | {r['sinks_cpu']:.2f} | {r['irq_cpu']:.2f} | {r['kthreads_cpu']:.2f} "
          f"| {r['watcher_cpu']:.2f} | {rest:.2f} |")
if noisy:
    print("\nWARNING: other work took more than a tenth of the machine during " + "; ".join(noisy)
          + " of CPU: those figures are not clean; run again on a quiet machine.")
print("\nEvery run: the sinks counted exactly", f"{count:,}", "messages and the store had every recipient"
      " delivered, none queued, deferred or leased.")
PY
echo
echo "load before: $(cat "$work/uptime.start")"
echo "load after:  $(cat "$work/uptime.end")"
echo "$(date -u +%Y-%m-%d), $(uname -sr), $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), work directory on $(stat -f -c %T "$work"), commit $(git rev-parse --short HEAD)"

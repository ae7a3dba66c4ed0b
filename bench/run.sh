#!/usr/bin/env bash
# End-to-end throughput against Postfix's smtp-sink on loopback, side by side
# with Postfix's smtp-source, in one run on the same sink. All clients are
# timed the same way, process start included, and their CPU (user + system,
# from /usr/bin/time) is shown per message and per MiB sent.
#
#   bench/run.sh [COUNT_1K] [COUNT_1M]
#
# Pinning (PINNING, default "same split": both tables, same-CPU first):
# - same:  the sink and every client on CPU 0. Wall time then counts the
#          client's CPU too, as on a busy server: a client that burns CPU
#          slows the sink it shares the CPU with.
# - split: the sink on CPU 0, each client on CPU 1 (a client's CPU is then
#          mostly hidden; unpinned figures swing by 2x on 2-vCPU machines).
#
# Rows beside smtp-tls's blast example and smtp-source:
# - `smtp CLI, same file`: the smtp command given one message file COUNT
#   times (one session, one MAIL transaction per file);
# - `smtp CLI, distinct files`: COUNT different files of the same size and
#   content (each is read and scanned: no two share an inode);
# - lettre and mail-send (bench/peers, a crate of its own) driven like blast.
#   They run at tens of messages/s on loopback, so they send fewer messages:
#   PEER_COUNT_1K (200), PEER_COUNT_1M (20), PEER_COUNT_RTT (100); compare
#   messages/s. `mail-send (PEER_NODELAY=1)` sets TCP_NODELAY through
#   mail-send's public stream; lettre has no such setting. SKIP_PEERS=1 leaves
#   them out (and skips building them). SKIP_RTT=1 leaves out the 10 ms
#   round-trip tables, SKIP_RSS=1 the 1 GiB peak-RSS line.
#
# The "x source" column is messages/s against smtp-source's in the same
# table (same size, same pinning).
#
# Every message body is made of 80-byte lines, as smtp-source sends them
# (the sink's work is per line).
#
# Needs: postfix (smtp-sink, smtp-source), taskset, python3, /usr/bin/time.
set -euo pipefail
cd "$(dirname "$0")/.."
count_small=${1:-20000}
count_large=${2:-100}
port=${PORT:-25525}

cargo build --release --locked -q -p smtp-tls --example blast --example delay_proxy
cargo build --release --locked -q -p smtp-cli
blast=${CARGO_TARGET_DIR:-target}/release/examples/blast
proxy=${CARGO_TARGET_DIR:-target}/release/examples/delay_proxy
# SMTP=path runs another build of the smtp command (a before/after comparison).
smtp=${SMTP:-${CARGO_TARGET_DIR:-target}/release/smtp}
peers=""
if [ "${SKIP_PEERS:-}" != 1 ]; then
    cargo build --release --locked -q --manifest-path bench/peers/Cargo.toml
    peers=$(realpath "${CARGO_TARGET_DIR:-bench/peers/target}")/release
fi
peer_count_small=${PEER_COUNT_1K:-200}
peer_count_large=${PEER_COUNT_1M:-20}
peer_count_rtt=${PEER_COUNT_RTT:-100}
count_rtt=${COUNT_RTT:-500}

# RFC 5322 message files of exactly 1 KiB and 1 MiB for the smtp command.
msgdir=$(mktemp -d)
trap 'rm -rf "$msgdir"' EXIT
for size in 1024 1048576; do
    python3 - "$msgdir/$size.eml" "$size" <<'PY'
import sys
path, size = sys.argv[1], int(sys.argv[2])
msg = (b"From: blast@example.org\r\nTo: sink@example.net\r\nSubject: blast\r\n"
       b"Date: Thu, 01 Jan 2026 00:00:00 +0000\r\nMessage-ID: <blast@example.org>\r\n\r\n")
line = b"012345678901234567890123456789012345678901234567890123456789012345678901234567\r\n"
while len(msg) + len(line) <= size:
    msg += line
msg += line[: size - len(msg) - 2] + b"\r\n"
assert len(msg) == size
open(path, "wb").write(msg)
PY
done
# COUNT distinct copies of each (for the "distinct files" rows).
for size_count in "1024 $count_small" "1048576 $count_large"; do
    set -- $size_count
    mkdir "$msgdir/$1"
    python3 - "$msgdir/$1.eml" "$msgdir/$1" "$2" <<'PY'
import sys
src, folder, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
data = open(src, "rb").read()
for i in range(n):
    with open(f"{folder}/{i}.eml", "wb") as f:
        f.write(data)
PY
done

user=()
[ "$(id -u)" -eq 0 ] && user=(-u nobody)
taskset -c 0 /usr/sbin/smtp-sink "${user[@]}" "127.0.0.1:$port" 100 &
sink=$!
# The same sink behind a proxy adding 5 ms each way: a 10 ms round trip.
"$proxy" $((port + 1)) "127.0.0.1:$port" 5 &
proxy_pid=$!
trap 'kill $sink $proxy_pid 2>/dev/null; rm -rf "$msgdir"' EXIT
sleep 0.5

timed() { # prints "wall user sys" (seconds) taken by "$@"
    local s e cpu
    cpu=$(mktemp)
    s=$(date +%s.%N)
    # The client's own summary (on standard error) is shown only if it fails.
    /usr/bin/time -f "%U %S" -o "$cpu" "$@" >/dev/null 2>"$cpu.err" || {
        echo "failed: $*" >&2
        cat "$cpu.err" >&2
        rm -f "$cpu" "$cpu.err"
        return 1
    }
    rm -f "$cpu.err"
    e=$(date +%s.%N)
    python3 -c "print($e - $s, '$(tail -1 "$cpu")')"
    rm -f "$cpu"
}

source_rate="" # smtp-source's messages/s in the current table, by size
row() { # name count size "wall user sys"
    python3 - "$@" "$source_rate" <<'PY'
import sys
n, c, s = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
wall, user, system = map(float, sys.argv[4].split())
rates = dict(kv.split("=") for kv in sys.argv[5].split())
cpu = user + system
mib = c * s / 1048576
ratio = f"{c / wall / float(rates[str(s)]):.2f}" if str(s) in rates else ""
print(f"| {n} | {s} | {c} | {wall:.3f} | {c/wall:,.0f} | {mib/wall:.1f} | "
      f"{user:.2f} + {system:.2f} | {cpu / c * 1e6:,.0f} | {cpu / mib * 1e3:.2f} | {ratio} |")
PY
}

source_row() { # cpu server count size: smtp-source, remembered for the ratios
    local t
    t=$(timed taskset -c "$1" /usr/sbin/smtp-source -d -s 1 -m "$3" -l "$4" "$2")
    source_rate="$source_rate $4=$(python3 -c "print($3 / float('$t'.split()[0]))")"
    row "${5:-smtp-source -d}" "$3" "$4" "$t"
}

smtp_cli() { # cpu server count size [distinct]: the smtp command, one session
    local files=() i count=$3 t name="smtp CLI, same file"
    if [ -n "${5:-}" ]; then
        for ((i = 0; i < count; i++)); do files+=("$msgdir/$4/$i.eml"); done
        name="smtp CLI, distinct files"
    else
        for ((i = 0; i < count; i++)); do files+=("$msgdir/$4.eml"); done
    fi
    t=$(timed taskset -c "$1" "$smtp" send --server "$2" --tls none \
        --from blast@example.org --to sink@example.net "${files[@]}")
    row "$name" "$count" "$4" "$t"
}

peer_rows() { # cpu server count size
    [ -n "$peers" ] || return 0
    local cpu=$1 t
    shift
    t=$(timed taskset -c "$cpu" "$peers/lettre-blast" "$@")
    row "lettre (pooled async)" "$2" "$3" "$t"
    t=$(timed taskset -c "$cpu" "$peers/mail-send-blast" "$@")
    row "mail-send" "$2" "$3" "$t"
    t=$(PEER_NODELAY=1 timed taskset -c "$cpu" "$peers/mail-send-blast" "$@")
    row "mail-send (PEER_NODELAY=1)" "$2" "$3" "$t"
}

header() {
    echo "| client | message bytes | messages | seconds | messages/s | MiB/s | client CPU s (user + sys) | CPU µs/message | CPU ms/MiB | x source |"
    echo "|---|---|---|---|---|---|---|---|---|---|"
}

rtt_rows() { # server "blast's row name" "smtp-source's row name": 1 KiB, every client
    source_rate=""
    t=$(timed taskset -c 1 "$blast" "$1" "$count_rtt" 1024)
    row "$2" "$count_rtt" 1024 "$t"
    source_row 1 "$1" "$count_rtt" 1024 "$3"
    smtp_cli 1 "$1" "$count_rtt" 1024
    peer_rows 1 "$1" "$peer_count_rtt" 1024
}

for pinning in ${PINNING:-same split}; do
    case $pinning in
    same) cpu=0 ;;
    split) cpu=1 ;;
    *) echo "PINNING: same or split, not $pinning" >&2; exit 2 ;;
    esac
    echo
    echo "Pinning \`$pinning\`: the sink on CPU 0, the clients on CPU $cpu ($(uptime | sed 's/.*load/load/')):"
    echo
    header
    source_rate=""
    for size_count in "1024 $count_small" "1048576 $count_large"; do
        set -- $size_count
        size=$1 count=$2
        source_row "$cpu" "127.0.0.1:$port" "$count" "$size"
        t=$(timed taskset -c "$cpu" "$blast" "127.0.0.1:$port" "$count" "$size")
        row "smtp-tls blast (one session, pipelined)" "$count" "$size" "$t"
        smtp_cli "$cpu" "127.0.0.1:$port" "$count" "$size"
        smtp_cli "$cpu" "127.0.0.1:$port" "$count" "$size" distinct
    done
    peer_rows "$cpu" "127.0.0.1:$port" "$peer_count_small" 1024
    peer_rows "$cpu" "127.0.0.1:$port" "$peer_count_large" 1048576
done

if [ "${SKIP_RTT:-}" != 1 ]; then
    echo
    echo "At a 10 ms round trip (delay proxy), 1 KiB messages, clients on CPU 1:"
    echo
    header
    rtt_rows "127.0.0.1:$((port + 1))" "smtp-tls blast (one session, pipelined)" "smtp-source -d"

    # smtp-sink offers no CHUNKING, so over DATA a message costs at least the
    # round trip to its 354. With CHUNKING, BDAT ... LAST and the next envelope
    # go without waiting: the same clients against `smtp sink --chunking` (this
    # project's capture server), also behind the 10 ms delay proxy.
    "$smtp" sink --listen "127.0.0.1:$((port + 2))" --chunking >/dev/null 2>&1 &
    chunking_sink=$!
    "$proxy" $((port + 3)) "127.0.0.1:$((port + 2))" 5 &
    chunking_proxy=$!
    trap 'kill $sink $proxy_pid $chunking_sink $chunking_proxy 2>/dev/null; rm -rf "$msgdir"' EXIT
    sleep 0.5
    echo
    echo "At a 10 ms round trip against \`smtp sink --chunking\` (CHUNKING offered), 1 KiB messages:"
    echo
    header
    rtt_rows "127.0.0.1:$((port + 3))" "smtp-tls blast (one session, BDAT pipelined)" "smtp-source -d (DATA)"
fi

# Peak RSS while sending a 1 GiB message from a file with the smtp command.
if [ "${SKIP_RSS:-}" != 1 ]; then
    cargo build --release --locked -q -p smtp-cli
    big=$(mktemp --suffix=.eml)
    python3 - "$big" <<'PY'
import sys
line = b"012345678901234567890123456789012345678901234567890123456789012345678901234567\r\n"
with open(sys.argv[1], "wb") as f:
    f.write(b"From: a@example.org\r\nTo: b@example.net\r\nSubject: 1 GiB\r\n\r\n")
    chunk = line * 13000
    for _ in range((1 << 30) // len(chunk) + 1):
        f.write(chunk)
PY
    /usr/bin/time -f "%M" -o "$big.rss" "${CARGO_TARGET_DIR:-target}/release/smtp" send \
        --server "127.0.0.1:$port" --tls none -t "$big" >/dev/null
    echo
    echo "peak RSS sending a $(du -h "$big" | cut -f1) message: $(( $(cat "$big.rss") / 1024 )) MiB"
    rm -f "$big" "$big.rss"
fi

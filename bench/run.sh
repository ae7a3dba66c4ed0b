#!/usr/bin/env bash
# End-to-end throughput against Postfix's smtp-sink on loopback, side by side
# with Postfix's smtp-source, in one run on the same sink. The sink is pinned
# to CPU 0 and each client to CPU 1 (unpinned figures swing by 2x on 2-vCPU
# machines). All clients are timed the same way, process start included.
#
#   bench/run.sh [COUNT_1K] [COUNT_1M]
#
# Rows beside smtp-tls's blast example and smtp-source:
# - `smtp CLI (one session)`: the smtp command given one message file COUNT
#   times (one session, one MAIL transaction per file).
# - lettre and mail-send (bench/peers, a crate of its own) driven like blast.
#   They run at tens of messages/s on loopback, so they send fewer messages:
#   PEER_COUNT_1K (200), PEER_COUNT_1M (20), PEER_COUNT_RTT (100); compare
#   messages/s. `mail-send (PEER_NODELAY=1)` sets TCP_NODELAY through
#   mail-send's public stream; lettre has no such setting. SKIP_PEERS=1 leaves
#   them out (and skips building them).
#
# Every message body is made of 80-byte lines, as smtp-source sends them
# (the sink's work is per line).
#
# Needs: postfix (smtp-sink, smtp-source), taskset, python3.
set -euo pipefail
cd "$(dirname "$0")/.."
count_small=${1:-20000}
count_large=${2:-100}
port=${PORT:-25525}

cargo build --release --locked -q -p smtp-tls --example blast --example delay_proxy
cargo build --release --locked -q -p smtp-cli
blast=${CARGO_TARGET_DIR:-target}/release/examples/blast
proxy=${CARGO_TARGET_DIR:-target}/release/examples/delay_proxy
smtp=${CARGO_TARGET_DIR:-target}/release/smtp
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

user=()
[ "$(id -u)" -eq 0 ] && user=(-u nobody)
taskset -c 0 /usr/sbin/smtp-sink "${user[@]}" "127.0.0.1:$port" 100 &
sink=$!
# The same sink behind a proxy adding 5 ms each way: a 10 ms round trip.
"$proxy" $((port + 1)) "127.0.0.1:$port" 5 &
proxy_pid=$!
trap 'kill $sink $proxy_pid 2>/dev/null; rm -rf "$msgdir"' EXIT
sleep 0.5

timed() { # prints seconds taken by "$@"
    local s e
    s=$(date +%s.%N)
    "$@" >/dev/null || { echo "failed: $*" >&2; return 1; }
    e=$(date +%s.%N)
    python3 -c "print($e - $s)"
}

row() { # name count size seconds
    python3 -c "import sys; n,c,s,t=sys.argv[1],int(sys.argv[2]),int(sys.argv[3]),float(sys.argv[4]); print(f'| {n} | {s} | {c} | {t:.3f} | {c/t:,.0f} | {c*s/t/1048576:.1f} |')" "$@"
}

smtp_cli() { # server count size: the smtp command, one session
    local files=() i count=$2
    for ((i = 0; i < count; i++)); do files+=("$msgdir/$3.eml"); done
    t=$(timed taskset -c 1 "$smtp" send --server "$1" --tls none \
        --from blast@example.org --to sink@example.net "${files[@]}")
    row "smtp CLI (one session)" "$count" "$3" "$t"
}

peer_rows() { # server count size
    [ -n "$peers" ] || return 0
    t=$(timed taskset -c 1 "$peers/lettre-blast" "$@")
    row "lettre (pooled async)" "$2" "$3" "$t"
    t=$(timed taskset -c 1 "$peers/mail-send-blast" "$@")
    row "mail-send" "$2" "$3" "$t"
    t=$(PEER_NODELAY=1 timed taskset -c 1 "$peers/mail-send-blast" "$@")
    row "mail-send (PEER_NODELAY=1)" "$2" "$3" "$t"
}

header() {
    echo "| client | message bytes | messages | seconds | messages/s | MiB/s |"
    echo "|---|---|---|---|---|---|"
}

rtt_rows() { # server "blast's row name" "smtp-source's row name": 1 KiB, every client
    t=$(timed taskset -c 1 "$blast" "$1" "$count_rtt" 1024)
    row "$2" "$count_rtt" 1024 "$t"
    t=$(timed taskset -c 1 /usr/sbin/smtp-source -d -s 1 -m "$count_rtt" -l 1024 "$1")
    row "$3" "$count_rtt" 1024 "$t"
    smtp_cli "$1" "$count_rtt" 1024
    peer_rows "$1" "$peer_count_rtt" 1024
}

header
for size_count in "1024 $count_small" "1048576 $count_large"; do
    set -- $size_count
    size=$1 count=$2
    t=$(timed taskset -c 1 "$blast" "127.0.0.1:$port" "$count" "$size")
    row "smtp-tls (one session, pipelined)" "$count" "$size" "$t"
    t=$(timed taskset -c 1 /usr/sbin/smtp-source -d -s 1 -m "$count" -l "$size" "127.0.0.1:$port")
    row "smtp-source -d" "$count" "$size" "$t"
    smtp_cli "127.0.0.1:$port" "$count" "$size"
done
peer_rows "127.0.0.1:$port" "$peer_count_small" 1024
peer_rows "127.0.0.1:$port" "$peer_count_large" 1048576

echo
echo "At a 10 ms round trip (delay proxy), 1 KiB messages:"
echo
header
rtt_rows "127.0.0.1:$((port + 1))" "smtp-tls (one session, pipelined)" "smtp-source -d"

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
rtt_rows "127.0.0.1:$((port + 3))" "smtp-tls (one session, BDAT pipelined)" "smtp-source -d (DATA)"

# Peak RSS while sending a 1 GiB message from a file with the smtp command.
if [ -x /usr/bin/time ] && [ "${SKIP_RSS:-}" = "" ]; then
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

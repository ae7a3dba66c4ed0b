#!/usr/bin/env bash
# End-to-end throughput against Postfix's smtp-sink on loopback, side by side
# with Postfix's smtp-source, in one run on the same sink. The sink is pinned
# to CPU 0 and each client to CPU 1 (unpinned figures swing by 2x on 2-vCPU
# machines). Both clients are timed the same way, process start included.
#
#   bench/run.sh [COUNT_1K] [COUNT_1M]
#
# Needs: postfix (smtp-sink, smtp-source), taskset, python3.
set -euo pipefail
cd "$(dirname "$0")/.."
count_small=${1:-20000}
count_large=${2:-100}
port=${PORT:-25525}

cargo build --release --locked -q -p smtp-tls --example blast --example delay_proxy
blast=${CARGO_TARGET_DIR:-target}/release/examples/blast
proxy=${CARGO_TARGET_DIR:-target}/release/examples/delay_proxy

user=()
[ "$(id -u)" -eq 0 ] && user=(-u nobody)
taskset -c 0 /usr/sbin/smtp-sink "${user[@]}" "127.0.0.1:$port" 100 &
sink=$!
# The same sink behind a proxy adding 5 ms each way: a 10 ms round trip.
"$proxy" $((port + 1)) "127.0.0.1:$port" 5 &
proxy_pid=$!
trap 'kill $sink $proxy_pid 2>/dev/null' EXIT
sleep 0.5

timed() { # prints seconds taken by "$@"
    local s e
    s=$(date +%s.%N)
    "$@" >/dev/null
    e=$(date +%s.%N)
    python3 -c "print($e - $s)"
}

row() { # name count size seconds
    python3 -c "import sys; n,c,s,t=sys.argv[1],int(sys.argv[2]),int(sys.argv[3]),float(sys.argv[4]); print(f'| {n} | {s} | {c} | {t:.3f} | {c/t:,.0f} | {c*s/t/1048576:.1f} |')" "$@"
}

echo "| client | message bytes | messages | seconds | messages/s | MiB/s |"
echo "|---|---|---|---|---|---|"
for size_count in "1024 $count_small" "1048576 $count_large"; do
    set -- $size_count
    size=$1 count=$2
    t=$(timed taskset -c 1 "$blast" "127.0.0.1:$port" "$count" "$size")
    row "smtp-tls (one session, pipelined)" "$count" "$size" "$t"
    t=$(timed taskset -c 1 /usr/sbin/smtp-source -d -s 1 -m "$count" -l "$size" "127.0.0.1:$port")
    row "smtp-source -d" "$count" "$size" "$t"
done

echo
echo "At a 10 ms round trip (delay proxy), 1 KiB messages:"
echo
echo "| client | message bytes | messages | seconds | messages/s | MiB/s |"
echo "|---|---|---|---|---|---|"
count_rtt=${COUNT_RTT:-500}
t=$(timed taskset -c 1 "$blast" "127.0.0.1:$((port + 1))" "$count_rtt" 1024)
row "smtp-tls (one session, pipelined)" "$count_rtt" 1024 "$t"
t=$(timed taskset -c 1 /usr/sbin/smtp-source -d -s 1 -m "$count_rtt" -l 1024 "127.0.0.1:$((port + 1))")
row "smtp-source -d" "$count_rtt" 1024 "$t"

# Peak RSS while sending a 1 GiB message from a file with the smtp command.
if [ -x /usr/bin/time ] && [ "${SKIP_RSS:-}" = "" ]; then
    cargo build --release --locked -q -p smtp-cli
    big=$(mktemp --suffix=.eml)
    python3 - "$big" <<'PY'
import sys
line = b"0123456789012345678901234567890123456789012345678901234567890123456789012345\r\n"
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

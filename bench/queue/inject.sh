#!/usr/bin/env bash
# Injects the benchmark's messages into Postfix's smtpd over N parallel SMTP
# sessions (one `smtp send --server` each, pipelined, plaintext): file k of
# the list goes to session k % N, so each session keeps the list's order.
#
#   inject.sh N SMTP HOST:PORT LIST
#
# Exits 0 when every session did; otherwise the first failure's status.
set -euo pipefail
n=$1 smtp=$2 server=$3 list=$4
pids=()
for ((k = 0; k < n; k++)); do
    mapfile -t files < <(awk -v n="$n" -v k="$k" '(NR - 1) % n == k' "$list")
    "$smtp" send --server "$server" --tls none -t "${files[@]}" >/dev/null &
    pids+=($!)
done
rc=0
for p in "${pids[@]}"; do
    wait "$p" || { s=$?; [ "$rc" -ne 0 ] || rc=$s; }
done
exit "$rc"

#!/usr/bin/env bash
# A throwaway Postfix instance for bench/queue.sh: everything it writes is
# under one directory. The system's instance is not changed: its main.cf
# and master.cf are not read, its queue and data directories not used, and
# no alternate_config_directories entry is needed (`postfix -c DIR` run as
# root). Only Postfix's own file lists in /etc/postfix (meta_directory:
# postfix-files, dynamicmaps.cf) are read, by `postfix check` and map
# lookups, as for any instance.
#
#   postfix.sh setup DIR SMTPD_PORT TRANSPORT_FILE   writes DIR/etc, DIR/queue, DIR/data
#   postfix.sh start DIR | stop DIR
#
# DIR/etc/main.cf: smtpd on 127.0.0.1:SMTPD_PORT taking mail from 127.0.0.0/8,
# no local delivery, every domain routed by the transport map (texthash:, so
# no postmap), no DNS in the smtp client, no TLS, logging to DIR/maillog
# (through postlogd, whether or not syslog runs). Everything else is Postfix's
# default: 100 processes at most, 20 connections per destination, on-demand
# connection caching, in_flow_delay 1s.
#
# Needs root (master starts as root and drops to mail_owner=postfix) and
# the user `postfix` and group `postdrop`, as a Debian install of postfix has.
set -euo pipefail

cmd=$1 dir=$2

case $cmd in
setup)
    port=$3 transport=$4
    if [ "$(id -u)" -ne 0 ]; then
        echo "postfix.sh: Postfix's master must start as root (run the bench as root, or SKIP_POSTFIX=1)" >&2
        exit 1
    fi
    id postfix >/dev/null 2>&1 && getent group postdrop >/dev/null ||
        { echo "postfix.sh: no user postfix / group postdrop (apt-get install postfix)" >&2; exit 1; }
    mkdir -p "$dir/etc" "$dir/queue" "$dir/data"
    # The postfix user must reach the queue through every parent.
    chmod 755 "$dir" "$dir/etc" "$dir/queue"
    chown postfix "$dir/data"
    cp "$transport" "$dir/etc/transport"
    cat >"$dir/etc/main.cf" <<CF
compatibility_level = 3.6
queue_directory = $dir/queue
data_directory = $dir/data
mail_owner = postfix
setgid_group = postdrop
myhostname = postfix-bench.test
mydomain = postfix-bench.test
myorigin = \$myhostname
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
relay_domains =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
smtpd_peername_lookup = no
transport_maps = texthash:$dir/etc/transport
smtp_dns_support_level = disabled
smtp_tls_security_level = none
smtpd_tls_security_level = none
biff = no
maillog_file_prefixes = $dir
maillog_file = $dir/maillog
CF
    # Postfix 3.7's default services, none chrooted (the queue directory
    # holds no chroot tree), and smtpd on the loopback port only.
    cat >"$dir/etc/master.cf" <<CF
127.0.0.1:$port inet n - n - - smtpd
pickup     unix  n - n 60   1 pickup
cleanup    unix  n - n -    0 cleanup
qmgr       unix  n - n 300  1 qmgr
tlsmgr     unix  - - n 1000? 1 tlsmgr
rewrite    unix  - - n -    - trivial-rewrite
bounce     unix  - - n -    0 bounce
defer      unix  - - n -    0 bounce
trace      unix  - - n -    0 bounce
verify     unix  - - n -    1 verify
flush      unix  n - n 1000? 0 flush
proxymap   unix  - - n -    - proxymap
proxywrite unix  - - n -    1 proxymap
smtp       unix  - - n -    - smtp
relay      unix  - - n -    - smtp
showq      unix  n - n -    - showq
error      unix  - - n -    - error
retry      unix  - - n -    - error
discard    unix  - - n -    - discard
local      unix  - n n -    - local
virtual    unix  - n n -    - virtual
lmtp       unix  - - n -    - lmtp
anvil      unix  - - n -    1 anvil
scache     unix  - - n -    1 scache
postlog    unix-dgram n - n - 1 postlogd
CF
    ;;
start)
    # `postfix check` (run by start) creates the queue's subdirectories
    # with their owners.
    postfix -c "$dir/etc" start
    ;;
stop)
    master=$(cat "$dir/queue/pid/master.pid" 2>/dev/null | tr -d ' ' || true)
    postfix -c "$dir/etc" stop
    # Wait for the master (and so its children) to be gone, or a zombie
    # (where nothing reaps orphans).
    for _ in $(seq 100); do
        [ -n "$master" ] && [ -r "/proc/$master/stat" ] || break
        [ "$(sed 's/.*) //' "/proc/$master/stat" | cut -d' ' -f1)" = Z ] && break
        sleep 0.1
    done
    ;;
*)
    echo "usage: postfix.sh setup DIR PORT TRANSPORT | start DIR | stop DIR" >&2
    exit 64
    ;;
esac

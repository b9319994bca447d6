#!/usr/bin/env bash
# Backup side: make this VMM (no VM yet) wait for a primary on LISTEN. Run it before ft-enable.sh.
#   TANDEM_SOCKET=/run/b.sock LISTEN=tcp:10.99.0.2:7600 ARBITER=/shared/arb \
#   [DISK_MODE=shared|replicated] [DISKS="disk0=/shared/disk.img"] [NETS="nic0=tap0"] \
#   [SERIAL_FILE=/tmp/console.log] [FAILURE_TIMEOUT_MS=1000] [KEY=/etc/tandem/ft.key | INSECURE=1] \
#   ./ft-receive.sh
# ARBITER is a directory on storage both hosts see; for an etcd arbiter set instead
# ARBITER_ETCD=http://10.0.0.5:2379[,URL...] ARBITER_KEY=/tandem/pairs/NAME (TLS and user: see
# arbiter_json in ft-common.sh). DISKS and NETS name this host's disk paths and taps by device id
# (comma-separated). KEY is the pair key file (the same on both hosts: the stream is encrypted);
# without it only a loopback LISTEN is accepted unless INSECURE=1. Prints ft.status (backup,
# syncing).
set -euo pipefail
. "$(dirname "$0")/ft-common.sh"
: "${LISTEN:?set LISTEN (tcp:ADDR:PORT)}"
arbiter=$(arbiter_json)
# "id=value,id=value" -> [{"id": id, KEY: value}, ...]
pairs() {
    jq -cn --arg s "$2" --arg k "$1" '[$s | split(",")[] | select(. != "")
        | capture("^(?<id>[^=]+)=(?<v>.+)$") // error("want ID=VALUE, got \(.)")
        | {id, ($k): .v}]'
}
body=$(jq -n --arg l "$LISTEN" --argjson a "$arbiter" --arg m "${DISK_MODE:-shared}" \
    --argjson d "$(pairs path "${DISKS:-}")" --argjson n "$(pairs tap "${NETS:-}")" \
    '{listen: $l, arbiter: $a, disk_mode: $m, disks: $d, net: $n}')
[ -n "${SERIAL_FILE:-}" ] && body=$(jq --arg f "$SERIAL_FILE" '. + {serial: {mode: "File", file: $f}}' <<<"$body")
[ -n "${FAILURE_TIMEOUT_MS:-}" ] && body=$(jq --argjson t "$FAILURE_TIMEOUT_MS" '. + {failure_timeout_ms: $t}' <<<"$body")
body=$(listener_security "$body")
api PUT ft.receive "$body"
api GET ft.status | jq -c '{role, state, generation, reason}'

#!/usr/bin/env bash
# Live-migrate: the destination VMM (DEST_SOCKET) listens on DEST_URL, the source (TANDEM_SOCKET)
# sends, and this waits until the source says Migrated (or prints why it failed).
#   TANDEM_SOCKET=/run/p.sock DEST_SOCKET=/run/b.sock DEST_URL=tcp:10.99.0.2:7500 \
#   [KEY=/etc/tandem/migration.key | INSECURE=1] ./migrate.sh
# KEY (a file both hosts hold) encrypts the stream; without it the destination listens only on a
# loopback or unix: DEST_URL unless INSECURE=1.
set -euo pipefail
. "$(dirname "$0")/common.sh"
: "${DEST_SOCKET:?set DEST_SOCKET}" "${DEST_URL:?set DEST_URL}"
recv=$(jq -n --arg u "$DEST_URL" '{receiver_url: $u}')
[ -n "${DEST_SERIAL_FILE:-}" ] && recv=$(jq --arg f "$DEST_SERIAL_FILE" '. + {serial: {mode: "File", file: $f}}' <<<"$recv")
recv=$(listener_security "$recv")
TANDEM_SOCKET=$DEST_SOCKET api PUT vm.receive-migration "$recv"
send=$(jq -n --arg u "$DEST_URL" --argjson d "${DOWNTIME_MS:-300}" '{destination_url: $u, downtime_ms: $d}')
api PUT vm.send-migration "$(with_key "$send")"
while true; do
    info=$(api GET vm.info)
    state=$(jq -r .state <<<"$info")
    err=$(jq -r '.migration.error // empty' <<<"$info")
    if [ "$state" = Migrated ]; then jq -c '.migration.report' <<<"$info"; exit 0; fi
    if [ -n "$err" ]; then echo "migration failed: $err" >&2; exit 1; fi
    sleep 0.2
done

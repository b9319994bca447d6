#!/usr/bin/env bash
# Live-migrate: the destination VMM (DEST_SOCKET) listens on DEST_URL, the source (TANDEM_SOCKET)
# sends, and this waits until the source says Migrated (or prints why it failed).
#   TANDEM_SOCKET=/run/p.sock DEST_SOCKET=/run/b.sock DEST_URL=tcp:10.99.0.2:7500 ./migrate.sh
set -euo pipefail
. "$(dirname "$0")/common.sh"
: "${DEST_SOCKET:?set DEST_SOCKET}" "${DEST_URL:?set DEST_URL}"
recv=$(jq -n --arg u "$DEST_URL" '{receiver_url: $u}')
[ -n "${DEST_SERIAL_FILE:-}" ] && recv=$(jq --arg f "$DEST_SERIAL_FILE" '. + {serial: {mode: "File", file: $f}}' <<<"$recv")
TANDEM_SOCKET=$DEST_SOCKET api PUT vm.receive-migration "$recv"
api PUT vm.send-migration "$(jq -n --arg u "$DEST_URL" --argjson d "${DOWNTIME_MS:-300}" '{destination_url: $u, downtime_ms: $d}')"
while true; do
    info=$(api GET vm.info)
    state=$(jq -r .state <<<"$info")
    err=$(jq -r '.migration.error // empty' <<<"$info")
    if [ "$state" = Migrated ]; then jq -c '.migration.report' <<<"$info"; exit 0; fi
    if [ -n "$err" ]; then echo "migration failed: $err" >&2; exit 1; fi
    sleep 0.2
done

#!/usr/bin/env bash
# Primary side: protect the running VM with the backup waiting on PEER (see ft-receive.sh), then
# wait until the pair is protected (the initial sync is done), or say why it is not.
#   TANDEM_SOCKET=/run/p.sock PEER=tcp:10.99.0.2:7600 ARBITER=/shared/arb [DISK_MODE=shared] \
#   [CHECKPOINT_INTERVAL_MS=25] [HEARTBEAT_INTERVAL_MS=100] [FAILURE_TIMEOUT_MS=1000] \
#   [KEY=/etc/tandem/ft.key] [TIMEOUT=60] ./ft-enable.sh
# The arbiter as for ft-receive.sh: ARBITER, or ARBITER_ETCD with ARBITER_KEY. KEY is the pair key
# file the backup's ft-receive.sh was given too.
set -euo pipefail
. "$(dirname "$0")/ft-common.sh"
: "${PEER:?set PEER (tcp:HOST:PORT of the backup)}"
arbiter=$(arbiter_json)
body=$(jq -n --arg p "$PEER" --argjson a "$arbiter" --arg m "${DISK_MODE:-shared}" \
    '{peer: $p, arbiter: $a, disk_mode: $m}')
for v in CHECKPOINT_INTERVAL_MS HEARTBEAT_INTERVAL_MS FAILURE_TIMEOUT_MS; do
    if [ -n "${!v:-}" ]; then
        body=$(jq --arg k "${v,,}" --argjson x "${!v}" '. + {($k): $x}' <<<"$body")
    fi
done
body=$(with_key "$body")
api PUT ft.enable "$body"
ft_wait primary protected

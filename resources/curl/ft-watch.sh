#!/usr/bin/env bash
# Print this VMM's FT status as one line every INTERVAL seconds (default 1); COUNT times, or until
# interrupted when COUNT is unset. Fails (with the reason) once the VMM stops answering.
#   TANDEM_SOCKET=/run/p.sock [INTERVAL=1] [COUNT=10] ./ft-watch.sh
set -euo pipefail
. "$(dirname "$0")/ft-common.sh"
n=0
while [ -z "${COUNT:-}" ] || [ "$n" -lt "$COUNT" ]; do
    api GET ft.status | jq -c '{role, state, generation, epoch: .last_committed_epoch,
        checkpoints: .checkpoint_count, pause_p99_us: .pause.p99_us, backlog: .backlog_epochs,
        ack_age_ms, heartbeat_ms: .heartbeat_age.channel_ms, failovers: .failover_count, reason}'
    n=$((n + 1))
    sleep "${INTERVAL:-1}"
done

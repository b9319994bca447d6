#!/usr/bin/env bash
# Print the VM's state (and migration progress) every INTERVAL seconds (default 1); COUNT times,
# or forever when COUNT is unset.
set -euo pipefail
. "$(dirname "$0")/common.sh"
n=0
while [ -z "${COUNT:-}" ] || [ "$n" -lt "$COUNT" ]; do
    api GET vm.info | jq -c '{state, migration: (.migration.progress // null | if . then {phase, round, bytes, downtime_ms} else null end)}'
    n=$((n + 1))
    sleep "${INTERVAL:-1}"
done

#!/usr/bin/env bash
# Primary side: compare the backup's copy with this primary's now (one full replica scrub pass:
# guest memory, device state and, replicated, the disks) and print the report; a region that
# differed is named and re-sent. Exit 0: no difference; 3: differences, all repaired; 1: refused
# (not a protected primary), unfinished, or a region still different after every repair.
#   TANDEM_SOCKET=/run/p.sock [TIMEOUT_MS=30000] ./ft-verify.sh
set -euo pipefail
. "$(dirname "$0")/common.sh"
report=$(api PUT ft.verify "{\"timeout_ms\": ${TIMEOUT_MS:-30000}}")
jq -r '"regions: \(.regions), bytes: \(.bytes), differences: \(.mismatches | length)",
    (.mismatches[] | "  \(.region): \(if .healed then "repaired" else "NOT repaired" end)")' \
    <<<"$report"
if jq -e '.clean' <<<"$report" >/dev/null; then exit 0; fi
if jq -e '.healed' <<<"$report" >/dev/null; then exit 3; fi
exit 1

#!/usr/bin/env bash
# Shut the VM down (when it runs or is paused), delete it (when there is one), and stop the VMM.
# "No VM" is fine; any other refusal (say, an FT primary still syncing its backup) fails the
# script with the API's reason, and the VMM is left running for the operator to look at.
set -euo pipefail
. "$(dirname "$0")/common.sh"
err=$(mktemp)
trap 'rm -f "$err"' EXIT
if info=$(api GET vm.info 2>"$err"); then
    state=$(jq -r .state <<<"$info")
elif grep -q 'HTTP 404' "$err"; then
    state=none
else
    cat "$err" >&2
    exit 1
fi
case $state in
    Running | Paused) api PUT vm.shutdown ;;
esac
if [ "$state" != none ]; then
    api PUT vm.delete
fi
api PUT vmm.shutdown

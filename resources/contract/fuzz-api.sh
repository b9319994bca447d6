#!/usr/bin/env bash
# The API contract check: validates the OpenAPI document with openapi-spec-validator, then fuzzes a
# real `tandem` from it with schemathesis for a bounded number of examples per operation. Every
# response must match the schema, no 5xx, no crash (the VMM must still answer at the end).
#
#   resources/contract/fuzz-api.sh [MAX_EXAMPLES]     (default 30; needs python3 + pip)
#
# Operations that would end the VMM or reach outside it (vmm.shutdown, snapshots to random paths,
# migrations to random addresses) are excluded; vm.boot is excluded too, since random configs would
# boot VMs of random sizes on a 2-core CI host — the table tests cover boot's errors.
# positive_data_acceptance is off: a schema cannot say every semantic rule (serial.file only with
# mode File, unique device ids, a kernel that exists), and those answer 400 by design.
set -euo pipefail
cd "$(dirname "$0")/../.."
examples=${1:-30}
bin=${TANDEM_BIN:-target/debug/tandem}
[ -x "$bin" ] || { echo "fuzz-api: build first (cargo build --workspace)" >&2; exit 2; }
if ! command -v schemathesis >/dev/null || ! command -v openapi-spec-validator >/dev/null; then
    python3 -m pip install -q --disable-pip-version-check schemathesis==4.32.5 openapi-spec-validator==0.9.0 \
        || { echo "fuzz-api: cannot install schemathesis" >&2; exit 2; }
fi

openapi-spec-validator resources/openapi/tandem.yaml

work=$(mktemp -d /tmp/tandem-contract.XXXXXX)
cleanup() { kill "${vmm:-}" "${proxy:-}" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
"$bin" --api-socket "$work/api.sock" --log-level warn --log-file "$work/tandem.log" &
vmm=$!
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
python3 resources/contract/unix_proxy.py "$port" "$work/api.sock" &
proxy=$!
for _ in $(seq 100); do
    curl -s --unix-socket "$work/api.sock" http://localhost/api/v1/vmm.ping >/dev/null && break
    sleep 0.05
done

schemathesis run resources/openapi/tandem.yaml \
    --url "http://127.0.0.1:$port/api/v1" \
    --checks all \
    --exclude-checks positive_data_acceptance \
    --max-examples "$examples" \
    --exclude-path-regex '^/(vmm\.shutdown|vm\.snapshot|vm\.restore|vm\.send-migration|vm\.receive-migration|vm\.boot|vm\.reboot|ft\.receive|ft\.enable)$' \
    --request-timeout 30

# Still alive and answering.
curl -sf --unix-socket "$work/api.sock" http://localhost/api/v1/vmm.ping >/dev/null
kill -0 "$vmm"
echo "fuzz-api: 0 failures; the VMM survived"

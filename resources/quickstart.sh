#!/usr/bin/env bash
# The README's main job: build Tandem, start a VMM with its API socket, boot the built-in guest
# (2 vCPUs, compute workload) through the API, show its console live, pause and resume it, then
# shut everything down. Needs /dev/kvm.
set -euo pipefail
cd "$(dirname "$0")/.."

[ -r /dev/kvm ] && [ -w /dev/kvm ] || { echo "quickstart: /dev/kvm is not usable here" >&2; exit 1; }

# TANDEM_BIN_DIR: binaries already built (the container image sets it to its own).
if [ -n "${TANDEM_BIN_DIR:-}" ]; then
    bin=$TANDEM_BIN_DIR
else
    cargo build --release --quiet --bin tandem --bin tandem-remote
    bin=target/release
fi
work=$(mktemp -d /tmp/tandem-quickstart.XXXXXX)
sock=$work/api.sock
console=$work/serial.log
cleanup() {
    [ -n "${tail_pid:-}" ] && kill "$tail_pid" 2>/dev/null || true
    [ -n "${vmm_pid:-}" ] && kill "$vmm_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
remote() { "$bin/tandem-remote" --api-socket "$sock" "$@"; }

step "start the VMM: tandem --api-socket $sock"
"$bin/tandem" --api-socket "$sock" --log-level warn &
vmm_pid=$!
for _ in $(seq 100); do remote ping >/dev/null 2>&1 && break; sleep 0.05; done
remote ping

step "create and boot the built-in guest (2 vCPUs, 256 MiB, workload=compute)"
remote create --cpus 2 --memory 256M --cmdline "workload=compute" \
    --serial-mode file --serial-file "$console"
remote boot
touch "$console"
tail -n +1 -f "$console" | sed -u 's/^/  guest| /' &
tail_pid=$!
sleep 4

step "vm.info"
remote info

step "pause for 3 s (the console goes quiet), then resume"
remote pause
sleep 3
remote resume
sleep 3

step "vm.counters"
remote counters

step "shut the VM and the VMM down"
remote shutdown
remote shutdown-vmm
wait "$vmm_pid" 2>/dev/null || true
vmm_pid=
echo "done"

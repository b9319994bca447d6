#!/usr/bin/env bash
# Create and boot a VM: the built-in guest unless KERNEL is set.
#   TANDEM_SOCKET=/run/tandem.sock CPUS=2 MEMORY_MIB=512 CMDLINE="workload=idle" \
#   SERIAL_FILE=/tmp/console.log [KERNEL=bzImage INITRAMFS=initrd] ./create-and-boot.sh
set -euo pipefail
. "$(dirname "$0")/common.sh"
cpus=${CPUS:-1}
mem=$(( ${MEMORY_MIB:-512} * 1024 * 1024 ))
payload=$(jq -n --arg c "${CMDLINE:-workload=idle}" --arg k "${KERNEL:-}" --arg i "${INITRAMFS:-}" \
    '{cmdline: $c} + (if $k != "" then {kernel: $k} else {} end) + (if $i != "" then {initramfs: $i} else {} end)')
serial='{"mode":"Null"}'
[ -n "${SERIAL_FILE:-}" ] && serial=$(jq -n --arg f "$SERIAL_FILE" '{mode: "File", file: $f}')
body=$(jq -n --argjson cpus "$cpus" --argjson mem "$mem" --argjson p "$payload" --argjson s "$serial" \
    '{cpus: {boot_vcpus: $cpus}, memory: {size: $mem}, payload: $p, serial: $s}')
api PUT vm.create "$body"
api PUT vm.boot
api GET vm.info | jq -r '"state: \(.state)"'

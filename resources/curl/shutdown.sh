#!/usr/bin/env bash
# Shut the VM down, delete it, and stop the VMM.
set -euo pipefail
. "$(dirname "$0")/common.sh"
api PUT vm.shutdown || true
api PUT vm.delete || true
api PUT vmm.shutdown

#!/usr/bin/env bash
# Backup side: go live now (planned switch-over, or the primary is known dead), through the
# arbiter; waits until this VMM runs the guest as an unprotected primary, or says why not (the old
# primary, if alive, loses the next generation and halts).
#   TANDEM_SOCKET=/run/b.sock [TIMEOUT=60] ./ft-promote.sh
set -euo pipefail
. "$(dirname "$0")/ft-common.sh"
api PUT ft.promote
ft_wait primary unprotected
api GET vm.info | jq -r '"state: \(.state)"'

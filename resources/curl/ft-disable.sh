#!/usr/bin/env bash
# End the pair on purpose on this member: a primary runs on standalone, a backup discards its copy,
# a halted or failed-over member is reset to standalone. Waits until ft.status says standalone.
#   TANDEM_SOCKET=/run/p.sock [TIMEOUT=60] ./ft-disable.sh
set -euo pipefail
. "$(dirname "$0")/ft-common.sh"
api PUT ft.disable
ft_wait standalone unprotected

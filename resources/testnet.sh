#!/usr/bin/env bash
# Test network for Tandem: "hosts" as network namespaces, the way the tests and the quickstart use them.
#
#   testnet.sh up NAME      create namespaces NAME-c (client), NAME-p and NAME-b (hosts), NAME-l (LAN switch)
#   testnet.sh down NAME    remove them (idempotent)
#   testnet.sh tap NAME HOST TAP   create tap TAP in host HOST (p or b), attached to its LAN bridge
#
# Topology:
#   NAME-l:  bridge "lan"  <- the guest LAN (10.77.0.0/24)
#   NAME-c:  eth0 10.77.0.100 (on the LAN)
#   NAME-p:  bridge "br-lan" 10.77.0.11 with uplink to the LAN; taps for guests go on br-lan;
#            ft0 10.99.0.1 (host-to-host link, separate from the LAN)
#   NAME-b:  bridge "br-lan" 10.77.0.12, uplink; ft0 10.99.0.2
# A partition of the host-to-host link is `ip -n NAME-p link set ft0 down`.
# NAME must be at most 10 characters (interface names are made from it). Needs root and iproute2.
set -euo pipefail

die() { echo "testnet: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "needs root (network namespaces, veth, tap)"
command -v ip >/dev/null || die "needs iproute2 ('ip')"

cmd=${1:-}; name=${2:-}
[ -n "$cmd" ] && [ -n "$name" ] || die "usage: $0 up|down NAME | tap NAME HOST TAP"
[ ${#name} -le 10 ] || die "NAME '$name' is longer than 10 characters"

ns_exists() { ip netns list | awk '{print $1}' | grep -qx "$1"; }

down() {
    for s in c p b l; do
        if ns_exists "$name-$s"; then ip netns del "$name-$s"; fi
    done
}

up() {
    down
    for s in c p b l; do ip netns add "$name-$s"; ip -n "$name-$s" link set lo up; done
    ip -n "$name-l" link add lan type bridge
    ip -n "$name-l" link set lan up

    # Client on the LAN.
    ip link add "$name-cv" netns "$name-c" type veth peer name c-port netns "$name-l"
    ip -n "$name-c" link set "$name-cv" name eth0
    ip -n "$name-c" addr add 10.77.0.100/24 dev eth0
    ip -n "$name-c" link set eth0 up
    ip -n "$name-l" link set c-port master lan up

    # Each host: a LAN bridge with an uplink to the switch.
    local i=11
    for h in p b; do
        ip link add "$name-${h}u" netns "$name-$h" type veth peer name "$h-port" netns "$name-l"
        ip -n "$name-$h" link set "$name-${h}u" name uplink
        ip -n "$name-$h" link add br-lan type bridge
        ip -n "$name-$h" link set uplink master br-lan up
        ip -n "$name-$h" addr add "10.77.0.$i/24" dev br-lan
        ip -n "$name-$h" link set br-lan up
        ip -n "$name-l" link set "$h-port" master lan up
        i=$((i + 1))
    done

    # Host-to-host link, separate from the LAN.
    ip link add "$name-pf" netns "$name-p" type veth peer name "$name-bf" netns "$name-b"
    ip -n "$name-p" link set "$name-pf" name ft0
    ip -n "$name-b" link set "$name-bf" name ft0
    ip -n "$name-p" addr add 10.99.0.1/24 dev ft0
    ip -n "$name-b" addr add 10.99.0.2/24 dev ft0
    ip -n "$name-p" link set ft0 up
    ip -n "$name-b" link set ft0 up
}

tap() {
    local host=${3:-} tap=${4:-}
    [ "$host" = p ] || [ "$host" = b ] || die "HOST must be p or b"
    [ -n "$tap" ] || die "usage: $0 tap NAME HOST TAP"
    ip -n "$name-$host" tuntap add dev "$tap" mode tap vnet_hdr
    ip -n "$name-$host" link set "$tap" master br-lan up
}

case "$cmd" in
    up) up ;;
    down) down ;;
    tap) tap "$@" ;;
    *) die "unknown command '$cmd'" ;;
esac

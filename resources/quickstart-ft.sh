#!/usr/bin/env bash
# The README's main job: a fault-tolerant pair with the built-in guest. Builds Tandem, makes a
# test network (resources/testnet.sh: a client and two "hosts" as namespaces, a LAN and a separate
# host-to-host link), boots the guest's counter service on host P, protects it with a backup on
# host B, shows ft.status, then kills the primary with SIGKILL while a client keeps INCrementing over
# one TCP connection — and shows the client carried on. Needs root and /dev/kvm.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "quickstart-ft: needs root (network namespaces, taps)" >&2; exit 1; }
[ -w /dev/kvm ] || { echo "quickstart-ft: /dev/kvm is not usable here" >&2; exit 1; }

# TANDEM_BIN_DIR: binaries already built (the test suite runs this script on its debug build).
if [ -n "${TANDEM_BIN_DIR:-}" ]; then
    bin=$TANDEM_BIN_DIR
else
    cargo build --release --quiet --bin tandem --bin tandem-remote
    bin=$PWD/target/release
fi
fail() { echo "quickstart-ft: FAILED: $*" >&2; for l in "$work"/*.log; do echo "--- $l" >&2; tail -20 "$l" >&2; done; exit 1; }
net=tqs$$
net=${net:0:10}
work=$(mktemp -d /tmp/tandem-ft-quickstart.XXXXXX)
cleanup() {
    kill ${client:-} ${p_pid:-} ${b_pid:-} 2>/dev/null || true
    wait 2>/dev/null || true
    bash resources/testnet.sh down "$net" || true
    rm -rf "$work"
}
trap cleanup EXIT
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
remote() { local sock=$1; shift; "$bin/tandem-remote" --api-socket "$sock" "$@"; }
api() { curl -sS --unix-socket "$1" -X PUT -H 'Content-Type: application/json' -d "$3" "http://localhost/api/v1/$2"; }

step "test network $net: client, host P, host B; taps on each host's LAN bridge"
bash resources/testnet.sh up "$net"
bash resources/testnet.sh tap "$net" p tap0
bash resources/testnet.sh tap "$net" b tap0
truncate -s 1M "$work/counter.img"
mkdir -p "$work/arbiter"

step "a VMM on each host"
ip netns exec "$net-p" "$bin/tandem" --api-socket "$work/p.sock" --log-level warn --log-file "$work/p.log" &
p_pid=$!
ip netns exec "$net-b" "$bin/tandem" --api-socket "$work/b.sock" --log-level warn --log-file "$work/b.log" &
b_pid=$!
for s in p b; do for _ in $(seq 100); do remote "$work/$s.sock" ping >/dev/null 2>&1 && break; sleep 0.05; done; done

step "host P: boot the guest's counter service (10.77.0.2:7000), disk on shared storage"
api "$work/p.sock" vm.create "$(cat <<JSON
{"cpus":{"boot_vcpus":1},"memory":{"size":134217728},
 "payload":{"cmdline":"workload=counter ip=10.77.0.2/24"},
 "disks":[{"id":"disk0","path":"$work/counter.img"}],
 "net":[{"id":"nic0","tap":"tap0"}],
 "serial":{"mode":"File","file":"$work/p-console.log"}}
JSON
)"
remote "$work/p.sock" boot
for _ in $(seq 200); do grep -q "tandem-guest: ready" "$work/p-console.log" 2>/dev/null && break; sleep 0.05; done

step "host B: ft.receive; host P: ft.enable (shared disk, arbiter on shared storage, a pair key, heartbeats also over the LAN)"
# The pair key encrypts and authenticates the replication stream and the heartbeats (owner-only, like ssh keys).
(umask 077 && head -c 32 /dev/urandom > "$work/ft.key")
api "$work/b.sock" ft.receive "{\"listen\":\"tcp:10.99.0.2:7600\",\"arbiter\":{\"path\":\"$work/arbiter\"},\"key\":{\"path\":\"$work/ft.key\"},\"heartbeat_listen\":\"udp:10.77.0.12:7700\",\"peer_heartbeat\":\"udp:10.77.0.11:7700\",\"serial\":{\"mode\":\"File\",\"file\":\"$work/b-console.log\"}}"
api "$work/p.sock" ft.enable "{\"peer\":\"tcp:10.99.0.2:7600\",\"disk_mode\":\"shared\",\"arbiter\":{\"path\":\"$work/arbiter\"},\"key\":{\"path\":\"$work/ft.key\"},\"heartbeat_listen\":\"udp:10.77.0.11:7700\",\"peer_heartbeat\":\"udp:10.77.0.12:7700\"}"
for _ in $(seq 200); do
    curl -s --unix-socket "$work/p.sock" http://localhost/api/v1/ft.status | grep -q '"state":"protected"' && break
    sleep 0.05
done
curl -s --unix-socket "$work/p.sock" http://localhost/api/v1/ft.status | grep -q '"state":"protected"' \
    || fail "the pair never became protected"
echo "primary: $(curl -s --unix-socket "$work/p.sock" http://localhost/api/v1/ft.status)"
echo "backup:  $(curl -s --unix-socket "$work/b.sock" http://localhost/api/v1/ft.status)"

step "client: INC over one TCP connection, every reply checked"
cat > "$work/client.py" <<'PY'
import socket, sys, time
s = socket.create_connection(("10.77.0.2", 7000), timeout=30)
f = s.makefile("rw")
last = None
end = time.time() + float(sys.argv[1])
while time.time() < end:
    f.write("INC\n"); f.flush()
    v = int(f.readline())
    if last is not None and v != last + 1:
        print(f"client: WRONG: {v} after {last}", flush=True); sys.exit(1)
    if v % 2000 == 0:
        print(f"client: INC -> {v}", flush=True)
    last = v
print(f"client: done, last value {last}, every reply was the previous + 1", flush=True)
PY
ip netns exec "$net-c" python3 "$work/client.py" 8 &
client=$!
sleep 3

step "kill -9 the primary's VMM (pid $p_pid)"
kill -9 "$p_pid"; p_pid=
start=$(date +%s.%N)
for _ in $(seq 400); do
    curl -s --unix-socket "$work/b.sock" http://localhost/api/v1/ft.status | grep -q '"role":"primary"' && break
    sleep 0.025
done
curl -s --unix-socket "$work/b.sock" http://localhost/api/v1/ft.status | grep -q '"role":"primary"' \
    || fail "the backup never took over"
echo "backup took over after $(python3 -c "print(round($(date +%s.%N) - $start, 2))") s:"
echo "new primary: $(curl -s --unix-socket "$work/b.sock" http://localhost/api/v1/ft.status)"

step "the client carried on"
wait "$client" || fail "the client saw an error or a wrong reply"
client=

#!/usr/bin/env bash
# Makes sure a Docker engine answers here (CI and dev machines; the container tests need one):
# installs Debian's docker.io when dockerd is missing, and starts dockerd when nothing answers —
# through systemd where it runs, else in the background (logging to /var/log/tandem-dockerd.log),
# as on CI machines without an init system. Does nothing on a machine whose engine already answers.
# Needs root for anything but that check.
set -euo pipefail

say() { printf 'engine.sh: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }
up() { docker info >/dev/null 2>&1; }

if command -v docker >/dev/null 2>&1 && up; then
    say "Docker engine $(docker version -f '{{.Server.Version}}' 2>/dev/null) answers"
    exit 0
fi
[ "$(id -u)" = 0 ] || die "no Docker engine answers, and only root can install or start one"

start=$(date +%s)
if ! command -v dockerd >/dev/null 2>&1; then
    command -v apt-get >/dev/null 2>&1 || die "no dockerd, and no apt-get to install docker.io"
    say "installing docker.io (Debian's package)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker.io >/dev/null
fi

if [ -d /run/systemd/system ]; then
    systemctl start docker
else
    log=/var/log/tandem-dockerd.log
    say "starting dockerd (log: $log)"
    setsid -f dockerd >>"$log" 2>&1 </dev/null
fi
for _ in $(seq 120); do
    up && break
    sleep 0.5
done
up || { tail -n 20 /var/log/tandem-dockerd.log >&2 2>/dev/null || true; die "dockerd did not answer within 60 s"; }
say "Docker engine $(docker version -f '{{.Server.Version}}') ($(docker info -f '{{.Driver}}')) up after $(($(date +%s) - start)) s"

#!/usr/bin/env bash
# Builds a Debian base image from Debian's packages, for machines that reach Debian's mirror but no
# container registry (build.sh calls it when `docker pull` of the base fails).
#
#   debian-base.sh [TAG]        default TAG: tandem-base:bookworm
#
# debootstrap --variant=minbase bookworm (plus what the runtime image and the operator scripts need:
# curl, jq, iproute2, ca-certificates), security updates applied, docs and apt lists dropped, then
# `docker import`. An existing TAG is reused; REFRESH=1 rebuilds it. MIRROR and SECURITY_MIRROR
# pick the mirrors (default deb.debian.org). Needs root and debootstrap (installed when missing and
# apt-get is there). About 2 minutes on a 2-core machine; the image is about 130 MB.
set -euo pipefail

TAG=${1:-tandem-base:bookworm}
SUITE=bookworm
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${SECURITY_MIRROR:-http://deb.debian.org/debian-security}
INCLUDE=ca-certificates,curl,jq,iproute2

say() { printf '%s\n' "debian-base: $*" >&2; }
die() { say "$*"; exit 1; }

if [ "${REFRESH:-0}" != 1 ] && docker image inspect "$TAG" >/dev/null 2>&1; then
    say "reusing $TAG ($(docker image inspect -f '{{.Created}}' "$TAG"); REFRESH=1 rebuilds it)"
    exit 0
fi
[ "$(id -u)" = 0 ] || die "needs root (debootstrap, chroot)"
if ! command -v debootstrap >/dev/null 2>&1; then
    command -v apt-get >/dev/null 2>&1 || die "needs debootstrap, and there is no apt-get to install it"
    say "installing debootstrap"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
fi

root=$(mktemp -d /var/tmp/tandem-base.XXXXXX)
cleanup() {
    # debootstrap mounts proc and sys inside the target; never leave them behind.
    for m in proc sys dev/pts dev; do umount -l "$root/$m" 2>/dev/null || true; done
    rm -rf "$root" "$root.log"
}
trap cleanup EXIT

start=$(date +%s)
say "debootstrap --variant=minbase $SUITE from $MIRROR (include: $INCLUDE)"
if ! debootstrap --variant=minbase --include="$INCLUDE" "$SUITE" "$root" "$MIRROR" >"$root.log" 2>&1; then
    tail -n 30 "$root.log" >&2
    rm -f "$root.log"
    die "debootstrap failed"
fi
rm -f "$root.log"

cat >"$root/etc/apt/sources.list" <<EOF
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb $SECURITY_MIRROR $SUITE-security main
EOF
# Images do not need docs, man pages or cached packages (what Debian's own slim images drop too).
cat >"$root/etc/dpkg/dpkg.cfg.d/01-tandem-slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
EOF
cat >"$root/etc/apt/apt.conf.d/01-tandem-slim" <<'EOF'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
EOF
say "debootstrap done after $(($(date +%s) - start)) s; applying security updates"
if ! chroot "$root" /bin/sh -c 'apt-get update && DEBIAN_FRONTEND=noninteractive apt-get upgrade -y && apt-get clean' \
        >"$root.log" 2>&1; then
    tail -n 30 "$root.log" >&2
    rm -f "$root.log"
    die "apt-get upgrade in the new base failed"
fi
rm -f "$root.log"
find "$root/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete 2>/dev/null || true
rm -rf "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/locale/* \
    "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/log/*.log \
    "$root"/var/cache/debconf/*-old "$root"/tmp/*

tar --numeric-owner -C "$root" -c . | docker import \
    --change 'CMD ["/bin/bash"]' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --message "debootstrap --variant=minbase $SUITE ($MIRROR), by resources/docker/debian-base.sh" \
    - "$TAG" >/dev/null
say "built $TAG in $(($(date +%s) - start)) s ($(docker image inspect -f '{{.Size}}' "$TAG" | awk '{printf "%.0f MB", $1/1e6}'))"

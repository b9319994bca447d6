#!/bin/sh
# Fetches a stock Debian kernel (bzImage) and builds a tiny busybox initramfs whose /init prints
# "TANDEM-LINUX-READY cpus=<n>" on the console and powers the machine off.
#
# Usage: fetch-debian-kernel.sh CACHE_DIR
# Writes CACHE_DIR/vmlinuz and CACHE_DIR/initramfs.cpio.gz; does nothing if both exist.
# Needs a Debian host: apt-get download (no root needed for that), dpkg-deb, cpio, gzip.
# If cpio is missing it is installed with apt-get (which needs root).
set -eu

if [ $# -ne 1 ]; then
    echo "usage: $0 CACHE_DIR" >&2
    exit 2
fi
cache=$1
mkdir -p "$cache"
cache=$(cd "$cache" && pwd)

if [ -s "$cache/vmlinuz" ] && [ -s "$cache/initramfs.cpio.gz" ]; then
    echo "fetch-debian-kernel: already in $cache"
    exit 0
fi

if ! command -v cpio >/dev/null 2>&1; then
    echo "fetch-debian-kernel: cpio missing, installing it with apt-get" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y cpio >&2
fi

work=$(mktemp -d "$cache/.work.XXXXXX")
trap 'rm -rf "$work"' EXIT INT TERM
cd "$work"

# The metapackages name the current kernel package; prefer the small cloud flavour.
kpkg=""
for meta in linux-image-cloud-amd64 linux-image-amd64; do
    kpkg=$(apt-cache depends "$meta" 2>/dev/null |
        awk '/Depends: linux-image-[0-9]/ { print $2; exit }')
    [ -n "$kpkg" ] && break
done
if [ -z "$kpkg" ]; then
    echo "fetch-debian-kernel: no linux-image-*-amd64 package known to apt (run apt-get update?)" >&2
    exit 1
fi
echo "fetch-debian-kernel: downloading $kpkg and busybox-static"
# (As root, apt warns that it downloads "unsandboxed": harmless here.)
apt-get download "$kpkg" busybox-static >/dev/null

dpkg-deb -x "$(ls "$kpkg"_*.deb)" kernel
dpkg-deb -x "$(ls busybox-static_*.deb)" busybox

# The initramfs: busybox plus an /init that only needs busybox applets.
mkdir -p root/bin root/proc root/sys root/dev
cp busybox/bin/busybox root/bin/busybox
cat > root/init <<'INIT'
#!/bin/busybox sh
# PID 1 of the Tandem Linux smoke test. There is no /dev/console node in the archive, so mount
# devtmpfs first and send all output to the console from there.
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev
exec >/dev/console 2>&1
echo "TANDEM-LINUX-READY cpus=$(/bin/busybox nproc)"
/bin/busybox poweroff -f
INIT
chmod 0755 root/init root/bin/busybox
(cd root && find . | LC_ALL=C sort | cpio --quiet -o -H newc --owner=0:0) | gzip -9 > initramfs.cpio.gz

cp "$(ls kernel/boot/vmlinuz-*)" vmlinuz
# Move into place last, so that an interrupted run is never mistaken for a finished one.
mv initramfs.cpio.gz "$cache/initramfs.cpio.gz"
mv vmlinuz "$cache/vmlinuz"
echo "$kpkg" > "$cache/kernel-package"
echo "fetch-debian-kernel: $cache/vmlinuz ($kpkg) and $cache/initramfs.cpio.gz"

#!/usr/bin/env bash
# Builds Tandem's container image (the Dockerfile at the repository root) as tandem:dev.
#
#   resources/docker/build.sh [--tag TAG] [--prebuilt DIR] [--no-vendor] [--iidfile FILE]
#
# Where a registry is reachable this is `docker build` on debian:bookworm-slim with rust:1.95 as
# the build stage. Where it is not (our CI), each image that cannot be pulled is built from Debian's
# packages instead, and reused on later runs:
#   the runtime base   -> tandem-base:bookworm   (debian-base.sh: debootstrap + docker import)
#   the build toolchain -> tandem-rust:bookworm  (rust.Dockerfile: Debian's rustc-web/cargo-web)
# The build stage's crates come from the host's cargo (`cargo vendor` into the build context), so
# it needs no network; without cargo here, or with --no-vendor, it fetches them from crates.io.
#
#   --prebuilt DIR   take tandem and tandem-remote from DIR (e.g. target/release) instead of
#                    compiling them in the build stage: no toolchain image, no second build. The
#                    binaries must run on Debian 12 (glibc 2.36); the image checks that they start.
#   --no-vendor      let the build stage fetch crates from crates.io itself
#   --tag TAG        default tandem:dev
#   --iidfile FILE   write the image ID there (tests run the ID, not a tag another build may move)
# BASE_IMAGE and RUST_IMAGE override the images tried first; PULL_TIMEOUT (s) bounds each pull.
set -euo pipefail

tag=tandem:dev
prebuilt=
iidfile=
vendor=1
while [ $# -gt 0 ]; do
    case "$1" in
        --tag) tag=$2; shift 2 ;;
        --prebuilt) prebuilt=$(realpath -m "$2"); shift 2 ;;
        --iidfile) iidfile=$(realpath -m "$2"); shift 2 ;;
        --no-vendor) vendor=0; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "build.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
cd "$(dirname "$0")/../.."
here=resources/docker
BASE_IMAGE=${BASE_IMAGE:-debian:bookworm-slim}
RUST_IMAGE=${RUST_IMAGE:-rust:1.95-slim-bookworm}
PULL_TIMEOUT=${PULL_TIMEOUT:-120}
LOCAL_BASE=tandem-base:bookworm
LOCAL_RUST=tandem-rust:bookworm

say() { printf 'build.sh: %s\n' "$*" >&2; }
loud() { printf '\n*** build.sh: %s ***\n\n' "$*" >&2; }
die() { say "$*"; exit 1; }

docker info >/dev/null 2>&1 ||
    die "no Docker engine answers (as root, resources/docker/engine.sh installs and starts one)"

# One build at a time on this machine: the tests build in parallel processes, and the fallback
# images are shared.
exec 9>/tmp/tandem-docker-build.lock
flock 9

# Prints the image to use for $1: itself when present or pullable, else nothing.
obtain() {
    if docker image inspect "$1" >/dev/null 2>&1; then
        echo "$1"
    elif timeout "$PULL_TIMEOUT" docker pull -q "$1" >/dev/null 2>&1; then
        say "pulled $1"
        echo "$1"
    fi
}

start=$(date +%s)
base=$(obtain "$BASE_IMAGE")
if [ -z "$base" ]; then
    loud "cannot pull $BASE_IMAGE (no container registry?): using $LOCAL_BASE, built from Debian packages (debootstrap bookworm + docker import)"
    bash "$here/debian-base.sh" "$LOCAL_BASE"
    base=$LOCAL_BASE
fi

args=(--build-arg "BASE_IMAGE=$base")
# What this script puts into the build context for one build (neither is in git).
stage=.docker-prebuilt
vendored=.docker-vendor
rm -rf "$stage" "$vendored"
trap 'rm -rf "$stage" "$vendored"' EXIT
if [ -n "$prebuilt" ]; then
    for b in tandem tandem-remote; do
        [ -x "$prebuilt/$b" ] || die "--prebuilt $prebuilt: no executable $b there (cargo build first)"
    done
    # The build context excludes target/ (.dockerignore): stage the two binaries inside it.
    mkdir "$stage"
    cp "$prebuilt/tandem" "$prebuilt/tandem-remote" "$stage/"
    args+=(--build-arg "RUST_IMAGE=$base" --build-arg "PREBUILT=$stage")
    say "binaries from $prebuilt (no compile in the image)"
else
    rust=$(obtain "$RUST_IMAGE")
    if [ -z "$rust" ]; then
        loud "cannot pull $RUST_IMAGE: compiling with Debian's rustc-web in $LOCAL_RUST (built from $base)"
        if ! docker image inspect "$LOCAL_RUST" >/dev/null 2>&1; then
            docker build -q -f "$here/rust.Dockerfile" --build-arg "BASE_IMAGE=$base" \
                -t "$LOCAL_RUST" "$here" >/dev/null
        fi
        rust=$LOCAL_RUST
        say "toolchain: $(docker run --rm "$rust" rustc --version)"
    fi
    args+=(--build-arg "RUST_IMAGE=$rust")
    if [ "$vendor" = 1 ] && command -v cargo >/dev/null 2>&1; then
        # The workspace's crates and the built-in guest's (its own workspace, built by vmm's
        # build script).
        cargo vendor --locked --quiet -s resources/guest/Cargo.toml "$vendored" >/dev/null
        say "crates vendored from this host's cargo ($(du -sh "$vendored" | cut -f1))"
    else
        say "the build stage fetches crates from crates.io"
    fi
fi
[ -z "$iidfile" ] || args+=(--iidfile "$iidfile")

say "docker build -t $tag (${args[*]})"
docker build --force-rm "${args[@]}" -t "$tag" . >&2
if [ -n "$prebuilt" ]; then
    # Earlier --prebuilt builds leave untagged images (their build stages, replaced images)
    # holding old copies of the binaries; images a container still uses stay.
    docker image prune -f --filter label=org.tandem.stage=build >/dev/null
    docker image prune -f --filter label=org.opencontainers.image.title=tandem >/dev/null
fi
size=$(docker image inspect -f '{{.Size}}' "$tag" | awk '{printf "%.0f MB", $1/1e6}')
say "built $tag ($size) in $(($(date +%s) - start)) s"

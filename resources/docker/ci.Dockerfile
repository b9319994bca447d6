# Builds Tandem and runs its whole test suite (the same `.ci/run` as CI) in a container. The
# product image (tandem, tandem-remote, the scripts) is the Dockerfile at the repository root.
#
#   docker build -f resources/docker/ci.Dockerfile -t tandem-ci .
#   docker run --rm --device /dev/kvm --device /dev/net/tun --privileged tandem-ci
#
# --privileged is needed for the test network (namespaces, veth, bridges, taps, tc) and KVM.
# .ci/run declares KVM, namespaces and taps required (TANDEM_REQUIRE), so without them the tests
# that need them fail; `-e TANDEM_REQUIRE=` lets them skip instead (listed in the skip report).
# Needs a registry for this toolchain image (rustup for rustfmt and clippy) and crates.io.
FROM rust:1.95-bookworm

RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        iproute2 cpio ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && rustup component add rustfmt clippy \
 && cargo install --locked cargo-nextest

WORKDIR /src
COPY . .
# Fetch and build ahead of time so that `docker run` only runs the tests.
RUN cargo build --workspace --all-targets --locked

CMD ["bash", ".ci/run"]

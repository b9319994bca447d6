# The build stage's toolchain where rust:*-bookworm cannot be pulled (build.sh uses it then): Debian's
# own Rust, rustc-web/cargo-web (1.96 from bookworm-security, 1.85 in bookworm itself; the workspace's
# dependencies need 1.85), on the debootstrapped base. Built once and reused as tandem-rust:bookworm.
ARG BASE_IMAGE=tandem-base:bookworm
FROM ${BASE_IMAGE}
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        rustc-web cargo-web gcc libc6-dev ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && rustc --version && cargo --version

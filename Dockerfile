# Tandem's container image: `tandem` (the built-in guest is inside it), `tandem-remote` and the
# operator scripts on a slim Debian. Guests need the host's KVM: run it with --device /dev/kvm.
#
#   resources/docker/build.sh            # builds tandem:dev, also where no registry is reachable
#   docker build -t tandem:dev .          # the same where Docker Hub is reachable
#   docker run --rm --device /dev/kvm -v /run/tandem:/run/tandem tandem:dev   # API on /run/tandem/tandem.sock
#
# The test suite's image (cargo, the whole `.ci/run`) is resources/docker/ci.Dockerfile.

# The runtime's base and the build stage's toolchain. build.sh points them at images it builds from
# Debian's packages when these cannot be pulled (debian-base.sh, rust.Dockerfile).
ARG BASE_IMAGE=debian:bookworm-slim
ARG RUST_IMAGE=rust:1.95-slim-bookworm

# Build stage: compiles `tandem` (its build script builds the built-in guest and embeds it) and
# `tandem-remote`, with the crates in .docker-vendor/ when build.sh put them there (`cargo vendor`
# on the host: no network needed here), else from crates.io. PREBUILT=DIR instead takes the
# binaries from DIR in the build context (build.sh --prebuilt: a checkout's own build, so the
# tests need no second compile and no toolchain image).
FROM ${RUST_IMAGE} AS build
# build.sh --prebuilt removes old untagged stages by this label (copies of binaries, no cache
# worth keeping).
LABEL org.tandem.stage=build
ARG PREBUILT=
WORKDIR /src
COPY . .
RUN set -eu; \
    if [ -n "$PREBUILT" ]; then \
        install -D -m 0755 -t /out "$PREBUILT/tandem" "$PREBUILT/tandem-remote"; \
    else \
        if [ -d .docker-vendor ]; then \
            mkdir -p .cargo; \
            printf '%s\n' '[source.crates-io]' 'replace-with = "vendored"' \
                '[source.vendored]' 'directory = "/src/.docker-vendor"' >.cargo/config.toml; \
        fi; \
        cargo build --release --locked --bin tandem --bin tandem-remote; \
        install -D -m 0755 -t /out target/release/tandem target/release/tandem-remote; \
    fi

# Runtime: glibc (the binaries are dynamically linked against Debian 12's), curl and jq for the
# scripts, iproute2 to set up taps. A base that already has them (debian-base.sh) installs nothing.
FROM ${BASE_IMAGE} AS runtime
LABEL org.opencontainers.image.title="tandem" \
      org.opencontainers.image.description="Tandem VMM (fault-tolerant VMs on KVM): tandem, tandem-remote and the operator scripts"
RUN set -eu; need=""; \
    for t in curl:curl jq:jq ip:iproute2; do \
        command -v "${t%%:*}" >/dev/null 2>&1 || need="$need ${t#*:}"; \
    done; \
    if [ -n "$need" ]; then \
        apt-get update; \
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ca-certificates $need; \
        rm -rf /var/lib/apt/lists/*; \
    fi
COPY --from=build /out/ /usr/local/bin/
COPY resources/curl/ /usr/share/tandem/resources/curl/
COPY resources/quickstart.sh /usr/share/tandem/resources/
# The scripts use these binaries instead of building them; TANDEM_SOCKET is the curl scripts' VMM.
ENV TANDEM_BIN_DIR=/usr/local/bin \
    TANDEM_SOCKET=/run/tandem/tandem.sock
RUN mkdir -p /run/tandem && tandem --version && tandem-remote --help >/dev/null
WORKDIR /run/tandem
ENTRYPOINT ["tandem"]
CMD ["--api-socket", "/run/tandem/tandem.sock"]

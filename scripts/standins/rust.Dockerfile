# Stand-in for `rust:<version>-slim-trixie` (the Dockerfile's builder), built by
# scripts/docker-standins.sh on BASE, a Debian trixie minbase root filesystem. rustup's toolchain
# lives where the official image keeps it (/usr/local/cargo, /usr/local/rustup: the Dockerfile's
# cache mounts name those paths); gcc and libc headers link the binary and build ring.
ARG BASE
FROM ${BASE}
ARG RUST_VERSION
ENV RUSTUP_HOME=/usr/local/rustup CARGO_HOME=/usr/local/cargo PATH=/usr/local/cargo/bin:$PATH
# The toolchain and the crates come over HTTPS from wherever this machine reaches them: trust
# exactly what the machine trusts (it may sit behind a TLS-inspecting proxy).
COPY ca-certificates.crt /tmp/host-ca-certificates.crt
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/* \
    && mv /tmp/host-ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
RUN set -eu; \
    dist="https://static.rust-lang.org/rustup/dist/$(uname -m)-unknown-linux-gnu"; \
    curl --proto '=https' -fsSo /tmp/rustup-init "$dist/rustup-init"; \
    test "$(curl --proto '=https' -fsS "$dist/rustup-init.sha256" | cut -d' ' -f1)" \
        = "$(sha256sum /tmp/rustup-init | cut -d' ' -f1)"; \
    chmod +x /tmp/rustup-init; \
    /tmp/rustup-init -y --no-modify-path --profile minimal --default-toolchain "${RUST_VERSION}"; \
    rm /tmp/rustup-init; \
    rustc --version; cargo --version

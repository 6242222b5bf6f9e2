# Stand-in for `python:3.12-slim` (the demo upstream needs only the standard library), built by
# scripts/docker-standins.sh on BASE, a Debian trixie minbase root filesystem: Debian's Python 3,
# also as `python` like the official image.
ARG BASE
FROM ${BASE}
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python-is-python3 \
    && rm -rf /var/lib/apt/lists/* \
    && python --version
CMD ["python3"]

# invalidatord container image.
#
# Run it with three mounts:
#   /etc/invalidatord/config.yaml  the config file (read-only)
#   /srv/www                       the document root to watch, read-only, shared with the web server
#                                  (point the config's filesystem source `root:` here)
#   /var/lib/invalidatord          state_dir: the journal; a named volume, writable by uid 10001
# and AWS credentials from the environment or an instance/pod role. The metrics and health
# endpoint listens where `metrics.listen` says: set it to 0.0.0.0:9464 to scrape it from outside
# the container; the HEALTHCHECK below asks 127.0.0.1:9464 (override INVALIDATORD_HEALTH_URL).
#
#   docker build --build-arg COMMIT=$(git rev-parse HEAD) -t invalidatord .
#   docker run -d --read-only \
#     -v ./config.yaml:/etc/invalidatord/config.yaml:ro -v www:/srv/www:ro \
#     -v invalidatord-state:/var/lib/invalidatord invalidatord
#
# BASE may be any Debian-like image with python3 (3.11+) and its venv module: the official
# python:3.11-slim-bookworm (interpreter in /usr/local/bin) or a Debian bookworm base with the
# python3 and python3-venv packages (interpreter in /usr/bin), as scripts/build-image.sh
# bootstraps where no registry is reachable. Both stages use the same BASE, so the venv's
# interpreter symlink resolves in the final stage too.
ARG BASE=python:3.11-slim-bookworm

FROM ${BASE} AS builder
# Only wheels are installed (every dependency ships manylinux wheels), so the builder needs no
# compiler either; it exists to keep pip's build tools and caches out of the final image.
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
RUN python3 -m venv /opt/invalidatord
COPY . /src
# pip compiles the .pyc files here, so a read-only root filesystem later costs nothing.
RUN /opt/invalidatord/bin/pip install --no-cache-dir --only-binary=:all: \
        --no-binary=invalidatord /src \
    && /opt/invalidatord/bin/invalidatord --help >/dev/null

FROM ${BASE}
ARG UID=10001
LABEL org.opencontainers.image.title="invalidatord" \
      org.opencontainers.image.description="Keeps Amazon CloudFront caches fresh: watches origins, batches changes, invalidates without losing one." \
      org.opencontainers.image.licenses="Apache-2.0"
# A fixed numeric uid so Kubernetes' runAsNonRoot can verify it and volume ownership is stable.
RUN groupadd --system --gid "${UID}" invalidatord \
    && useradd --system --uid "${UID}" --gid invalidatord --no-create-home \
        --home-dir /var/lib/invalidatord --shell /usr/sbin/nologin invalidatord \
    && install -d -o "${UID}" -g "${UID}" -m 0750 /var/lib/invalidatord \
    && install -d -m 0755 /etc/invalidatord /srv/www
COPY --from=builder /opt/invalidatord /opt/invalidatord
# The git commit the image is built from (`--build-arg COMMIT=$(git rev-parse HEAD)`): the
# image has no .git, so this is where invalidatord_build_info{commit} reads it from; without
# it the label says "unknown". Declared after the COPY so a new commit rebuilds only the
# layers below.
ARG COMMIT=""
LABEL org.opencontainers.image.revision="${COMMIT}"
ENV INVALIDATORD_COMMIT=${COMMIT} \
    PATH=/opt/invalidatord/bin:${PATH} \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    INVALIDATORD_CONFIG=/etc/invalidatord/config.yaml \
    INVALIDATORD_HEALTH_URL=http://127.0.0.1:9464/livez
VOLUME /var/lib/invalidatord
WORKDIR /var/lib/invalidatord
USER ${UID}:${UID}
EXPOSE 9464
# No curl in the image: the interpreter is already here. 200 = healthy; 503, a refused
# connection or a timeout = unhealthy. start-period covers the first catch-up scan.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python3", "-c", "import os, sys, urllib.request as r\ntry:\n    sys.exit(0 if r.urlopen(os.environ['INVALIDATORD_HEALTH_URL'], timeout=4).status == 200 else 1)\nexcept Exception as e:\n    sys.exit(f'unhealthy: {e}')"]
ENTRYPOINT ["invalidatord"]
CMD ["run"]

#!/usr/bin/env bash
# Build the invalidatord container image with buildah and smoke-test it, without a Docker engine
# and, when no base image can be pulled, without a registry: bootstrap a Debian bookworm base with debootstrap from the apt mirror this machine
# already uses, import it with podman, build the Dockerfile against it, then run checks inside
# the image with `buildah run` (podman run needs rlimits some sandboxes refuse).
#
# Usage: sudo scripts/build-image.sh            (from anywhere; builds this checkout)
# Environment:
#   BASE=IMAGE        build on this base and skip the pull/bootstrap logic
#   IMAGE=NAME        tag of the result (default localhost/invalidatord:test)
#   WORK_DIR=DIR      scratch space for the bootstrap and the smoke test (default: mktemp)
#   SKIP_DAEMON_SMOKE=1  skip running the daemon inside the image against a local moto server
#   KEEP_IMAGE=0      remove the built image at the end
# Exit status: 0 when every check passed, 1 otherwise.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
IMAGE=${IMAGE:-localhost/invalidatord:test}
PUBLIC_BASE=docker.io/library/python:3.11-slim-bookworm
LOCAL_BASE=localhost/debian-py:bookworm
STORAGE=(--storage-driver vfs)   # overlay needs kernel support a nested sandbox may not give
WORK_DIR=${WORK_DIR:-$(mktemp -d /var/tmp/invalidatord-image.XXXXXX)}
EXPECTED_UID=10001

declare -a RESULTS=()
FAILED=0
CTR=""

say() { printf '==> %s\n' "$*" >&2; }
pass() { RESULTS+=("PASS  $*"); say "PASS: $*"; }
fail() { RESULTS+=("FAIL  $*"); say "FAIL: $*"; FAILED=1; }
skip() { RESULTS+=("SKIP  $*"); say "SKIP: $*"; }

summary() {
    local status=$?
    [[ -n "$CTR" ]] && buildah "${STORAGE[@]}" rm "$CTR" >/dev/null 2>&1 || true
    [[ -n "${MOTO_PID:-}" ]] && kill "$MOTO_PID" 2>/dev/null || true
    echo
    echo "================ build-image summary ================"
    echo "image:   $IMAGE"
    echo "base:    ${BASE:-<none>}"
    local line
    for line in "${RESULTS[@]}"; do echo "$line"; done
    if [[ $status -ne 0 && $FAILED -eq 0 ]]; then
        echo "FAIL  the script stopped early (exit $status); see the log above"
        FAILED=1
    fi
    if [[ $FAILED -eq 0 ]]; then echo "RESULT: all checks passed"; else echo "RESULT: FAILED"; fi
    if [[ "${KEEP_IMAGE:-1}" == 0 ]]; then
        buildah "${STORAGE[@]}" rmi "$IMAGE" >/dev/null 2>&1 || true
    fi
    rm -rf "$WORK_DIR"
    exit "$FAILED"
}
trap summary EXIT

# ---------------------------------------------------------------------------------------------
# 1. Tools
if [[ $(id -u) -ne 0 ]]; then
    fail "must run as root (debootstrap and vfs container storage need it)"
    exit 1
fi
missing=()
for tool in buildah podman debootstrap; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
if ((${#missing[@]})); then
    say "installing ${missing[*]} with apt"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" uidmap fuse-overlayfs >/dev/null
fi
pass "tools: $(buildah --version | head -1); $(podman --version); debootstrap $(dpkg-query -W -f '${Version}' debootstrap)"

# ---------------------------------------------------------------------------------------------
# 2. Base image: $BASE, else a bootstrapped base from an earlier run, else the public image,
#    else bootstrap one now.
image_exists() { buildah "${STORAGE[@]}" inspect --type image "$1" >/dev/null 2>&1; }

apt_mirror() {
    # The URL apt uses for bookworm/main, whichever sources format configured it.
    local url
    url=$(apt-cache policy 2>/dev/null | awk '$3 == "bookworm/main" { print $2; exit }')
    if [[ -z "$url" ]]; then
        url=$(grep -hsE '^(deb |URIs:)' /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
              /etc/apt/sources.list.d/*.sources | grep -v security \
              | grep -oE 'https?://[^ ]+' | head -1 || true)
    fi
    echo "${url:-http://deb.debian.org/debian}"
}

bootstrap_base() {
    local rootfs="$WORK_DIR/rootfs" mirror
    mirror=$(apt_mirror)
    say "bootstrapping Debian bookworm from $mirror (about a minute)"
    # ca-certificates: the official python image has it, and TLS to AWS should not depend on
    # the bundle a Python package happens to vendor.
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        bookworm "$rootfs" "$mirror" >"$WORK_DIR/debootstrap.log" 2>&1 \
        || { tail -20 "$WORK_DIR/debootstrap.log" >&2; return 1; }
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -c . | podman "${STORAGE[@]}" import -q - "$LOCAL_BASE" >/dev/null
    rm -rf "$rootfs"
}

if [[ -n "${BASE:-}" ]]; then
    pass "base: $BASE (given)"
elif image_exists "$LOCAL_BASE"; then
    BASE=$LOCAL_BASE
    pass "base: $BASE (bootstrapped earlier, reused)"
elif timeout 60 buildah "${STORAGE[@]}" pull -q "$PUBLIC_BASE" >/dev/null 2>&1; then
    BASE=$PUBLIC_BASE
    pass "base: $BASE (pulled)"
else
    say "cannot pull $PUBLIC_BASE; bootstrapping a base instead"
    if bootstrap_base; then
        BASE=$LOCAL_BASE
        pass "base: $BASE (bootstrapped from $(apt_mirror))"
    else
        fail "base: debootstrap failed (log above)"
        exit 1
    fi
fi

# ---------------------------------------------------------------------------------------------
# 3. Build. --format docker: the OCI format has no HEALTHCHECK, buildah would drop it.
# Behind a TLS-intercepting proxy pip inside the build must trust the same CA as pip here: lend
# it the bundle and a pip.conf naming it through a build-time mount. The mount covers /root,
# which every base already has: a new mount point would leave an empty file in the image.
BUILD_MOUNTS=()
ca_bundle=${BUILD_CA_BUNDLE:-${PIP_CERT:-}}
if [[ -n "$ca_bundle" && -f "$ca_bundle" ]]; then
    mkdir -p "$WORK_DIR/build-home/.config/pip"
    cp "$ca_bundle" "$WORK_DIR/build-home/build-ca-bundle.crt"
    printf '[global]\ncert = /root/build-ca-bundle.crt\n' \
        >"$WORK_DIR/build-home/.config/pip/pip.conf"
    BUILD_MOUNTS=(-v "$WORK_DIR/build-home:/root:ro")
    say "pip in the build trusts $ca_bundle (build-time mount only)"
fi
# invalidatord_build_info{commit} in the image: it has no .git to read the commit from
COMMIT=$(git -C "$REPO" rev-parse HEAD 2>/dev/null || true)
say "building $IMAGE on $BASE (commit ${COMMIT:-unknown})"
previous=$(buildah "${STORAGE[@]}" images -q --no-trunc "$IMAGE" 2>/dev/null || true)
if buildah "${STORAGE[@]}" bud --isolation chroot --format docker --build-arg "BASE=$BASE" \
    --build-arg "COMMIT=$COMMIT" "${BUILD_MOUNTS[@]}" -t "$IMAGE" -f "$REPO/Dockerfile" "$REPO" >"$WORK_DIR/build.log" 2>&1
then
    pass "build: buildah bud"
    # The image this build replaced under the same tag is now unnamed: drop it, not the disk.
    current=$(buildah "${STORAGE[@]}" images -q --no-trunc "$IMAGE")
    if [[ -n "$previous" && "$previous" != "$current" ]]; then
        buildah "${STORAGE[@]}" rmi "$previous" >/dev/null 2>&1 || true
    fi
else
    tail -40 "$WORK_DIR/build.log" >&2
    fail "build: buildah bud failed (last lines above)"
    exit 1
fi

# ---------------------------------------------------------------------------------------------
# 4. Smoke tests inside the image, as the image's USER.
CTR=$(buildah "${STORAGE[@]}" from -q "$IMAGE")
inside() { buildah "${STORAGE[@]}" run --isolation chroot "$@"; }

if out=$(inside "$CTR" -- invalidatord --help 2>&1); then
    pass "invalidatord --help exits 0"
else
    echo "$out" >&2
    fail "invalidatord --help"
fi

uid=$(inside "$CTR" -- python3 -c 'import os; print(os.getuid(), os.getgid())' 2>&1 || true)
if [[ "$uid" == "$EXPECTED_UID $EXPECTED_UID" ]]; then
    pass "runs as uid:gid $EXPECTED_UID:$EXPECTED_UID (non-root)"
else
    fail "runs as uid:gid '$uid', expected $EXPECTED_UID:$EXPECTED_UID"
fi

compilers=$(inside "$CTR" -- python3 -c '
import os, re
pattern = re.compile(r"^([\w.-]+-)?(gcc|g\+\+|cc|c\+\+|clang|clang\+\+|tcc)(-[\d.]+)?$")
found = sorted({n for d in os.environ["PATH"].split(":") + ["/usr/bin", "/usr/local/bin"]
                if os.path.isdir(d) for n in os.listdir(d) if pattern.match(n)})
print(" ".join(found))' 2>&1 || echo "check failed")
if [[ -z "$compilers" ]]; then
    pass "no C compiler in the image"
else
    fail "compilers in the image: $compilers"
fi

# Looked at from outside: the image's user cannot see into /root.
rootfs=$(buildah "${STORAGE[@]}" mount "$CTR")
leaked=""
for path in root/.config root/build-ca-bundle.crt src etc/pip.conf; do
    [[ -e "$rootfs/$path" ]] && leaked+=" /$path"
done
buildah "${STORAGE[@]}" umount "$CTR" >/dev/null
if [[ -z "$leaked" ]]; then
    pass "no build-time mounts or sources left in the image"
else
    fail "left in the image: $leaked"
fi

# buildah 1.28's --format templates have no json function: read the config with Python.
PY=${PYTHON:-$REPO/.venv/bin/python}
[[ -x "$PY" ]] || PY=python3
image_config() {   # $1 = a Python expression over `c`, the image's Docker config
    buildah "${STORAGE[@]}" inspect --type image "$IMAGE" \
        | "$PY" -c "import json, shlex, sys; c = json.load(sys.stdin)['Docker']['config']; print($1)"
}
healthcheck=$(image_config 'json.dumps((c.get("Healthcheck") or {}).get("Test"))')
if [[ "$healthcheck" == '["CMD", "python3", '* ]]; then
    pass "HEALTHCHECK kept in the image config"
else
    fail "HEALTHCHECK missing from the image config: $healthcheck"
fi
entry=$(image_config '" ".join([json.dumps(c["Entrypoint"]), json.dumps(c["Cmd"]), c["User"]])')
if [[ "$entry" == '["invalidatord"] ["run"] 10001:10001' ]]; then
    pass "ENTRYPOINT/CMD/USER: $entry"
else
    fail "ENTRYPOINT/CMD/USER are '$entry'"
fi

# /var/lib/invalidatord is not bind-mounted from here: buildah 1.28 (chroot isolation) races its
# own mount for the image's VOLUME against a -v on the same path, and either may win. The
# daemon writes into the VOLUME, which starts as a copy of the image's directory, as a fresh
# Docker named volume does: so its ownership is what must be right.
state_owner=$(inside "$CTR" -- python3 -c '
import os, stat
st = os.stat("/var/lib/invalidatord")
print(st.st_uid, st.st_gid, oct(stat.S_IMODE(st.st_mode)))' 2>&1 || true)
if [[ "$state_owner" == "$EXPECTED_UID $EXPECTED_UID 0o750" ]]; then
    pass "/var/lib/invalidatord is owned by the image user (0750)"
else
    fail "/var/lib/invalidatord ownership is '$state_owner'"
fi

# A config mounted the way the docs say, with the document root mounted read-only at /srv/www.
mkdir -p "$WORK_DIR/etc" "$WORK_DIR/www/docs"
echo '<h1>smoke</h1>' >"$WORK_DIR/www/index.html"
echo 'docs' >"$WORK_DIR/www/docs/index.html"
chmod 0777 "$WORK_DIR/www"   # so only the :ro mount can be what stops a write below
write_config() {   # $1 = CloudFront endpoint
    cat >"$WORK_DIR/etc/config.yaml" <<EOF
state_dir: /var/lib/invalidatord
aws:
  region: us-east-1
  endpoint_url: $1
distributions:
  www:
    id: ${DIST_ID:-E2EXAMPLE12345}
sources:
  - name: docroot
    type: filesystem
    root: /srv/www
rules:
  - match: "**/index.html"
    urls: ["/{dir}/", "/{path}"]
  - match: "**"
    urls: ["/{path}"]
metrics:
  listen: 127.0.0.1:${METRICS_PORT:-9464}
log:
  format: json
EOF
}
write_config "http://127.0.0.1:1"
MOUNTS=(-v "$WORK_DIR/etc/config.yaml:/etc/invalidatord/config.yaml:ro"
        -v "$WORK_DIR/www:/srv/www:ro")
if out=$(inside "${MOUNTS[@]}" "$CTR" -- invalidatord check -c /etc/invalidatord/config.yaml 2>&1)
then
    pass "invalidatord check -c <mounted config> exits 0"
else
    echo "$out" >&2
    fail "invalidatord check -c <mounted config> exited non-zero"
fi
if inside "${MOUNTS[@]}" "$CTR" -- sh -c 'echo x > /srv/www/probe' 2>/dev/null; then
    fail "the document root mount is writable inside the container"
else
    pass "the document root is read-only inside the container"
fi

# The daemon itself, inside the image, against a moto CloudFront on the host's loopback (chroot
# isolation shares the host network): READY via /healthz, checked with the image's own
# HEALTHCHECK command, then a clean SIGTERM stop.
if [[ "${SKIP_DAEMON_SMOKE:-0}" == 1 ]]; then
    skip "daemon run inside the image (SKIP_DAEMON_SMOKE=1)"
elif ! "$PY" -c 'import moto.server, boto3' 2>/dev/null; then
    skip "daemon run inside the image: $PY has no moto (pip install -e '.[demo]')"
else
    read -r MOTO_PORT METRICS_PORT < <("$PY" -c '
import socket
s = [socket.socket() for _ in range(2)]
for x in s: x.bind(("127.0.0.1", 0))
print(*(x.getsockname()[1] for x in s))')
    "$PY" -m moto.server -H 127.0.0.1 -p "$MOTO_PORT" >"$WORK_DIR/moto.log" 2>&1 &
    MOTO_PID=$!
    DIST_ID=$(AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing "$PY" -c '
import sys, time, boto3
cf = boto3.client("cloudfront", region_name="us-east-1", endpoint_url=sys.argv[1])
for _ in range(100):
    try:
        cf.list_distributions(); break
    except Exception:
        time.sleep(0.1)
origin = {"Id": "o", "DomainName": "origin.example.com",
          "CustomOriginConfig": {"HTTPPort": 80, "HTTPSPort": 443,
                                 "OriginProtocolPolicy": "http-only"}}
d = cf.create_distribution(DistributionConfig={
    "CallerReference": "smoke", "Comment": "smoke", "Enabled": True,
    "Origins": {"Quantity": 1, "Items": [origin]},
    "DefaultCacheBehavior": {"TargetOriginId": "o", "ViewerProtocolPolicy": "allow-all",
                             "MinTTL": 0}})
print(d["Distribution"]["Id"])' "http://127.0.0.1:$MOTO_PORT")
    write_config "http://127.0.0.1:$MOTO_PORT"
    health_cmd=$(image_config 'shlex.join(c["Healthcheck"]["Test"][1:])')
    cat >"$WORK_DIR/etc/daemon-smoke.sh" <<EOF
#!/bin/sh
# Runs inside the container: start the daemon, wait until the HEALTHCHECK passes, stop it.
export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing
export INVALIDATORD_HEALTH_URL=http://127.0.0.1:$METRICS_PORT/healthz
invalidatord run -c /etc/invalidatord/config.yaml >/tmp/daemon.log 2>&1 &
pid=\$!
i=0
until $health_cmd >/dev/null 2>&1; do
    i=\$((i + 1))
    if [ \$i -ge 300 ] || ! kill -0 \$pid 2>/dev/null; then
        tail -20 /tmp/daemon.log; echo "never healthy"; kill -TERM \$pid 2>/dev/null; exit 10
    fi
    sleep 0.1
done
echo healthy
kill -TERM \$pid
wait \$pid
rc=\$?
[ \$rc -eq 0 ] || { tail -20 /tmp/daemon.log; echo "exit \$rc"; exit \$rc; }
files=\$(find /var/lib/invalidatord -mindepth 1 -maxdepth 1 -user "\$(id -u)" -printf '%f ')
[ -n "\$files" ] || { echo "nothing written to the state volume"; exit 11; }
echo "state: \$files"
EOF
    chmod 0755 "$WORK_DIR/etc/daemon-smoke.sh"
    if out=$(inside -v "$WORK_DIR/etc:/etc/invalidatord:ro" -v "$WORK_DIR/www:/srv/www:ro" \
        "$CTR" -- /etc/invalidatord/daemon-smoke.sh 2>&1); then
        pass "daemon in the image: healthy per its HEALTHCHECK, clean exit on SIGTERM," \
            "$(echo "$out" | tail -1)"
    else
        echo "$out" >&2
        fail "daemon in the image: $(echo "$out" | tail -1)"
    fi
fi

# ---------------------------------------------------------------------------------------------
# 5. Size
size=$(buildah "${STORAGE[@]}" images --format '{{.Size}}' "$IMAGE" | head -1)
base_size=$(buildah "${STORAGE[@]}" images --format '{{.Size}}' "$BASE" | head -1)
pass "image size $size (base $base_size)"

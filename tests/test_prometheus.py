"""The daemon's metrics as Prometheus sees them, and the shipped dashboard and alerts.

- A real Prometheus (Debian's `prometheus` package) on 127.0.0.1 scrapes a real daemon; a
  metric is read back through Prometheus's HTTP API, the alerting rules are loaded by it, and
  every dashboard and alert expression is evaluated by it.
- `promtool check rules` accepts deploy/alerts.yml and `promtool test rules` proves each alert
  fires when it should and not otherwise.
- Every `invalidatord_*` name the dashboard and the alerts use is a family the daemon exports.

Without the binaries the tests that need them skip, saying which is missing.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from invalidatord.metrics import FAMILIES
from invalidatord.testing.cloudfront import CloudFrontEmulator
from tests.harness import DaemonProcess, emulator_config, running_daemon
from tests.waiting import wait_for

REPO = Path(__file__).resolve().parents[1]
ALERTS = REPO / "deploy" / "alerts.yml"
DASHBOARD = REPO / "deploy" / "grafana-dashboard.json"

#: Dashboard variables, as "All" selects them, and Grafana's rate interval.
_VARIABLES = {"$__rate_interval": "1m", "$job": ".*", "$instance": ".*"}
_VARIABLES |= {"$distribution": ".*", "$source": ".*"}
_SUFFIXES = ("_bucket", "_count", "_sum")


def tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (Debian package `prometheus`)")
    return found


def dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            exprs.append(variable["definition"])
    return exprs


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def concrete(expr: str) -> str:
    """A dashboard expression with its variables as Grafana fills them in."""
    for variable, replacement in _VARIABLES.items():
        expr = expr.replace(variable, replacement)
    return expr


def family_of(name: str) -> str:
    if name not in FAMILIES:
        for suffix in _SUFFIXES:
            if name.endswith(suffix) and name.removesuffix(suffix) in FAMILIES:
                return name.removesuffix(suffix)
    return name


# ---- static checks -------------------------------------------------------------------------------


def test_dashboard_and_alerts_use_only_exported_families() -> None:
    """Every invalidatord_* name in the dashboard and the alerts is on /metrics, and the
    dashboard shows every family (none is exported for nobody)."""
    exprs = dashboard_exprs() + [rule["expr"] for rule in alert_rules()]
    used = {family_of(n) for e in exprs for n in re.findall(r"\binvalidatord_\w+", e)}
    assert used - set(FAMILIES) == set()
    dashboard_used = {
        family_of(n) for e in dashboard_exprs() for n in re.findall(r"\binvalidatord_\w+", e)
    }
    assert set(FAMILIES) - dashboard_used == set()


def test_every_dashboard_panel_has_a_title_a_description_and_the_datasource_variable() -> None:
    """Panels are self-explaining and follow the datasource picked on the dashboard."""
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "invalidatord"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["title"]
        assert panel["description"]
        assert panel["datasource"]["uid"] == "${datasource}"
        assert panel["targets"]


# ---- promtool ------------------------------------------------------------------------------------


def test_alert_rules_pass_promtool_check() -> None:
    """`promtool check rules` accepts deploy/alerts.yml."""
    promtool = tool("promtool")
    result = subprocess.run(
        [promtool, "check", "rules", str(ALERTS)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


def _expected(alert: str, labels: dict[str, str]) -> dict[str, Any]:
    """What promtool should see for `alert` on a series with `labels`: the rule's labels
    added, its annotations rendered ({{ $labels.x }} is the only template the rules use)."""
    rule = next(r for r in alert_rules() if r["alert"] == alert)

    def render(text: str) -> str:
        return re.sub(r"\{\{\s*\$labels\.(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), text)

    return {
        "exp_labels": labels | rule.get("labels", {}),
        "exp_annotations": {k: render(v) for k, v in rule.get("annotations", {}).items()},
    }


def test_alert_rules_fire_when_they_should_and_only_then(tmp_path: Path) -> None:
    """`promtool test rules`: each alert fires for the series in trouble after its `for`, and
    not for its healthy neighbours nor for CloudFront merely pacing us."""
    promtool = tool("promtool")
    a = {"job": "invalidatord", "instance": "a:9464"}
    b = {"job": "invalidatord", "instance": "b:9464"}

    def series(name: str, values: str, **labels: str) -> dict[str, str]:
        selector = ", ".join(f'{k}="{v}"' for k, v in labels.items())
        return {"series": f"{name}{{{selector}}}", "values": values}

    www, assets = {"distribution": "www"}, {"distribution": "assets"}
    tests = [
        {
            "interval": "1m",
            "input_series": [
                series("up", "0x30", **a),
                series("up", "1x30", **b),
                # grows a minute per minute: over 900 s from minute 16, firing from minute 21
                series("invalidatord_oldest_pending_age_seconds", "0+60x30", **b, **www),
                series("invalidatord_oldest_pending_age_seconds", "0x30", **b, **assets),
                series("invalidatord_distribution_healthy", "1 1 0x30", **b, **www),
                series("invalidatord_distribution_healthy", "1x30", **b, **assets),
                series(
                    "invalidatord_api_errors_total", "0+1x30", **b, **www, code="ServiceUnavailable"
                ),
                series(
                    "invalidatord_api_errors_total",
                    "0+20x30",
                    **b,
                    **www,
                    code="TooManyInvalidationsInProgress",
                ),
                series("invalidatord_api_errors_total", "0+20x30", **b, **www, code="Throttling"),
                series("invalidatord_paths_rejected_total", "0 0 0 1x30", **b, **www),
                series("invalidatord_paths_rejected_total", "0x30", **b, **assets),
                series("invalidatord_watcher_overflows_total", "0 0 0 0 1x30", **b, source="www"),
                series("invalidatord_watcher_overflows_total", "0x30", **b, source="quiet"),
                series("invalidatord_watcher_restarts_total", "0 0 1x30", **b, source="www"),
                series("invalidatord_watcher_restarts_total", "0x30", **b, source="quiet"),
                series("invalidatord_source_healthy", "1 0x30", **b, source="www"),
                series("invalidatord_source_healthy", "1x30", **b, source="quiet"),
                series("invalidatord_journal_writable", "1 1 0 0 0 1x30", **b),
                series("invalidatord_journal_writable", "1 0 0 0 0 0 0 0x30", **a),
                series("invalidatord_orphaned_paths", "0 3x30", **b, distribution_id="E2OLD"),
                series("invalidatord_orphaned_paths", "0 3 0x30", **a, distribution_id="E2GONE"),
            ],
            "alert_rule_test": [
                {"eval_time": "4m", "alertname": "InvalidatordDown", "exp_alerts": []},
                {
                    "eval_time": "10m",
                    "alertname": "InvalidatordDown",
                    "exp_alerts": [_expected("InvalidatordDown", a)],
                },
                {"eval_time": "20m", "alertname": "InvalidatordAbsent", "exp_alerts": []},
                {
                    "eval_time": "20m",
                    "alertname": "InvalidatordOldestPendingChangeTooOld",
                    "exp_alerts": [],
                },
                {
                    "eval_time": "25m",
                    "alertname": "InvalidatordOldestPendingChangeTooOld",
                    "exp_alerts": [_expected("InvalidatordOldestPendingChangeTooOld", b | www)],
                },
                {
                    "eval_time": "10m",
                    "alertname": "InvalidatordCloudFrontRefused",
                    "exp_alerts": [_expected("InvalidatordCloudFrontRefused", b | www)],
                },
                {
                    "eval_time": "20m",
                    "alertname": "InvalidatordCloudFrontErrors",
                    "exp_alerts": [
                        _expected(
                            "InvalidatordCloudFrontErrors", b | www | {"code": "ServiceUnavailable"}
                        )
                    ],
                },
                {
                    "eval_time": "10m",
                    "alertname": "InvalidatordPathsRejected",
                    "exp_alerts": [_expected("InvalidatordPathsRejected", b | www)],
                },
                {
                    "eval_time": "10m",
                    "alertname": "InvalidatordWatcherOverflow",
                    "exp_alerts": [_expected("InvalidatordWatcherOverflow", b | {"source": "www"})],
                },
                {"eval_time": "1m", "alertname": "InvalidatordWatcherRestarted", "exp_alerts": []},
                {
                    "eval_time": "10m",
                    "alertname": "InvalidatordWatcherRestarted",
                    "exp_alerts": [
                        _expected("InvalidatordWatcherRestarted", b | {"source": "www"})
                    ],
                },
                {
                    "eval_time": "1m",
                    "alertname": "InvalidatordJournalNotWritable",
                    "exp_alerts": [],
                },
                {
                    # b failed for three minutes and recovered; a has failed since minute 1
                    "eval_time": "10m",
                    "alertname": "InvalidatordJournalNotWritable",
                    "exp_alerts": [_expected("InvalidatordJournalNotWritable", a)],
                },
                {
                    "eval_time": "4m",
                    "alertname": "InvalidatordJournalNotWritable",
                    "exp_alerts": [
                        _expected("InvalidatordJournalNotWritable", a),
                        _expected("InvalidatordJournalNotWritable", b),
                    ],
                },
                {"eval_time": "10m", "alertname": "InvalidatordOrphanedPaths", "exp_alerts": []},
                {
                    # b has held them since minute 1; a's were sent or discarded at minute 2
                    "eval_time": "20m",
                    "alertname": "InvalidatordOrphanedPaths",
                    "exp_alerts": [
                        _expected("InvalidatordOrphanedPaths", b | {"distribution_id": "E2OLD"})
                    ],
                },
                {"eval_time": "5m", "alertname": "InvalidatordSourceNotWatching", "exp_alerts": []},
                {
                    "eval_time": "10m",
                    "alertname": "InvalidatordSourceNotWatching",
                    "exp_alerts": [
                        _expected("InvalidatordSourceNotWatching", b | {"source": "www"})
                    ],
                },
            ],
        },
        {
            "interval": "1m",
            "input_series": [series("up", "1x30", job="something-else", instance="c:80")],
            "alert_rule_test": [
                {"eval_time": "5m", "alertname": "InvalidatordAbsent", "exp_alerts": []},
                {
                    "eval_time": "15m",
                    "alertname": "InvalidatordAbsent",
                    "exp_alerts": [_expected("InvalidatordAbsent", {"job": "invalidatord"})],
                },
            ],
        },
    ]
    spec = tmp_path / "alerts_test.yml"
    spec.write_text(
        yaml.safe_dump(
            {"rule_files": [str(ALERTS)], "evaluation_interval": "1m", "tests": tests},
            sort_keys=False,
        )
    )
    result = subprocess.run(
        [promtool, "test", "rules", str(spec)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# ---- a real Prometheus ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Prometheus:
    """`prometheus` on 127.0.0.1 scraping `target` every second, with deploy/alerts.yml."""

    def __init__(self, binary: str, directory: Path, target: str) -> None:
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(ALERTS)],
            "scrape_configs": [
                {"job_name": "invalidatord", "static_configs": [{"targets": [target]}]}
            ],
        }
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / "prometheus.yml"
        path.write_text(yaml.safe_dump(config))
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log = (directory / "prometheus.log").open("wb")
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={path}",
                f"--storage.tsdb.path={directory / 'data'}",
                f"--web.listen-address={self.url.removeprefix('http://')}",
                "--log.level=warn",
            ],
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=self.log,
        )

    def get(self, path: str, **params: str) -> dict[str, Any]:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        try:
            # our own loopback server
            with urllib.request.urlopen(self.url + path + query, timeout=5) as response:  # noqa: S310
                answer: dict[str, Any] = json.loads(response.read())
                return answer
        except urllib.error.HTTPError as err:
            answer = json.loads(err.read() or b"{}")
            return answer

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"prometheus exited with {self.proc.returncode}")
        try:
            with urllib.request.urlopen(self.url + "/-/ready", timeout=2) as response:  # noqa: S310
                return bool(response.status == 200)
        except OSError:
            return False

    def query(self, expr: str) -> list[dict[str, Any]]:
        answer = self.get("/api/v1/query", query=expr)
        assert answer.get("status") == "success", (expr, answer)
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@pytest.fixture
def daemon(tmp_path: Path, cloudfront: CloudFrontEmulator) -> Iterator[DaemonProcess]:
    root = tmp_path / "www"
    root.mkdir()
    (root / "index.html").write_text("home")
    config = emulator_config(
        tmp_path,
        root,
        cloudfront,
    )
    with running_daemon(config) as proc:
        (root / "page.html").write_text("page")
        wait_for(
            lambda: "/page.html" in cloudfront.created_paths(cloudfront.distribution_id),
            20,
            what="a submission",
        )
        yield proc


def test_a_real_prometheus_scrapes_the_daemon_and_evaluates_the_dashboard_and_alerts(
    tmp_path: Path, daemon: DaemonProcess
) -> None:
    """Prometheus scrapes /metrics (up == 1), answers a daemon metric through its query API,
    loads the alerting rules, and evaluates every dashboard and alert expression."""
    binary = tool("prometheus")
    assert daemon.health_url is not None
    target = daemon.health_url.removeprefix("http://").removesuffix("/healthz")
    prometheus = Prometheus(binary, tmp_path / "prometheus", target)
    try:
        wait_for(prometheus.ready, 30, what="prometheus ready")
        accepted = wait_for(
            lambda: prometheus.query('invalidatord_paths_accepted_total{distribution="www"}'),
            30,
            what="the first scrape",
        )
        assert float(accepted[0]["value"][1]) >= 1
        assert accepted[0]["metric"]["job"] == "invalidatord"
        assert accepted[0]["metric"]["instance"] == target
        up = prometheus.query('up{job="invalidatord"}')
        assert [float(s["value"][1]) for s in up] == [1.0]

        rules = wait_for(
            lambda: prometheus.get("/api/v1/rules")["data"]["groups"], 10, what="rules loaded"
        )
        loaded = {r["name"] for g in rules for r in g["rules"]}
        assert loaded == {r["alert"] for r in alert_rules()}
        assert all(r["health"] != "err" for g in rules for r in g["rules"]), rules

        for expr in dashboard_exprs():
            if expr.startswith("label_values("):
                continue  # Grafana's own function, not PromQL
            prometheus.query(concrete(expr))
        for rule in alert_rules():
            prometheus.query(rule["expr"])
        healthy = prometheus.query(concrete(dashboard_exprs()[0]))
        assert [float(s["value"][1]) for s in healthy] == [1.0]
    finally:
        prometheus.stop()

"""The pure core imports no cloud SDK, file watcher, YAML or validation library; the daemon
imports botocore, not boto3."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

PURE_CORE = [
    "invalidatord.model",
    "invalidatord.debounce",
    "invalidatord.mapping",
    "invalidatord.planner",
    "invalidatord.catchup",
    "invalidatord.bisection",
]
FORBIDDEN = ["boto3", "botocore", "watchdog", "yaml", "pydantic"]

PROBE = """
import importlib, json, sys
importlib.import_module(sys.argv[1])
forbidden = sys.argv[2].split(",")
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in forbidden)))
"""


@pytest.mark.parametrize("module", PURE_CORE)
def test_pure_core_module_imports_nothing_forbidden(module: str) -> None:
    """Importing the module in a fresh interpreter loads none of boto3, botocore, watchdog,
    yaml or pydantic (skipped while the module does not exist yet)."""
    pytest.importorskip(module)
    done = subprocess.run(
        [sys.executable, "-c", PROBE, module, ",".join(FORBIDDEN)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [], f"{module} pulls in forbidden modules"


def test_probe_detects_a_forbidden_import() -> None:
    """The probe itself works: importing a module that loads yaml is reported."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE, "yaml", ",".join(FORBIDDEN)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "yaml" in json.loads(done.stdout)


@pytest.mark.parametrize("module", ["invalidatord.cli", "invalidatord.daemon"])
def test_daemon_imports_botocore_not_boto3(module: str) -> None:
    """The daemon makes its clients with botocore: boto3 and its S3 transfer manager (about
    2 MiB of the daemon's memory, none of it used) are not loaded."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE, module, "boto3,s3transfer"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []

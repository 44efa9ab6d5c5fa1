"""`invalidatord demo`: the real daemon, an embedded CloudFront emulator, an example site.

No AWS account is needed and nothing leaves the machine: the emulator listens on 127.0.0.1 and
the daemon is given dummy credentials that only it sees.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Literal

from invalidatord import daemon, logs
from invalidatord.config import load_config
from invalidatord.errors import InvalidatordError

SITE = {
    "index.html": "<!doctype html><title>Example</title><h1>Hello from the origin</h1>\n",
    "about/index.html": "<!doctype html><title>About</title><p>About this site.</p>\n",
    "blog/2026/first post.html": "<!doctype html><title>First post</title><p>Hi.</p>\n",
    "css/site.css": "body { font-family: sans-serif; }\n",
    "img/logo.svg": '<svg xmlns="http://www.w3.org/2000/svg" width="8" height="8"/>\n',
}

CONFIG = """\
# Written by `invalidatord demo`: the daemon watches {docroot}
# and invalidates on the CloudFront emulator at {endpoint}.
state_dir: {state}
aws:
  endpoint_url: {endpoint}
distributions:
  www:
    id: {dist_id}
sources:
  - name: docroot
    type: filesystem
    root: {docroot}
rules:
  - match: "**/index.html"
    urls: ["/{{dir}}/", "/{{path}}"]
  - match: "**"
    urls: ["/{{path}}"]
debounce:
  quiet: 1s
  max_delay: 10s
invalidation:
  poll_interval: 1s
metrics:
  listen: 127.0.0.1:0
log:
  format: {log_format}
"""


def write_site(docroot: Path) -> None:
    for rel, text in SITE.items():
        target = docroot / rel
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")


def run_demo(directory: str | None = None, touch: bool = True) -> int:
    try:
        from invalidatord.testing.cloudfront import CloudFrontEmulator
    except ImportError as exc:  # moto is the optional `demo` extra
        raise InvalidatordError(
            f"the demo needs the CloudFront emulator: pip install 'invalidatord[demo]' ({exc})"
        ) from exc
    base = Path(directory or tempfile.mkdtemp(prefix="invalidatord-demo-")).resolve()
    docroot = base / "docroot"
    write_site(docroot)
    # Dummy credentials for the emulator only: never the user's real ones.
    for key, value in {
        "AWS_ACCESS_KEY_ID": "demo",
        "AWS_SECRET_ACCESS_KEY": "demo",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        os.environ[key] = value
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ROLE_ARN"):
        os.environ.pop(key, None)

    log_format: Literal["console", "json"] = "console" if sys.stderr.isatty() else "json"
    # Before the emulator logs its first line, so every line has the same format.
    logs.configure(log_format, "info")
    emulator = CloudFrontEmulator(in_progress_seconds=3.0)
    endpoint = emulator.start()
    try:
        dist_id = emulator.create_distribution("invalidatord demo")
        config_path = base / "config.yaml"
        config_path.write_text(
            CONFIG.format(
                docroot=docroot,
                endpoint=endpoint,
                dist_id=dist_id,
                state=base / "state",
                log_format=log_format,
            ),
            encoding="utf-8",
        )
        cfg = load_config(config_path)
        logs.configure(cfg.log.format, cfg.log.level)
        print(
            f"\ninvalidatord demo\n"
            f"  document root : {docroot}   <- edit, add, rename or delete files here\n"
            f"  config        : {config_path}\n"
            f"  CloudFront    : emulator at {endpoint}, distribution {dist_id}\n"
            f"Each invalidation is logged as it is submitted (batch_submitted) and when it\n"
            f"completes (invalidation_completed). Press Ctrl-C to stop.\n",
            file=sys.stderr,
            flush=True,
        )

        def on_ready(d: daemon.Daemon) -> None:
            print(f"  health        : {d.health_url}\n", file=sys.stderr, flush=True)
            if touch:
                threading.Thread(target=_edit_a_page, args=(docroot,), daemon=True).start()

        rc = daemon.run(cfg, reload=lambda: load_config(config_path), on_ready=on_ready)
        created = emulator.invalidations(dist_id)
        print(
            f"\ndemo stopped: {len(created)} invalidation(s) created; "
            f"the site is still in {docroot}",
            file=sys.stderr,
        )
        return rc
    finally:
        emulator.stop()


def _edit_a_page(docroot: Path) -> None:
    """Show the first invalidation without waiting for the user: edit two files, like a deploy."""
    time.sleep(0.5)
    stamp = time.strftime("%H:%M:%S")
    with open(docroot / "index.html", "a", encoding="utf-8") as f:
        f.write(f"<!-- edited by the demo at {stamp} -->\n")
    with open(docroot / "css" / "site.css", "a", encoding="utf-8") as f:
        f.write(f"/* {stamp} */\n")
    print(
        f"  (the demo edited index.html and css/site.css at {stamp})", file=sys.stderr, flush=True
    )

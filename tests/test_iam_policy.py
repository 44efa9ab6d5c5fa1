"""deploy/iam-policy.json grants exactly what the daemon calls.

Every AWS request of a full end-to-end run is recorded on the server side: the daemon's
`aws.endpoint_url` is a recording HTTP proxy in front of the emulator (CloudFront on moto), which
names each request's operation from botocore's service models and the identity that signed it
(the access key in its SigV4 credential scope). Nothing in the daemon is patched.

The run uses every kind of source (a filesystem root, an SQS queue fed by S3 event
notifications, a polled bucket) and `aws.role_arn`, so it shows the two identities involved:

- the daemon's own credentials call `sts:AssumeRole` on the configured role and nothing else
  (the only permission they need, together with the role's trust policy naming them);
- the role (or, without `role_arn`, the daemon's own credentials) needs what the policy
  grants, and every grant is used.

A static scan of the package's boto3 client calls makes sure no call outside this run's paths
(rare error handling) needs more.
"""

from __future__ import annotations

import fnmatch
import http.client
import json
import re
import signal
import subprocess
import sys
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import botocore.session
import pytest
from botocore.config import Config as BotoConfig

from invalidatord.testing.cloudfront import CloudFrontEmulator
from tests.harness import aws_test_env, running_daemon, write_config
from tests.waiting import wait_for

REPO = Path(__file__).resolve().parents[1]
POLICY = REPO / "deploy" / "iam-policy.json"
#: The variants for a fleet's two roles (config/fleet-*.yaml): the publishers' hosts and the
#: invalidators' hosts each get only what their role calls.
PUBLISHER_POLICY = REPO / "deploy" / "iam-policy-fleet-publisher.json"
INVALIDATOR_POLICY = REPO / "deploy" / "iam-policy-fleet-invalidator.json"
FLEET_QUEUE = "invalidatord.fifo"
#: The values the shipped policy uses (those of config/example.yaml); the run uses the same
#: account, region, queue and bucket, and the emulator's distribution id.
ACCOUNT = "123456789012"
EXAMPLE_DISTRIBUTION = "E2EXAMPLE12345"
QUEUE = "uploads-events"
POLLED_BUCKET = "example-static"
ROLE_ARN = f"arn:aws:iam::{ACCOUNT}:role/invalidatord"
BASE_KEY = "AKIAIAMTESTBASE00001"
SERVICES = ("cloudfront", "sqs", "s3", "sts")

#: API operations whose IAM action is named otherwise.
_ACTIONS = {
    ("sqs", "DeleteMessageBatch"): "sqs:DeleteMessage",
    ("sqs", "ChangeMessageVisibilityBatch"): "sqs:ChangeMessageVisibility",
    ("sqs", "SendMessageBatch"): "sqs:SendMessage",
    ("s3", "ListObjectsV2"): "s3:ListBucket",
    ("s3", "ListObjects"): "s3:ListBucket",
    ("s3", "HeadBucket"): "s3:ListBucket",
    ("s3", "HeadObject"): "s3:GetObject",
}
_CREDENTIAL = re.compile(r"Credential=([^/,\s]+)/[^/]+/([^/]+)/([^/]+)/")
_BOTO = botocore.session.get_session()


def iam_action(service: str, operation: str) -> str:
    return _ACTIONS.get((service, operation), f"{service}:{operation}")


# ---- naming requests ---------------------------------------------------------------------------


@dataclass(frozen=True)
class AwsCall:
    """One request as the server saw it."""

    access_key: str
    service: str
    region: str
    operation: str
    params: dict[str, str]

    @property
    def action(self) -> str:
        return iam_action(self.service, self.operation)

    @property
    def resource(self) -> str:
        p = self.params
        if self.service == "cloudfront":
            distribution = p.get("DistributionId") or p["Id"]  # GetDistribution: Id
            return f"arn:aws:cloudfront::{ACCOUNT}:distribution/{distribution}"
        if self.service == "sqs":
            account, name = urllib.parse.urlsplit(p["QueueUrl"]).path.strip("/").split("/")
            return f"arn:aws:sqs:{self.region}:{account}:{name}"
        if self.service == "s3":
            return f"arn:aws:s3:::{p['Bucket']}"
        if self.service == "sts" and self.operation == "AssumeRole":
            return p["RoleArn"]
        raise AssertionError(f"no resource known for {self}")


def _rest_operation(
    service: str, method: str, path: str, query: dict[str, list[str]]
) -> tuple[str, dict[str, str]]:
    """The rest-xml/rest-json operation whose HTTP binding matches, and its URI parameters."""
    model = _BOTO.get_service_model(service)
    best: tuple[int, str, dict[str, str]] | None = None
    for name in model.operation_names:
        http = model.operation_model(name).http
        if http.get("method") != method:
            continue
        template, _, required = http["requestUri"].partition("?")
        pattern = re.sub(r"\\\{(\w+)\\\+\\\}", r"(?P<\1>.+)", re.escape(template))
        pattern = re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", pattern)
        match = re.fullmatch(pattern, urllib.parse.unquote(path))
        wanted = [q.partition("=")[0] for q in required.split("&") if q]
        if match is None or any(q not in query for q in wanted):
            continue
        score = len(wanted) * 1000 + len(template)
        if best is None or score > best[0]:
            best = (score, name, match.groupdict())
    assert best is not None, f"no {service} operation for {method} {path}"
    return best[1], best[2]


def name_request(method: str, target: str, headers: Any, body: bytes) -> AwsCall | None:
    """The AWS call a signed HTTP request is (None for an unsigned one)."""
    credential = _CREDENTIAL.search(headers.get("Authorization", ""))
    if credential is None:
        return None
    access_key, region, service = credential.groups()
    split = urllib.parse.urlsplit(target)
    query = urllib.parse.parse_qs(split.query, keep_blank_values=True)
    protocol = _BOTO.get_service_model(service).metadata["protocol"]
    params: dict[str, str]
    if protocol == "json":
        operation = headers["X-Amz-Target"].rpartition(".")[2]
        params = {k: v for k, v in json.loads(body or b"{}").items() if isinstance(v, str)}
    elif protocol == "query":
        form = urllib.parse.parse_qs(body.decode())
        operation = form["Action"][0]
        params = {k: v[0] for k, v in form.items()}
    else:
        operation, params = _rest_operation(service, method, split.path, query)
    return AwsCall(access_key, service, region, operation, params)


# ---- the recording proxy -----------------------------------------------------------------------


class RecordingProxy:
    """An HTTP proxy on 127.0.0.1 that names and records every AWS request, then relays it.

    With `allows` set (a test of what a policy lets through), a call it refuses is answered
    403 AccessDenied as that service's protocol answers it, and not relayed."""

    def __init__(self, upstream: str) -> None:
        host, port = urllib.parse.urlsplit(upstream).netloc.split(":")
        self.calls: list[AwsCall] = []
        self.allows: Callable[[AwsCall], bool] | None = None
        lock = threading.Lock()
        owner = self

        class Relay(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _relay(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                call = name_request(self.command, self.path, self.headers, body)
                if call is not None:
                    with lock:
                        owner.calls.append(call)
                    if owner.allows is not None and not owner.allows(call):
                        self._deny(call)
                        return
                upstream_conn = http.client.HTTPConnection(host, int(port), timeout=60)
                try:
                    upstream_conn.putrequest(
                        self.command, self.path, skip_host=True, skip_accept_encoding=True
                    )
                    for key, value in self.headers.items():
                        upstream_conn.putheader(key, value)
                    upstream_conn.endheaders(body)
                    response = upstream_conn.getresponse()
                    data = response.read()
                finally:
                    upstream_conn.close()
                self.send_response(response.status, response.reason)
                for key, value in response.getheaders():
                    if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            def _deny(self, call: AwsCall) -> None:
                message = f"not authorized to perform: {call.action} on {call.resource}"
                headers = {"x-amzn-RequestId": "denied"}
                if _BOTO.get_service_model(call.service).metadata["protocol"] == "json":
                    # SQS (JSON with query compatibility): the code a query client expects
                    headers["x-amzn-query-error"] = "AccessDenied;Sender"
                    headers["Content-Type"] = "application/x-amz-json-1.0"
                    error = {"__type": "com.amazon.coral.service#AccessDenied"}
                    body = json.dumps(error | {"message": message}).encode()
                else:
                    headers["Content-Type"] = "text/xml"
                    body = (
                        "<ErrorResponse><Error><Type>Sender</Type><Code>AccessDenied</Code>"
                        f"<Message>{message}</Message></Error></ErrorResponse>"
                    ).encode()
                self.send_response(403, "Forbidden")
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _relay

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Relay)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def proxy(cloudfront: CloudFrontEmulator) -> Iterator[RecordingProxy]:
    recorder = RecordingProxy(cloudfront.endpoint_url)
    yield recorder
    recorder.close()


# ---- the policy --------------------------------------------------------------------------------


def load_policy(distribution_id: str, path: Path = POLICY) -> list[dict[str, Any]]:
    text = path.read_text().replace(EXAMPLE_DISTRIBUTION, distribution_id)
    statements: list[dict[str, Any]] = json.loads(text)["Statement"]
    return statements


def _listed(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else value


def allowed(statements: list[dict[str, Any]], action: str, resource: str) -> bool:
    """IAM's answer for an identity policy without conditions: an explicit Deny wins, else
    some Allow must match the action (case-insensitive) and the resource (`*`, `?`)."""

    def matches(statement: dict[str, Any]) -> bool:
        assert set(statement) <= {"Sid", "Effect", "Action", "Resource"}, statement
        actions = [a.lower() for a in _listed(statement["Action"])]
        return any(fnmatch.fnmatchcase(action.lower(), a) for a in actions) and any(
            fnmatch.fnmatchcase(resource, r) for r in _listed(statement["Resource"])
        )

    if any(s["Effect"] == "Deny" and matches(s) for s in statements):
        return False
    return any(s["Effect"] == "Allow" and matches(s) for s in statements)


def granted_actions(statements: list[dict[str, Any]]) -> set[str]:
    return {a for s in statements if s["Effect"] == "Allow" for a in _listed(s["Action"])}


@pytest.mark.parametrize(
    "path", [POLICY, PUBLISHER_POLICY, INVALIDATOR_POLICY], ids=lambda p: p.name
)
def test_the_policy_is_narrow(path: Path) -> None:
    """No wildcard action or resource, no Deny needed, every statement explained by its Sid."""
    for statement in load_policy(EXAMPLE_DISTRIBUTION, path):
        assert statement["Effect"] == "Allow"
        assert statement["Sid"]
        for action in _listed(statement["Action"]):
            assert "*" not in action
        for resource in _listed(statement["Resource"]):
            assert "*" not in resource
            assert resource.startswith("arn:aws:")


def test_every_aws_call_in_the_code_is_granted() -> None:
    """Each boto3 client method the package calls (found in its source) maps to an action the
    policy grants: no rarely taken path (a release on stop, a retry) needs more."""
    operations = {
        service: {
            botocore.xform_name(name): name
            for name in _BOTO.get_service_model(service).operation_names
        }
        for service in SERVICES
    }
    called: set[str] = set()
    fleet: set[str] = set()
    online: set[str] = set()
    for source in (REPO / "invalidatord").rglob("*.py"):
        if "testing" in source.relative_to(REPO / "invalidatord").parts:
            continue  # the test doubles' own set-up (CreateDistribution), never the daemon
        # `client.op(` and `client("svc").op(` (online.py's clients, one per service)
        text = source.read_text()
        for method in re.findall(r"\b_?client(?:\(\"\w+\"\))?\.(\w+)\(", text):
            for service, names in operations.items():
                if method in names:
                    # a fleet's calls are granted by the fleet variants; `check --online`'s
                    # are checked below
                    into = {"fleet.py": fleet, "online.py": online}.get(source.name, called)
                    into.add(iam_action(service, names[method]))
    assert {"cloudfront:CreateInvalidation", "sqs:ReceiveMessage", "s3:ListBucket"} <= called
    assert called <= granted_actions(load_policy(EXAMPLE_DISTRIBUTION)), called
    assert {"sqs:SendMessage", "sqs:ReceiveMessage", "sqs:DeleteMessage"} <= fleet
    variants = granted_actions(load_policy(EXAMPLE_DISTRIBUTION, PUBLISHER_POLICY))
    variants |= granted_actions(load_policy(EXAMPLE_DISTRIBUTION, INVALIDATOR_POLICY))
    assert fleet <= variants, fleet
    # `check --online` asks what the daemon asks, plus two calls it reports rather than
    # fails on when refused: GetCallerIdentity (no IAM permission can deny it) and
    # GetDistribution ("not verified": the policies leave it out on purpose).
    assert {"sts:GetCallerIdentity", "cloudfront:GetDistribution", "s3:ListBucket"} <= online
    extras = {"sts:GetCallerIdentity", "cloudfront:GetDistribution"}
    assert online - extras <= granted_actions(load_policy(EXAMPLE_DISTRIBUTION)), online


# ---- the run -----------------------------------------------------------------------------------


def _client(service: str, endpoint: str) -> Any:
    """A client of the test itself (credentials `testing`): set-up, never recorded."""
    return boto3.client(
        service,
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=BotoConfig(retries={"max_attempts": 1}),
    )


def test_a_full_run_calls_exactly_what_the_policy_grants(
    tmp_path: Path, cloudfront: CloudFrontEmulator, proxy: RecordingProxy
) -> None:
    """Filesystem, SQS and S3-poll sources, an assumed role, submissions, status polls and a
    shutdown: the daemon's own key only assumes the role; every call of the role is allowed by
    the policy, and every action the policy grants was needed."""
    endpoint = cloudfront.endpoint_url
    s3, sqs = _client("s3", endpoint), _client("sqs", endpoint)
    queue_url = sqs.create_queue(QueueName=QUEUE)["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])
    s3.create_bucket(Bucket="example-uploads")
    s3.put_bucket_notification_configuration(
        Bucket="example-uploads",
        NotificationConfiguration={
            "QueueConfigurations": [
                {
                    "QueueArn": queue_arn["Attributes"]["QueueArn"],
                    "Events": ["s3:ObjectCreated:*", "s3:ObjectRemoved:*"],
                }
            ]
        },
    )
    s3.create_bucket(Bucket=POLLED_BUCKET)
    s3.put_object(Bucket=POLLED_BUCKET, Key="site/old.html", Body=b"old")
    root = tmp_path / "www"
    root.mkdir()
    (root / "index.html").write_text("home")

    config = write_config(
        tmp_path,
        root=root,
        endpoint=proxy.url,
        distribution_id=cloudfront.distribution_id,
        # the SQS heartbeat extends a message's visibility at half of it, inside the quiet window
        quiet="2500ms",
        max_delay="10s",
        extra={
            "aws": {"role_arn": ROLE_ARN},
            "sources": [
                {"name": "docroot", "type": "filesystem", "root": str(root)},
                {
                    "name": "uploads",
                    "type": "sqs",
                    "queue_url": queue_url,
                    "bucket": "example-uploads",
                    "wait_time": "1s",
                    "visibility_timeout": "2s",
                    "receivers": 1,
                },
                {"name": "static", "type": "s3-poll", "bucket": POLLED_BUCKET, "interval": "1s"},
            ],
        },
    )
    env = aws_test_env() | {
        "AWS_ACCESS_KEY_ID": BASE_KEY,
        "AWS_SECRET_ACCESS_KEY": "iamtest/base/secret/0000000000000000000000",
    }
    with running_daemon(config, env=env) as proc:
        (root / "page.html").write_text("page")
        s3.put_object(Bucket="example-uploads", Key="img/new.png", Body=b"png")
        s3.put_object(Bucket=POLLED_BUCKET, Key="site/new.html", Body=b"new")
        wanted = {"/page.html", "/img/new.png", "/site/new.html"}
        wait_for(
            lambda: wanted <= set(cloudfront.created_paths(cloudfront.distribution_id)),
            30,
            what="a submission from every source",
        )
        wait_for(lambda: len(proc.find("invalidation_completed")) >= 1, 20, what="a status poll")
        assert proc.stop(signal.SIGTERM) == 0, proc.transcript()

    calls = [c for c in proxy.calls if c.access_key != "testing"]
    base = [c for c in calls if c.access_key == BASE_KEY]
    role = [c for c in calls if c.access_key != BASE_KEY]
    assert base, "the daemon never assumed the role"
    assert {(c.action, c.resource) for c in base} == {("sts:AssumeRole", ROLE_ARN)}

    statements = load_policy(cloudfront.distribution_id)
    denied = sorted(
        {(c.action, c.resource) for c in role if not allowed(statements, c.action, c.resource)}
    )
    assert denied == []
    used = {c.action for c in role}
    assert used == granted_actions(statements), sorted(used)
    # the proxy saw what the emulator saw: nothing reached CloudFront another way
    cloudfront_ops = {r.op for r in cloudfront.requests}
    assert cloudfront_ops == {c.operation for c in role if c.service == "cloudfront"}


PUBLISHER_KEY = "AKIAIAMTESTPUBLISHER"
INVALIDATOR_KEY = "AKIAIAMTESTINVALIDAT"


def test_a_fleet_run_calls_exactly_what_each_role_variant_grants(
    tmp_path: Path, cloudfront: CloudFrontEmulator, proxy: RecordingProxy
) -> None:
    """A publisher and an invalidator on the fleet queue, each with its own key: every call of
    each is allowed by its role's variant of the policy, every grant of a variant was needed,
    and the publisher never called CloudFront."""
    sqs = _client("sqs", cloudfront.endpoint_url)
    queue_url = sqs.create_queue(QueueName=FLEET_QUEUE, Attributes={"FifoQueue": "true"})[
        "QueueUrl"
    ]
    root = tmp_path / "pub" / "www"
    root.mkdir(parents=True)
    (root / "index.html").write_text("home")
    fleet = {"queue_url": queue_url}
    publisher = write_config(
        tmp_path / "pub",
        root=root,
        endpoint=proxy.url,
        distribution_id=cloudfront.distribution_id,
        extra={"fleet": {"role": "publisher", **fleet}},
    )
    (tmp_path / "inv").mkdir()
    invalidator = write_config(
        tmp_path / "inv",
        root=tmp_path,
        endpoint=proxy.url,
        distribution_id=cloudfront.distribution_id,
        max_delay="1s",
        extra={
            "sources": [],
            "fleet": {"role": "invalidator", "wait_time": "1s", **fleet},
        },
    )

    def env(key: str) -> dict[str, str]:
        return aws_test_env() | {
            "AWS_ACCESS_KEY_ID": key,
            "AWS_SECRET_ACCESS_KEY": "iamtest/fleet/secret/000000000000000000000",
        }

    with (
        running_daemon(invalidator, env=env(INVALIDATOR_KEY)) as inv,
        running_daemon(publisher, env=env(PUBLISHER_KEY)) as pub,
    ):
        (root / "page.html").write_text("page")
        wait_for(
            lambda: "/page.html" in cloudfront.created_paths(cloudfront.distribution_id),
            30,
            what="the publisher's change at CloudFront",
        )
        wait_for(lambda: len(inv.find("invalidation_completed")) >= 1, 20, what="a status poll")
        assert pub.stop(signal.SIGTERM) == 0, pub.transcript()
        assert inv.stop(signal.SIGTERM) == 0, inv.transcript()

    for key, path in ((PUBLISHER_KEY, PUBLISHER_POLICY), (INVALIDATOR_KEY, INVALIDATOR_POLICY)):
        calls = [c for c in proxy.calls if c.access_key == key]
        statements = load_policy(cloudfront.distribution_id, path)
        denied = sorted(
            {(c.action, c.resource) for c in calls if not allowed(statements, c.action, c.resource)}
        )
        assert denied == [], path.name
        assert {c.action for c in calls} == granted_actions(statements), path.name
    assert not [c for c in proxy.calls if c.access_key == PUBLISHER_KEY and c.service != "sqs"]


# ---- check --online under the shipped policies ---------------------------------------------------


def _enforce(proxy: RecordingProxy, statements: list[dict[str, Any]]) -> None:
    """Let through what `statements` allow; GetCallerIdentity always (IAM cannot deny it)."""
    proxy.allows = lambda call: (
        call.action == "sts:GetCallerIdentity" or allowed(statements, call.action, call.resource)
    )


def _check_online(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "invalidatord", "check", "--online", "-c", str(config)],
        capture_output=True,
        text=True,
        env=aws_test_env(),
        timeout=60,
        check=False,
    )


def _online_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    out = result.stdout.split("online, against ", 1)[1].splitlines()[1:]
    return [line.strip() for line in out if line.startswith("  ")]


def _daemon_config(tmp_path: Path, cloudfront: CloudFrontEmulator, proxy: RecordingProxy) -> Path:
    """The example policy's resources: a queue, a polled bucket, the distribution."""
    queue_url = _client("sqs", cloudfront.endpoint_url).create_queue(QueueName=QUEUE)["QueueUrl"]
    _client("s3", cloudfront.endpoint_url).create_bucket(Bucket=POLLED_BUCKET)
    root = tmp_path / "www"
    root.mkdir()
    return write_config(
        tmp_path,
        root=root,
        endpoint=proxy.url,
        distribution_id=cloudfront.distribution_id,
        extra={
            "sources": [
                {"name": "docroot", "type": "filesystem", "root": str(root)},
                {"name": "uploads", "type": "sqs", "queue_url": queue_url},
                {"name": "static", "type": "s3-poll", "bucket": POLLED_BUCKET, "prefix": "site"},
            ],
        },
    )


def test_check_online_passes_with_exactly_the_daemons_policy(
    tmp_path: Path, cloudfront: CloudFrontEmulator, proxy: RecordingProxy
) -> None:
    """With deploy/iam-policy.json enforced (anything else answered AccessDenied), `check
    --online` passes: it asks nothing the daemon does not need except GetDistribution, which
    it reports as not verified, and every call it makes only reads."""
    config = _daemon_config(tmp_path, cloudfront, proxy)
    _enforce(proxy, load_policy(cloudfront.distribution_id))
    result = _check_online(config)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = _online_lines(result)
    [not_verified] = [line for line in lines if ": not verified: " in line]
    assert ": GetDistribution: not verified: cloudfront:GetDistribution is not allowed" in (
        not_verified
    )
    assert all(
        ": ok: " in line or ": not probed: " in line for line in lines if line != not_verified
    )
    ops = {c.operation for c in proxy.calls}  # set-up goes to the emulator directly
    assert ops == {
        "GetCallerIdentity",
        "ListInvalidations",
        "GetDistribution",
        "GetQueueAttributes",
        "ListObjectsV2",
        "HeadBucket",
    }


def test_check_online_names_the_grant_a_narrower_policy_lacks(
    tmp_path: Path, cloudfront: CloudFrontEmulator, proxy: RecordingProxy
) -> None:
    """The daemon's policy without its S3 statement: the s3-poll source's two lines are
    FAILED with AccessDenied and the grant to add; exit 1 names that source only."""
    config = _daemon_config(tmp_path, cloudfront, proxy)
    statements = load_policy(cloudfront.distribution_id)
    _enforce(proxy, [s for s in statements if "s3:ListBucket" not in _listed(s["Action"])])
    result = _check_online(config)
    assert result.returncode == 1, result.stdout + result.stderr
    failed = [line for line in _online_lines(result) if ": FAILED: " in line]
    grant = f"grant s3:ListBucket on arn:aws:s3:::{POLLED_BUCKET}"
    assert [line.split(": FAILED: ")[0] for line in failed] == [
        "source static (s3-poll): ListObjectsV2",
        "source static (s3-poll): HeadBucket",
    ]
    assert all(line.endswith(grant) for line in failed), failed
    assert "AccessDenied: not authorized to perform: s3:ListBucket" in failed[0]
    assert result.stderr.splitlines()[-1] == (
        "invalidatord: check --online failed: source static (s3-poll)"
    )


def test_check_online_passes_for_a_fleet_invalidator_with_its_policy(
    tmp_path: Path, cloudfront: CloudFrontEmulator, proxy: RecordingProxy
) -> None:
    """A fleet invalidator under its variant of the policy (no sqs:GetQueueAttributes): the
    fleet queue is "not verified" (not a failure), the distribution ok, exit 0."""
    sqs = _client("sqs", cloudfront.endpoint_url)
    attributes = {"FifoQueue": "true"}
    queue_url = sqs.create_queue(QueueName=FLEET_QUEUE, Attributes=attributes)["QueueUrl"]
    config = write_config(
        tmp_path,
        root=tmp_path,
        endpoint=proxy.url,
        distribution_id=cloudfront.distribution_id,
        extra={"sources": [], "fleet": {"role": "invalidator", "queue_url": queue_url}},
    )
    _enforce(proxy, load_policy(cloudfront.distribution_id, INVALIDATOR_POLICY))
    result = _check_online(config)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = _online_lines(result)
    assert any(
        line.startswith(
            f"fleet queue (invalidator): GetQueueAttributes: not verified: {queue_url}: "
            "sqs:GetQueueAttributes is not allowed"
        )
        for line in lines
    ), lines
    assert any(": ListInvalidations: ok: " in line for line in lines), lines

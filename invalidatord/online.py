"""`invalidatord check --online`: whether the config's AWS settings work, asked of AWS itself.

Every client is built by `factory` from `aws.*`, as the daemon builds its own (same session,
same `aws.role_arn`, same `aws.endpoint_url`), with short timeouts and one retry so a wrong
endpoint is a clear line within seconds rather than a minute of retries.

Nothing here changes anything in AWS or takes anything from the daemon: only read calls, and
never ReceiveMessage (a received message is hidden from the daemon for the queue's visibility
timeout and counts toward its dead-letter `maxReceiveCount`). What cannot be proved without a
side effect is listed as "not probed", with what grants it; what the deployed policies may
rightly refuse (calls the daemon itself never makes) is "not verified", not a failure.

What each call proves, and what a refusal means:

- sts GetCallerIdentity: credentials resolve (the role is assumed, with `aws.role_arn`) and AWS
  accepts them. Refused: FAILED, and every other check is skipped.
- cloudfront ListInvalidations (MaxItems 1): the distribution exists in that account and
  `cloudfront:ListInvalidations` is granted (the daemon's own preflight call). Refused: FAILED.
- cloudfront GetDistribution: enabled, status, domain name. Refused: not verified (the daemon
  does not call it, and its policy leaves it out).
- CreateInvalidation, GetInvalidation: not probed (creating an invalidation is billed and evicts).
- sqs GetQueueAttributes on an sqs source's queue: it exists, and the daemon's start-up call is
  granted. Refused: FAILED. ReceiveMessage, DeleteMessage, ChangeMessageVisibility: not probed.
- sqs GetQueueAttributes on the fleet queue: it exists and is FIFO. Refused: not verified (the
  fleet policies do not grant it). SendMessage, or ReceiveMessage and DeleteMessage: not probed.
- s3 ListObjectsV2 (MaxKeys 1, under the prefix): `s3:ListBucket`, as the daemon lists.
  s3 HeadBucket: the bucket exists, and its region. Refused: FAILED.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import botocore.exceptions
from botocore.config import Config as BotoConfig

from invalidatord.cloudfront import (
    CREDENTIAL_CODES,
    NO_CREDENTIALS,
    TRANSPORT_EXCEPTIONS,
    no_credentials_help,
    translate,
)
from invalidatord.config import Config, S3PollSourceConfig, SqsSourceConfig
from invalidatord.errors import ConfigError
from invalidatord.factory import client_for
from invalidatord.s3events import directory

OK = "ok"
FAILED = "FAILED"
NOT_VERIFIED = "not verified"
NOT_PROBED = "not probed"
SKIPPED = "skipped"

#: Seconds. A reachable AWS endpoint answers these calls in well under a second.
CONNECT_TIMEOUT = 3.0
READ_TIMEOUT = 5.0
#: One retry (standard mode: throttling, 5xx, a dropped connection), never a retry loop.
MAX_ATTEMPTS = 2

_DENIED = frozenset({"AccessDenied", "AccessDeniedException", "403", "Forbidden"})
_NO_QUEUE = frozenset(
    {"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist", "NonExistentQueue"}
)
_NO_BUCKET = frozenset({"NoSuchBucket", "404", "NotFound"})
_QUEUE_URL = re.compile(r"^https?://[^/]*?(?:sqs[.-]([a-z0-9-]+)\.)?[^/]*/(\d{12})/([^/?#]+)")


@dataclass(frozen=True, slots=True)
class Finding:
    """One line of the report: `subject` (what was checked), `check` (the call, or the
    permissions named), `outcome` (ok, FAILED, not verified, not probed, skipped) and
    `detail` (what was seen, or the error code and message and what to do)."""

    subject: str
    check: str
    outcome: str
    detail: str

    @property
    def failed(self) -> bool:
        return self.outcome in (FAILED, SKIPPED)

    def line(self) -> str:
        return f"{self.subject}: {self.check}: {self.outcome}: {self.detail}"

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


class _Failed(Exception):
    """A probe's call failed; `code` and `message` as AWS gave them, `fix` what to do."""

    def __init__(self, code: str, message: str, fix: str) -> None:
        super().__init__(code)
        self.code, self.message, self.fix = code, message, fix

    def detail(self) -> str:
        message = self.message.rstrip(".") if self.fix else self.message
        return f"{self.code}: {message}" + (f"; {self.fix}" if self.fix else "")


def client_config() -> BotoConfig:
    return BotoConfig(
        connect_timeout=CONNECT_TIMEOUT,
        read_timeout=READ_TIMEOUT,
        retries={"mode": "standard", "total_max_attempts": MAX_ATTEMPTS},
    )


def online_checks(cfg: Config) -> Iterator[Finding]:
    """Each finding as soon as it is known (the caller prints them as they come)."""
    clients: dict[str, Any] = {}

    def client(service: str) -> Any:
        if service not in clients:
            clients[service] = client_for(cfg, service, client_config())
        return clients[service]

    identity = _credentials(cfg, client)
    yield identity
    subjects = _subjects(cfg)
    if identity.outcome != OK:
        for subject in subjects:
            yield Finding(subject, "all", SKIPPED, "needs working credentials (see above)")
        return
    account = identity.detail.rsplit("account ", 1)[-1].rstrip(")")
    publisher = cfg.fleet is not None and cfg.fleet.role == "publisher"
    for name, dist in cfg.distributions.items():
        subject = f"distribution {name} ({dist.id})"
        if publisher:
            yield Finding(subject, "all", NOT_PROBED, "a fleet publisher never calls CloudFront")
            continue
        yield from _distribution(client, subject, dist.id, account)
    for i, source in enumerate(cfg.sources):
        subject = f"source {source.name} ({source.type})"
        if isinstance(source, SqsSourceConfig):
            key = f"sources[{i}].queue_url"
            yield from _queue(client, subject, source.queue_url, cfg.aws.region, key)
        elif isinstance(source, S3PollSourceConfig):
            prefix = directory(source.prefix)
            yield from _bucket(client, subject, source.bucket, prefix, f"sources[{i}]")
    if cfg.fleet is not None:
        yield from _fleet_queue(client, cfg.fleet.queue_url, cfg.fleet.role, cfg.aws.region)


def _subjects(cfg: Config) -> list[str]:
    """What the checks after the credentials' would be about (each skipped without them)."""
    names = [f"distribution {n} ({d.id})" for n, d in cfg.distributions.items()]
    names += [f"source {s.name} ({s.type})" for s in cfg.sources if s.type in ("sqs", "s3-poll")]
    if cfg.fleet is not None:
        names.append("fleet queue")
    return names


def _call(fn: Callable[[], Any], fix: Callable[[str], str]) -> Any:
    """`fn()`, with any failure as `_Failed` (its AWS code and message, and `fix(code)`).
    Catches everything: `check` must end in lines, never in a traceback."""
    try:
        return fn()
    except Exception as exc:
        code, message = _code_message(exc)
        raise _Failed(code, message, _common_fix(exc, code) or fix(code)) from exc


def _code_message(exc: Exception) -> tuple[str, str]:
    if isinstance(exc, botocore.exceptions.ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code") or "Unknown")
        return code, " ".join(str(error.get("Message") or code).split())
    if isinstance(exc, ConfigError):
        return "ConfigError", "; ".join(exc.problems)
    return type(exc).__name__, " ".join(str(exc).split()) or type(exc).__name__


def _common_fix(exc: Exception, code: str) -> str:
    """What to do about failures any call can meet; "" for those only the caller knows."""
    if isinstance(exc, TRANSPORT_EXCEPTIONS):
        return (
            "AWS could not be reached: check aws.endpoint_url (if set), the network, a proxy "
            "(HTTPS_PROXY) or a VPC endpoint"
        )
    if code in CREDENTIAL_CODES:
        return "the credentials were refused: renew them (an expired session?) or fix the key"
    return ""


# -- the checks -------------------------------------------------------------------------------


def _credentials(cfg: Config, client: Callable[[str], Any]) -> Finding:
    check = "GetCallerIdentity"
    try:
        who = _call(lambda: client("sts").get_caller_identity(), _credentials_fix(cfg))
    except _Failed as failed:
        cause = failed.__cause__
        if isinstance(cause, Exception) and translate(cause, "").code == NO_CREDENTIALS:
            # The line `run` gives for the same mistake, with the ways boto3 tried.
            detail = no_credentials_help(cfg.aws.profile, cfg.aws.role_arn)
            return Finding("credentials", check, FAILED, detail)
        return Finding("credentials", check, FAILED, failed.detail())
    role = "assumed aws.role_arn, " if cfg.aws.role_arn else ""
    arn, account = who.get("Arn", "?"), who.get("Account", "?")
    return Finding("credentials", check, OK, f"{role}{arn} (account {account})")


def _credentials_fix(cfg: Config) -> Callable[[str], str]:
    def fix(code: str) -> str:
        if code in _DENIED and cfg.aws.role_arn:
            return (
                f"the credentials may not assume {cfg.aws.role_arn}: grant them sts:AssumeRole "
                "on it and name them in the role's trust policy"
            )
        return ""

    return fix


def _distribution(
    client: Callable[[str], Any],
    subject: str,
    distribution_id: str,
    account: str,
) -> Iterator[Finding]:
    arn = f"arn:aws:cloudfront::{account}:distribution/{distribution_id}"

    def fix(code: str) -> str:
        if code in _DENIED:
            return (
                "grant cloudfront:ListInvalidations (and CreateInvalidation, GetInvalidation) "
                f"on {arn}"
            )
        if code == "NoSuchDistribution":
            return (
                f"no distribution {distribution_id} in account {account}: check the id in "
                "distributions, or that the credentials are of the distribution's account"
            )
        return ""

    missing = False
    try:
        listing = _call(
            lambda: client("cloudfront").list_invalidations(
                DistributionId=distribution_id, MaxItems="1"
            ),
            fix,
        )
    except _Failed as failed:
        missing = failed.code == "NoSuchDistribution"
        yield Finding(subject, "ListInvalidations", FAILED, failed.detail())
    else:
        items = (listing.get("InvalidationList") or {}).get("Items") or []
        latest = f"latest {items[0]['Id']} {items[0]['Status']}" if items else "none made yet"
        yield Finding(
            subject, "ListInvalidations", OK, f"cloudfront:ListInvalidations allowed; {latest}"
        )
    if not missing:
        yield _get_distribution(client, subject, distribution_id)
    yield Finding(
        subject,
        "CreateInvalidation, GetInvalidation",
        NOT_PROBED,
        "trying them means creating an invalidation (billed, and it evicts cached objects); "
        f"make sure the policy grants both on {arn} (deploy/iam-policy.json)",
    )


def _get_distribution(client: Callable[[str], Any], subject: str, distribution_id: str) -> Finding:
    check = "GetDistribution"
    try:
        got = _call(lambda: client("cloudfront").get_distribution(Id=distribution_id), str)
    except _Failed as failed:
        if failed.code in _DENIED:
            return Finding(
                subject,
                check,
                NOT_VERIFIED,
                "cloudfront:GetDistribution is not allowed, which is fine: the daemon does "
                "not call it (its policy leaves it out); enabled and status not shown",
            )
        return Finding(subject, check, FAILED, failed.detail())
    dist = got.get("Distribution") or {}
    enabled = (dist.get("DistributionConfig") or {}).get("Enabled")
    state = "enabled" if enabled else "disabled (it serves nothing; invalidations still work)"
    status = dist.get("Status", "?")
    return Finding(subject, check, OK, f"{state}, status {status}, {dist.get('DomainName', '?')}")


def queue_arn(url: str, region: str | None) -> str:
    """The queue's ARN from its URL (region from the host, else `region`), for IAM advice."""
    match = _QUEUE_URL.match(url)
    if match is None:
        return url
    return f"arn:aws:sqs:{match.group(1) or region or 'REGION'}:{match.group(2)}:{match.group(3)}"


def _attributes(client: Callable[[str], Any], url: str, fix: Callable[[str], str]) -> Any:
    return _call(
        lambda: client("sqs").get_queue_attributes(QueueUrl=url, AttributeNames=["All"]), fix
    ).get("Attributes", {})


def _queue_summary(attributes: dict[str, str]) -> str:
    parts = [
        f"{attributes.get('ApproximateNumberOfMessages', '?')} message(s) waiting",
        f"{attributes.get('ApproximateNumberOfMessagesNotVisible', '?')} in flight",
        f"visibility timeout {attributes.get('VisibilityTimeout', '?')}s",
    ]
    if attributes.get("KmsMasterKeyId"):
        parts.append(
            f"SSE-KMS key {attributes['KmsMasterKeyId']} (kms:Decrypt on it is not probed)"
        )
    return ", ".join(parts)


def _queue(
    client: Callable[[str], Any], subject: str, url: str, region: str | None, key: str
) -> Iterator[Finding]:
    arn = queue_arn(url, region)
    actions = "sqs:ReceiveMessage, DeleteMessage, ChangeMessageVisibility"

    def fix(code: str) -> str:
        if code in _DENIED:
            return f"grant sqs:GetQueueAttributes, {actions.removeprefix('sqs:')} on {arn}"
        if code in _NO_QUEUE:
            return f"no such queue: check {key} ({url}: region, account and name)"
        return ""

    try:
        attributes = _attributes(client, url, fix)
    except _Failed as failed:
        yield Finding(subject, "GetQueueAttributes", FAILED, f"{url}: {failed.detail()}")
    else:
        yield Finding(subject, "GetQueueAttributes", OK, f"{url}: {_queue_summary(attributes)}")
    yield Finding(
        subject,
        actions,
        NOT_PROBED,
        "receiving would hide messages from the daemon for the visibility timeout and count "
        f"toward the dead-letter maxReceiveCount; make sure the policy grants them on {arn}",
    )


def _fleet_queue(
    client: Callable[[str], Any], url: str, role: str, region: str | None
) -> Iterator[Finding]:
    subject = f"fleet queue ({role})"
    arn = queue_arn(url, region)

    def fix(code: str) -> str:
        if code in _NO_QUEUE:
            return f"no such queue: check fleet.queue_url ({url}: region, account and name)"
        return ""

    try:
        attributes = _attributes(client, url, fix)
    except _Failed as failed:
        if failed.code in _DENIED:
            yield Finding(
                subject,
                "GetQueueAttributes",
                NOT_VERIFIED,
                f"{url}: sqs:GetQueueAttributes is not allowed, which is fine: the fleet "
                "policies leave it out (the daemon does not call it), so the queue's existence "
                "is not verified; grant it to let check verify it",
            )
        else:
            yield Finding(subject, "GetQueueAttributes", FAILED, f"{url}: {failed.detail()}")
    else:
        fifo = attributes.get("FifoQueue") == "true"
        summary = _queue_summary(attributes) + ("" if fifo else "; NOT a FIFO queue")
        yield Finding(subject, "GetQueueAttributes", OK if fifo else FAILED, f"{url}: {summary}")
    if role == "publisher":
        actions, why = "sqs:SendMessage", "sending would publish a change to the invalidators"
    else:
        actions = "sqs:ReceiveMessage, DeleteMessage"
        why = "receiving would hide messages from the other invalidator"
    yield Finding(
        subject, actions, NOT_PROBED, f"{why}; make sure the fleet policy grants it on {arn}"
    )


def _bucket(
    client: Callable[[str], Any], subject: str, bucket: str, prefix: str, key: str
) -> Iterator[Finding]:
    where = f"s3://{bucket}/{prefix}"

    def fix(code: str) -> str:
        if code in _DENIED:
            return f"grant s3:ListBucket on arn:aws:s3:::{bucket}"
        if code in _NO_BUCKET:
            return f"no such bucket: check {key}.bucket"
        if code in ("301", "PermanentRedirect", "AuthorizationHeaderMalformed"):
            return "the bucket is in another region than aws.region"
        return ""

    # The daemon's own listing: Prefix only when one is set (see sources/s3poll.py).
    args: dict[str, Any] = {"Bucket": bucket, "MaxKeys": 1}
    if prefix:
        args["Prefix"] = prefix
    try:
        listed = _call(lambda: client("s3").list_objects_v2(**args), fix)
    except _Failed as failed:
        yield Finding(subject, "ListObjectsV2", FAILED, f"{where}: {failed.detail()}")
    else:
        some = "keys under it" if listed.get("KeyCount") else "no keys under it yet"
        yield Finding(subject, "ListObjectsV2", OK, f"{where}: s3:ListBucket allowed; {some}")
    try:
        head = _call(lambda: client("s3").head_bucket(Bucket=bucket), fix)
    except _Failed as failed:
        yield Finding(subject, "HeadBucket", FAILED, f"s3://{bucket}: {failed.detail()}")
    else:
        headers = (head.get("ResponseMetadata") or {}).get("HTTPHeaders") or {}
        region = head.get("BucketRegion") or headers.get("x-amz-bucket-region") or "?"
        yield Finding(subject, "HeadBucket", OK, f"s3://{bucket}: exists, region {region}")

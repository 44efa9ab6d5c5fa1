"""The CloudFront edge: botocore calls in, model values and `SinkError`s out.

Every botocore exception is translated here (`translate`), so nothing above this module knows
botocore exists. botocore itself retries throttling, 5xx and transport errors (retry mode
"standard"); what still fails comes out as a `SinkError` whose `retryable` says whether the same
request may succeed later unchanged.

Logging never includes credentials or signed headers: only operation names, distribution ids,
error codes and counts. (botocore's own DEBUG logging prints request headers, including the
session token; keep the `botocore` logger at INFO or above.)
"""

from __future__ import annotations

import collections
import functools
import hashlib
import os
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar

import botocore.credentials
import botocore.exceptions
import botocore.regions
import botocore.session
import structlog
from botocore.config import Config

from invalidatord import __version__
from invalidatord.errors import (
    AccessProblem,
    CallerReferenceConflict,
    ConfigError,
    InvalidPaths,
    SinkError,
    TooManyInProgress,
)
from invalidatord.model import Invalidation

log = structlog.get_logger(__name__)

T = TypeVar("T")

#: The session name every assumed-role session carries (visible in CloudTrail).
ROLE_SESSION_NAME = "invalidatord"

#: The IAM action each operation needs, for AccessDenied messages an operator can act on.
IAM_ACTIONS = {
    "CreateInvalidation": "cloudfront:CreateInvalidation",
    "GetInvalidation": "cloudfront:GetInvalidation",
    "ListInvalidations": "cloudfront:ListInvalidations",
    "AssumeRole": "sts:AssumeRole",
}

_TOO_MANY = frozenset({"TooManyInvalidationsInProgress", "BatchTooLarge"})
_CREDENTIAL_CODES = frozenset(
    {
        "InvalidClientTokenId",
        "ExpiredToken",
        "ExpiredTokenException",
        "UnrecognizedClientException",
        "SignatureDoesNotMatch",
        "InvalidAccessKeyId",
        "MissingAuthenticationToken",
    }
)
_THROTTLING_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestThrottledException",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "SlowDown",
    }
)
_CREDENTIAL_EXCEPTIONS: tuple[type[Exception], ...] = (
    botocore.exceptions.NoCredentialsError,
    botocore.exceptions.PartialCredentialsError,
    botocore.exceptions.CredentialRetrievalError,
    botocore.exceptions.TokenRetrievalError,
    botocore.exceptions.UnauthorizedSSOTokenError,
    botocore.exceptions.SSOTokenLoadError,
)
# Transport trouble: the request may not have reached CloudFront, or its answer was lost.
_TRANSPORT_EXCEPTIONS: tuple[type[Exception], ...] = (
    botocore.exceptions.EndpointConnectionError,
    botocore.exceptions.ConnectionClosedError,
    botocore.exceptions.ReadTimeoutError,
    botocore.exceptions.ConnectTimeoutError,
    botocore.exceptions.ConnectionError,
    botocore.exceptions.HTTPClientError,
)

_STATUSES = {"completed": "Completed", "inprogress": "InProgress"}


def normalise_status(status: str) -> str:
    """CloudFront says "InProgress"/"Completed"; moto says "COMPLETED". Return CloudFront's."""
    return _STATUSES.get(status.replace("_", "").replace(" ", "").lower(), status)


def _one_line(text: str) -> str:
    return " ".join(text.split())


#: The codes `translate` gives when no credentials were found at all.
NO_CREDENTIALS = "NoCredentialsError"
#: AWS error codes that refuse the credentials themselves (not a missing permission).
CREDENTIAL_CODES = _CREDENTIAL_CODES
#: botocore exceptions of a request that may not have reached AWS.
TRANSPORT_EXCEPTIONS = _TRANSPORT_EXCEPTIONS


def no_credentials_help(profile: str | None, role_arn: str | None) -> str:
    """One line for `run` when boto3 found no credentials: the ways it tried (with the files
    it actually looked at) and what to do, under systemd in particular (DynamicUser= and
    ProtectHome= hide ~/.aws, so a profile there cannot work)."""
    session = botocore.session.Session(profile=profile)
    credentials_file = os.path.expanduser(str(session.get_config_variable("credentials_file")))
    config_file = os.path.expanduser(str(session.get_config_variable("config_file")))
    profile_part = f" (profile {profile!r})" if profile else ""
    role_part = f" (the base credentials for aws.role_arn {role_arn})" if role_arn else ""
    return (
        f"no AWS credentials found{role_part}: tried AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
        f"AWS_WEB_IDENTITY_TOKEN_FILE, {credentials_file} and {config_file}{profile_part}, "
        "the container role (AWS_CONTAINER_CREDENTIALS_*) and the EC2 instance role; "
        "give the host an instance role, or (under systemd) a drop-in with EnvironmentFile= "
        "or LoadCredential= plus AWS_SHARED_CREDENTIALS_FILE=%d/... (README: Credentials)"
    )


def translate(err: Exception, distribution: str) -> SinkError:
    """The `SinkError` that says what `err` (from a boto3 call about `distribution`) means."""
    if isinstance(err, SinkError):
        return err
    if isinstance(err, botocore.exceptions.ClientError):
        return _translate_client_error(err, distribution)
    name = type(err).__name__
    detail = _one_line(str(err)) or name
    if isinstance(err, _CREDENTIAL_EXCEPTIONS):
        return AccessProblem(
            distribution, name, f"no usable AWS credentials: {detail}", retryable=False
        )
    if isinstance(err, _TRANSPORT_EXCEPTIONS):
        return SinkError(distribution, name, detail, retryable=True)
    return SinkError(distribution, name, detail, retryable=False)


def _translate_client_error(err: botocore.exceptions.ClientError, distribution: str) -> SinkError:
    error = err.response.get("Error", {})
    code = str(error.get("Code") or "Unknown")
    message = _one_line(str(error.get("Message") or "")) or code
    status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    operation = err.operation_name
    kwargs: dict[str, Any] = {"http_status": status}
    if code in _TOO_MANY:
        return TooManyInProgress(distribution, code, message, retryable=True, **kwargs)
    if code == "InvalidationBatchAlreadyExists" or (
        code == "InvalidArgument" and "caller reference" in message.lower()
    ):
        return CallerReferenceConflict(distribution, code, message, retryable=False, **kwargs)
    if code == "InvalidArgument":
        return InvalidPaths(distribution, code, message, retryable=False, **kwargs)
    if code in ("AccessDenied", "AccessDeniedException"):
        action = IAM_ACTIONS.get(operation, f"the permission for {operation}")
        return AccessProblem(
            distribution,
            code,
            f"{action} is not allowed for these credentials ({message})",
            retryable=False,
            **kwargs,
        )
    if code == "NoSuchDistribution":
        return AccessProblem(
            distribution,
            code,
            f"no such distribution in this AWS account ({message})",
            retryable=False,
            **kwargs,
        )
    if code in _CREDENTIAL_CODES:
        return AccessProblem(
            distribution,
            code,
            f"the AWS credentials were refused during {operation} ({message})",
            retryable=False,
            **kwargs,
        )
    if code in _THROTTLING_CODES or (isinstance(status, int) and status >= 500):
        return SinkError(distribution, code, message, retryable=True, **kwargs)
    return SinkError(distribution, code, message, retryable=False, **kwargs)


# -- sessions ---------------------------------------------------------------------------------


class _SourceCredentials:
    """The base session's credentials, resolved when the role is (re)assumed, not before: a
    daemon that starts without credentials fails on its first call with a clear error."""

    def __init__(self, session: AwsSession) -> None:
        self._session = session

    def get_frozen_credentials(self) -> botocore.credentials.ReadOnlyCredentials:
        credentials = self._session.get_credentials()
        if credentials is None:
            raise botocore.exceptions.NoCredentialsError()
        return credentials.get_frozen_credentials()


class _AssumeRoleProvider(botocore.credentials.CredentialProvider):  # type: ignore[misc]
    METHOD = "invalidatord-assume-role"

    def __init__(self, fetcher: botocore.credentials.AssumeRoleCredentialFetcher) -> None:
        super().__init__()
        self._fetcher = fetcher

    def load(self) -> botocore.credentials.DeferredRefreshableCredentials:
        return botocore.credentials.DeferredRefreshableCredentials(
            refresh_using=self._fetcher.fetch_credentials, method=self.METHOD
        )


class AwsSession:
    """The session every AWS client of the daemon is made from: botocore's, with the part of
    boto3's Session the daemon uses (`client`, `get_credentials`, `region_name`). boto3 itself
    (resources, the S3 transfer manager and what it imports: multiprocessing,
    concurrent.futures) is about 2 MiB of the daemon's peak memory, for nothing it calls."""

    def __init__(self, region: str | None, profile: str | None) -> None:
        self.botocore = botocore.session.Session(profile=profile)
        if region is not None:
            self.botocore.set_config_variable("region", region)
        # a profile that does not exist raises ProfileNotFound here, not at the first call
        self.botocore.get_scoped_config()
        _lighten(self.botocore)

    @property
    def region_name(self) -> str | None:
        region = self.botocore.get_config_variable("region")
        return None if region is None else str(region)

    def client(self, service: str, *, endpoint_url: str | None = None, config: Any = None) -> Any:
        return self.botocore.create_client(
            service, region_name=self.region_name, endpoint_url=endpoint_url, config=config
        )

    def prefer_data(self, path: str) -> None:
        """Make the session's clients read botocore data (service models, in botocore's
        layout) from `path` first, botocore's own where `path` has none."""
        loader = self.botocore.get_component("data_loader")
        if path not in loader.search_paths:
            loader.search_paths.insert(0, path)

    def get_credentials(self) -> botocore.credentials.Credentials | None:
        return self.botocore.get_credentials()


def make_session(
    region: str | None,
    profile: str | None,
    role_arn: str | None,
    *,
    sts_endpoint_url: str | None = None,
    sts_config: Config | None = None,
) -> AwsSession:
    """A session from the standard credential chain (optionally a named profile).

    With `role_arn`, the session's credentials are that role's, assumed on first use (session
    name "invalidatord") and re-assumed before they expire, for as long as the daemon runs.
    `sts_endpoint_url` points the AssumeRole calls somewhere else (an emulator); `sts_config`
    gives them botocore settings (`check --online` wants short timeouts there too).
    Raises ConfigError when the profile does not exist.
    """
    try:
        base = AwsSession(region, profile)
    except botocore.exceptions.ProfileNotFound as exc:
        raise ConfigError([f"aws.profile: no AWS profile named {profile!r} ({exc})"]) from exc
    if role_arn is None:
        return base
    client_creator = functools.partial(
        base.botocore.create_client,
        region_name=base.region_name,
        endpoint_url=sts_endpoint_url,
        config=sts_config,
    )
    fetcher = botocore.credentials.AssumeRoleCredentialFetcher(
        client_creator=client_creator,
        source_credentials=_SourceCredentials(base),
        role_arn=role_arn,
        extra_args={"RoleSessionName": ROLE_SESSION_NAME},
    )
    assumed = AwsSession(region, profile)
    resolver = botocore.credentials.CredentialResolver(providers=[_AssumeRoleProvider(fetcher)])
    assumed.botocore.register_component("credential_provider", resolver)
    return assumed


def cut_service_model(model: dict[str, Any], operations: frozenset[str]) -> dict[str, Any]:
    """A service model (botocore's service-2 JSON) with only `operations`, the shapes they
    reach and every error shape (so a client's exception classes are all there), without
    documentation. An operation it does not have is a KeyError."""
    shapes = model["shapes"]
    kept: dict[str, Any] = {}
    todo = [name for name, shape in shapes.items() if shape.get("exception")]
    for name in operations:
        op = model["operations"][name]
        todo += [op[k]["shape"] for k in ("input", "output") if k in op]
        todo += [e["shape"] for e in op.get("errors", ())]
    while todo:
        name = todo.pop()
        if name in kept:
            continue
        shape = kept[name] = shapes[name]
        todo += [shape[k]["shape"] for k in ("member", "key", "value") if k in shape]
        todo += [m["shape"] for m in shape.get("members", {}).values()]
    cut = {
        **model,
        "operations": {name: model["operations"][name] for name in sorted(operations)},
        "shapes": {name: kept[name] for name in sorted(kept)},
    }
    return _undocumented(cut)  # type: ignore[no-any-return]


def _undocumented(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: _undocumented(v)
            for k, v in value.items()
            if k not in ("documentation", "documentationUrl")
        }
    if isinstance(value, list):
        return [_undocumented(v) for v in value]
    return value


#: The CloudFront operations `Boto3CloudFront` calls: its client has these alone.
CLOUDFRONT_OPERATIONS = frozenset({"CreateInvalidation", "GetInvalidation", "ListInvalidations"})
#: botocore data of our own, in botocore's layout: CloudFront's service model cut down to
#: `CLOUDFRONT_OPERATIONS` by `cut_service_model` (`scripts/cut-cloudfront-model` writes it
#: from the installed botocore; tests/test_cloudfront.py checks that they still agree). The
#: whole model, 167 operations and 829 shapes, is 3.0 MiB of Python objects that a client
#: holds for as long as it lives, and loading it then cutting it would leave that memory
#: fragmented: the cut one is 0.2 MiB.
DATA_PATH = os.path.join(os.path.dirname(__file__), "data", "botocore")

#: The services the daemon makes clients of: botocore's endpoint data is kept for these only.
AWS_SERVICES = frozenset({"cloudfront", "sts", "sqs", "s3"})


def _lighten(session: botocore.session.Session) -> None:
    """Make `session`'s endpoint resolver keep only `AWS_SERVICES` of botocore's endpoint
    data: all of it (endpoints.json, every service of every partition) is 6.7 MiB of Python
    objects that the session would hold for as long as it lives, to resolve four services.

    The resolver is built as botocore builds it, on the first client made, from the same
    data; the full data is dropped from the loader's cache once pruned, so that its memory is
    reused by what the daemon allocates next. Only botocore's internals allow this: when
    they are not as expected the session is left as it is (more memory, same behaviour)."""
    components = getattr(session, "_internal_components", None)
    register = getattr(components, "lazy_register_component", None)
    if register is None:
        return

    def pruned_resolver() -> botocore.regions.EndpointResolver:
        loader = session.get_component("data_loader")
        endpoints, path = loader.load_data_with_path("endpoints")
        cache = getattr(loader, "_cache", None)
        if isinstance(cache, dict):
            for key in [k for k, v in cache.items() if v is endpoints or v == (endpoints, path)]:
                del cache[key]
        kept = {
            **endpoints,
            "partitions": [
                {**p, "services": {n: v for n, v in p["services"].items() if n in AWS_SERVICES}}
                for p in endpoints["partitions"]
            ],
        }
        uses_builtin = loader.is_builtin_path(path)
        return botocore.regions.EndpointResolver(kept, uses_builtin_data=uses_builtin)

    register("endpoint_resolver", pruned_resolver)


# -- the edge ---------------------------------------------------------------------------------


def _epoch(value: Any) -> float | None:
    return value.timestamp() if isinstance(value, datetime) else None


def _invalidation(raw: dict[str, Any]) -> Invalidation:
    batch = raw.get("InvalidationBatch") or {}
    return Invalidation(
        id=str(raw["Id"]),
        status=normalise_status(str(raw.get("Status", ""))),
        create_time=_epoch(raw.get("CreateTime")),
        paths=tuple(batch.get("Paths", {}).get("Items", ())),
        caller_reference=batch.get("CallerReference"),
    )


class Boto3CloudFront:
    """`contracts.CloudFront` over botocore. Thread-safe (one client, which is)."""

    #: ListInvalidations page size.
    PAGE_SIZE = 100
    #: list_in_progress stops paging at invalidations created this long ago: CloudFront
    #: finishes in minutes (reports up to 40), and a busy distribution's history is long.
    IN_PROGRESS_HORIZON = 6 * 3600.0

    def __init__(
        self,
        session: AwsSession,
        *,
        endpoint_url: str | None = None,
        connect_timeout: float = 5,
        read_timeout: float = 30,
        max_attempts: int = 3,
    ) -> None:
        config = Config(
            # total_max_attempts counts the first attempt; plain max_attempts would not.
            retries={"mode": "standard", "total_max_attempts": max_attempts},
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            user_agent_extra=f"invalidatord/{__version__}",
        )
        # the session's CloudFront clients have CLOUDFRONT_OPERATIONS alone from now on
        session.prefer_data(DATA_PATH)
        self._session = session
        self._endpoint_url = endpoint_url
        self._config = config
        self._client: Any = None
        self._lock = threading.Lock()
        #: operation name -> calls made (each counted once, however many attempts it took).
        self.calls: collections.Counter[str] = collections.Counter()

    def _get_client(self) -> Any:
        """The botocore client, made on first use: making it resolves credentials, which may fail
        (PartialCredentialsError), and that failure belongs to a call, where it is translated."""
        with self._lock:
            if self._client is None:
                self._client = self._session.client(
                    "cloudfront", endpoint_url=self._endpoint_url, config=self._config
                )
            return self._client

    def _call(self, operation: str, distribution_id: str, fn: Callable[[Any], T]) -> T:
        with self._lock:
            self.calls[operation] += 1
        started = time.monotonic()
        try:
            result = fn(self._get_client())
        except Exception as exc:  # every failure is translated; none escapes this edge
            error = translate(exc, distribution_id)
            log.debug(
                "cloudfront_call_failed",
                operation=operation,
                distribution_id=distribution_id,
                code=error.code,
                retryable=error.retryable,
                seconds=round(time.monotonic() - started, 3),
            )
            raise error from exc
        log.debug(
            "cloudfront_call",
            operation=operation,
            distribution_id=distribution_id,
            seconds=round(time.monotonic() - started, 3),
        )
        return result

    def create_invalidation(
        self, distribution_id: str, paths: Sequence[str], caller_reference: str
    ) -> Invalidation:
        items = list(paths)
        response = self._call(
            "CreateInvalidation",
            distribution_id,
            lambda client: client.create_invalidation(
                DistributionId=distribution_id,
                InvalidationBatch={
                    "Paths": {"Quantity": len(items), "Items": items},
                    "CallerReference": caller_reference,
                },
            ),
        )
        return _invalidation(response["Invalidation"])

    def get_invalidation(self, distribution_id: str, invalidation_id: str) -> Invalidation:
        response = self._call(
            "GetInvalidation",
            distribution_id,
            lambda client: client.get_invalidation(
                DistributionId=distribution_id, Id=invalidation_id
            ),
        )
        return _invalidation(response["Invalidation"])

    def list_in_progress(self, distribution_id: str) -> list[Invalidation]:
        """Every invalidation still InProgress, newest first, with its paths.

        Pages through ListInvalidations (newest first) until the end or until invalidations
        older than IN_PROGRESS_HORIZON, then asks GetInvalidation for each InProgress one.
        """
        horizon = time.time() - self.IN_PROGRESS_HORIZON
        in_progress: list[str] = []
        marker = ""
        while True:
            listing = self._list(distribution_id, marker, self.PAGE_SIZE)
            items = listing.get("Items") or []  # CloudFront omits Items when there are none
            for item in items:
                if normalise_status(str(item.get("Status", ""))) == "InProgress":
                    in_progress.append(str(item["Id"]))
            oldest = _epoch(items[-1].get("CreateTime")) if items else None
            if not listing.get("IsTruncated") or (oldest is not None and oldest < horizon):
                break
            marker = str(listing.get("NextMarker") or items[-1]["Id"])
        return [self.get_invalidation(distribution_id, i) for i in in_progress]

    def check_distribution(self, distribution_id: str) -> None:
        """ListInvalidations with MaxItems=1: proves the credentials and the distribution."""
        self._list(distribution_id, "", 1)

    def _list(self, distribution_id: str, marker: str, max_items: int) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"DistributionId": distribution_id, "MaxItems": str(max_items)}
        if marker:
            kwargs["Marker"] = marker
        response = self._call(
            "ListInvalidations", distribution_id, lambda client: client.list_invalidations(**kwargs)
        )
        listing: dict[str, Any] = response.get("InvalidationList") or {}
        return listing


class DryRunCloudFront:
    """`contracts.CloudFront` that sends nothing: it logs `would_submit` for each batch (every
    path) and answers as if CloudFront had completed it at once, so the in-flight limits never
    hold a preview back. Nothing it answers is logged as Completed."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._made: dict[str, Invalidation] = {}
        #: operation name -> calls made, as Boto3CloudFront counts them.
        self.calls: collections.Counter[str] = collections.Counter()

    def create_invalidation(
        self, distribution_id: str, paths: Sequence[str], caller_reference: str
    ) -> Invalidation:
        digest = hashlib.sha256(f"{distribution_id}\0{caller_reference}".encode()).hexdigest()
        invalidation = Invalidation(
            id=f"DRYRUN{digest[:14].upper()}",
            status="Completed",
            create_time=time.time(),
            paths=tuple(paths),
            caller_reference=caller_reference,
        )
        with self._lock:
            self.calls["CreateInvalidation"] += 1
            invalidation = self._made.setdefault(invalidation.id, invalidation)
        log.info(
            "would_submit",
            distribution_id=distribution_id,
            caller_reference=caller_reference,
            paths=list(paths),
        )
        return invalidation

    def get_invalidation(self, distribution_id: str, invalidation_id: str) -> Invalidation:
        with self._lock:
            self.calls["GetInvalidation"] += 1
            made = self._made.get(invalidation_id)
        return made or Invalidation(id=invalidation_id, status="Completed")

    def list_in_progress(self, distribution_id: str) -> list[Invalidation]:
        with self._lock:
            self.calls["ListInvalidations"] += 1
        return []

    def check_distribution(self, distribution_id: str) -> None:
        with self._lock:
            self.calls["ListInvalidations"] += 1

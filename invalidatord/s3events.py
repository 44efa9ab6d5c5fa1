"""Parse the SQS message bodies a bucket's event notifications arrive in.

Pure: stdlib and `model` only. One function, `parse_message`, turns a body into the object
events that matter to a cache (an object appeared, changed or went away) and says precisely
what is wrong with anything else.

Shapes accepted (each may also be wrapped in an SNS envelope, see below):

1. S3 event notifications (bucket -> SQS, or bucket -> SNS with raw delivery):
   `{"Records": [{"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": ...},
   "object": {"key": ...}}}]}`. `s3.object.sequencer` and every other field are optional
   (moto omits the sequencer). The key is form-encoded (`red flower.jpg` -> `red+flower.jpg`,
   a literal `+` -> `%2B`, sometimes `/` -> `%2F`) and is decoded with `unquote_plus`.
   `{"Event": "s3:TestEvent", ...}` (sent on every notification configuration change) -> [].
2. SNS envelopes (bucket -> SNS -> SQS without raw delivery): `{"Type": "Notification",
   "TopicArn": ..., "Message": "<one of the other shapes, as a JSON string>"}`. A
   `SubscriptionConfirmation` or `UnsubscribeConfirmation` -> [].
3. EventBridge events (bucket -> EventBridge -> SQS, or -> SNS -> SQS): `{"source": "aws.s3",
   "detail-type": "Object Created", "detail": {"bucket": {"name": ...}, "object": {"key": ...}}}`.
   The key is taken as is: see `_eventbridge_key` for the evidence.

Which events count (the same rule for both routes, so one bucket gives the same changes
whichever way it is wired):

- notifications: `ObjectCreated:*` -> CREATED; `ObjectRemoved:*` and `LifecycleExpiration:*`
  -> DELETED (an expired object is as gone as a deleted one, and EventBridge reports both as
  "Object Deleted"). Everything else is ignored: restores, replication, lifecycle transitions,
  Intelligent-Tiering, tagging, ACL changes, lost RRS objects (the object's content at its URL
  does not change).
- EventBridge: `Object Created` -> CREATED, `Object Deleted` -> DELETED; every other
  detail-type is ignored.

An optional `s3:` prefix on event names (`s3:ObjectCreated:Put`, as S3-compatible stores such
as MinIO and Ceph send them) is accepted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote_plus

from invalidatord.model import ChangeKind

__all__ = ["KeyFilter", "MalformedMessage", "ObjectEvent", "directory", "excerpt", "parse_message"]

#: Longest excerpt of a malformed value quoted in a MalformedMessage.
EXCERPT_CHARS = 80

_CREATED_FAMILIES = frozenset({"ObjectCreated"})
_DELETED_FAMILIES = frozenset({"ObjectRemoved", "LifecycleExpiration"})
_EVENTBRIDGE_KINDS = {"Object Created": ChangeKind.CREATED, "Object Deleted": ChangeKind.DELETED}
_SNS_IGNORED_TYPES = frozenset({"SubscriptionConfirmation", "UnsubscribeConfirmation"})
_EXPECTED: dict[type, str] = {str: "a string", dict: "an object", list: "a list"}


@dataclass(frozen=True, slots=True)
class ObjectEvent:
    """One object of one bucket was created (or overwritten) or deleted."""

    bucket: str
    key: str  # the decoded object key, exactly as S3 stores it
    kind: ChangeKind  # CREATED or DELETED
    event_name: str  # "ObjectCreated:Put", "Object Deleted", ... as the message said it
    #: the object's ETag when the event carries one (s3.object.eTag, detail.object.etag),
    #: without quotes; None = not said. Not compared: it says which bytes, not which event
    etag: str | None = field(default=None, compare=False)


class MalformedMessage(ValueError):
    """The body is not an S3 event in any shape this module knows. `reason` says what is
    wrong and where; `excerpt` quotes the offending part (at most `EXCERPT_CHARS` long)."""

    def __init__(self, reason: str, excerpt: str = "") -> None:
        self.reason = reason
        self.excerpt = excerpt
        super().__init__(f"{reason}: {excerpt}" if excerpt else reason)


def directory(prefix: str) -> str:
    """A configured key prefix as a directory: no leading slash, one trailing slash ("" stays
    ""), so `site` and `site/` both mean the keys under `site/`."""
    stripped = prefix.strip("/")
    return f"{stripped}/" if stripped else ""


@dataclass(frozen=True, slots=True)
class KeyFilter:
    """Which objects an S3 source takes, and the change path of each: `bucket` (None = any)
    and `prefix` (a directory, see `directory`), which is stripped from the path."""

    bucket: str | None
    prefix: str

    @classmethod
    def of(cls, bucket: str | None, prefix: str) -> KeyFilter:
        return cls(bucket, directory(prefix))

    def path_of(self, bucket: str, key: str) -> tuple[str | None, str]:
        """The change path of object `key` of `bucket`, or (None, why it is not taken:
        `other_bucket`, `outside_prefix`, `prefix_itself`)."""
        if self.bucket is not None and bucket != self.bucket:
            return None, "other_bucket"
        if self.prefix:
            if not key.startswith(self.prefix):
                return None, "outside_prefix"
            key = key[len(self.prefix) :]
            if not key:
                return None, "prefix_itself"
        return key, ""


def parse_message(body: str) -> list[ObjectEvent]:
    """The object events in one SQS message body, in message order; [] for test events,
    SNS subscription confirmations and events that do not count (see the module docstring).

    Raises `MalformedMessage` for anything else: not JSON, an unknown shape, a missing or
    mistyped field, a key that does not decode to UTF-8.
    """
    return _parse_document(_load_json(body, "message body"), "", wrapped=False)


def _parse_document(doc: Any, where: str, *, wrapped: bool) -> list[ObjectEvent]:
    if not isinstance(doc, dict):
        raise MalformedMessage(
            f"{_name(where)} is a JSON {_json_type(doc)}, expected an object", excerpt(doc)
        )
    if "Records" in doc:
        return _parse_records(doc["Records"], f"{where}Records")
    if doc.get("Event") == "s3:TestEvent":
        return []
    if "TopicArn" in doc and "Type" in doc:
        return _parse_sns(doc, where, wrapped=wrapped)
    if "detail-type" in doc and "source" in doc:
        return _parse_eventbridge(doc, where)
    keys = ", ".join(sorted(str(k) for k in doc)[:8])
    raise MalformedMessage(
        f"{_name(where)} is not an S3 event notification (no 'Records'), an S3 test event, "
        "an SNS envelope or an EventBridge event",
        f"keys: {keys}" if keys else "{}",
    )


def _parse_sns(doc: dict[str, Any], where: str, *, wrapped: bool) -> list[ObjectEvent]:
    kind = doc["Type"]
    if kind in _SNS_IGNORED_TYPES:
        return []
    if kind != "Notification":
        raise MalformedMessage(f"{where}Type: unknown SNS message type", excerpt(kind))
    if wrapped:
        # SNS never wraps its own envelope; a second one means something re-published it.
        raise MalformedMessage(f"{where}Message: an SNS envelope inside an SNS envelope")
    inner = _field(doc, "Message", str, where)
    return _parse_document(_load_json(inner, f"{where}Message"), f"{where}Message.", wrapped=True)


def _parse_records(records: Any, where: str) -> list[ObjectEvent]:
    if not isinstance(records, list):
        raise MalformedMessage(
            f"{where} is a JSON {_json_type(records)}, expected a list", excerpt(records)
        )
    if not records:
        raise MalformedMessage(f"{where} is an empty list")
    events: list[ObjectEvent] = []
    for i, record in enumerate(records):
        at = f"{where}[{i}]"
        if not isinstance(record, dict):
            raise MalformedMessage(
                f"{at} is a JSON {_json_type(record)}, expected an object", excerpt(record)
            )
        event_name = _field(record, "eventName", str, at)
        kind = _notification_kind(event_name)
        if kind is None:
            continue
        s3 = _field(record, "s3", dict, at)
        bucket = _field(_field(s3, "bucket", dict, f"{at}.s3"), "name", str, f"{at}.s3.bucket")
        obj = _field(s3, "object", dict, f"{at}.s3")
        raw_key = _field(obj, "key", str, f"{at}.s3.object")
        _require_nonempty(bucket, f"{at}.s3.bucket.name")
        key = _decode_form_key(raw_key, f"{at}.s3.object.key")
        events.append(ObjectEvent(bucket, key, kind, event_name, _etag(obj.get("eTag"))))
    return events


def _notification_kind(event_name: str) -> ChangeKind | None:
    name = event_name.removeprefix("s3:")
    family = name.split(":", 1)[0]
    if family in _CREATED_FAMILIES:
        return ChangeKind.CREATED
    if family in _DELETED_FAMILIES:
        return ChangeKind.DELETED
    return None


def _parse_eventbridge(doc: dict[str, Any], where: str) -> list[ObjectEvent]:
    source = doc["source"]
    if source != "aws.s3":
        raise MalformedMessage(
            f"{where}source: an EventBridge event not from S3 (expected 'aws.s3')", excerpt(source)
        )
    detail_type = _field(doc, "detail-type", str, where)
    kind = _EVENTBRIDGE_KINDS.get(detail_type)
    if kind is None:
        return []
    detail = _field(doc, "detail", dict, where)
    bucket = _field(
        _field(detail, "bucket", dict, f"{where}detail"), "name", str, f"{where}detail.bucket"
    )
    obj = _field(detail, "object", dict, f"{where}detail")
    key = _field(obj, "key", str, f"{where}detail.object")
    _require_nonempty(bucket, f"{where}detail.bucket.name")
    return [
        ObjectEvent(
            bucket,
            _eventbridge_key(key, f"{where}detail.object.key"),
            kind,
            detail_type,
            _etag(obj.get("etag")),
        )
    ]


def _etag(value: object) -> str | None:
    """An ETag as events and listings spell it, quoted or not; anything else is not one."""
    return value.strip('"') or None if isinstance(value, str) else None


def _eventbridge_key(key: str, where: str) -> str:
    """EventBridge object keys are taken as they are, not form-decoded.

    The evidence, as of this writing:
    - The S3 User Guide states the form-encoding only for event notifications ("The object key
      name value is URL encoded", notification-content-structure); its EventBridge page
      (ev-events, "EventBridge event message structure") says nothing of encoding, and its
      examples use the key "example-key", which is the same either way.
    - An event captured from the real service and published as a GitHub gist
      (vincentclaes/7a5eb53acc05b316c86769fed25d4e1a, 2023, reason CompleteMultipartUpload)
      carries `"key": "raw/health-check/2023-08-08T14:03:40.532432.zip"`: the `:` is raw,
      where a notification form-encodes it as `%3A` (aws/aws-sdk-js#837 shows
      `test%2F10%3A47%3A07...` for a notification of a similar key).
    - EventBridge rules filter on `detail.object.key` with the plain key (a prefix containing
      `:` works in a rule, while a notification filter needs `%3A`: the classmethod.jp article
      "s3-event-notification-colon-issue-resolution", 2023).
    - moto sends the raw key to EventBridge (and the `quote_plus`-ed key to SQS/SNS/Lambda).
    - Against: AWS Lambda Powertools' `S3EventBridgeNotificationObject.key` applies
      `unquote_plus`, and OpenSearch Data Prepper url-decodes it; neither cites evidence, and
      decoding a raw key corrupts every key holding `+` (to a space) or `%XX`.
    So decoding would be wrong for the real service on exactly the keys where it matters.
    """
    _require_nonempty(key, where)
    return key


def _decode_form_key(raw: str, where: str) -> str:
    try:
        key = unquote_plus(raw, encoding="utf-8", errors="strict")
    except UnicodeDecodeError:
        raise MalformedMessage(f"{where} does not decode to UTF-8", excerpt(raw)) from None
    _require_nonempty(key, where)
    return key


def _field(obj: dict[str, Any], name: str, kind: type, where: str) -> Any:
    at = f"{where}.{name}" if where and not where.endswith(".") else f"{where}{name}"
    if name not in obj:
        raise MalformedMessage(f"{at} is missing")
    value = obj[name]
    if not isinstance(value, kind):
        expected = _EXPECTED.get(kind, kind.__name__)
        raise MalformedMessage(
            f"{at} is a JSON {_json_type(value)}, expected {expected}", excerpt(value)
        )
    return value


def _require_nonempty(value: str, where: str) -> None:
    if not value:
        raise MalformedMessage(f"{where} is empty")


def _load_json(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise MalformedMessage(
            f"{where} is not JSON ({exc.msg} at line {exc.lineno} column {exc.colno})",
            excerpt(text),
        ) from None
    except RecursionError:
        raise MalformedMessage(f"{where} is nested too deeply to parse", excerpt(text)) from None


def _name(where: str) -> str:
    """`where` as a reader sees it: "message" at the top, "Message" (not "Message.") inside."""
    return where.rstrip(".") or "message"


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    return "object"


def excerpt(value: Any, limit: int = EXCERPT_CHARS) -> str:
    """A one-line quotation of `value` at most `limit` characters long, for error messages and
    log lines: strings as they are, anything else re-serialised as JSON."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    text = " ".join(text.split())
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return text

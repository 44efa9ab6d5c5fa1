"""`s3events.parse_message` against recorded message shapes.

tests/data/s3events/ holds SQS message bodies:
- `moto-*.json`: recorded from moto 5.2.5 in server mode (bucket -> SQS, -> SNS -> SQS with and
  without raw delivery, -> EventBridge -> SQS), exactly as `ReceiveMessage` returned them;
- `aws-*.json`: the real service's shapes, written after the S3 User Guide's examples
  (notification-content-structure, ev-events) and SNS's documented envelope, with keys chosen to
  exercise the decoding;
- `malformed-*.json`: bodies that must be refused, each for one stated reason.
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest
from hypothesis import given
from hypothesis import strategies as st

from invalidatord.model import ChangeKind
from invalidatord.s3events import EXCERPT_CHARS, MalformedMessage, ObjectEvent, parse_message

DATA = Path(__file__).parent / "data" / "s3events"
C, D = ChangeKind.CREATED, ChangeKind.DELETED

EXPECTED: dict[str, list[ObjectEvent]] = {
    # moto, direct
    "moto-put-nested-space.json": [
        ObjectEvent("bucket-one", "dir/sub/red flower.jpg", C, "ObjectCreated:Put")
    ],
    "moto-put-plus.json": [ObjectEvent("bucket-one", "a+b.txt", C, "ObjectCreated:Put")],
    "moto-put-percent.json": [ObjectEvent("bucket-one", "100%.txt", C, "ObjectCreated:Put")],
    "moto-put-unicode.json": [ObjectEvent("bucket-one", "café/日本.html", C, "ObjectCreated:Put")],
    "moto-put-reserved.json": [
        ObjectEvent("bucket-one", "weird:;=&?#.txt", C, "ObjectCreated:Put")
    ],
    "moto-copy.json": [ObjectEvent("bucket-one", "copy.html", C, "ObjectCreated:Copy")],
    "moto-multipart.json": [
        ObjectEvent("bucket-one", "big.bin", C, "ObjectCreated:CompleteMultipartUpload")
    ],
    "moto-delete.json": [ObjectEvent("bucket-one", "plain.html", D, "ObjectRemoved:Delete")],
    "moto-test-event.json": [],
    # moto, via SNS and EventBridge
    "moto-sns.json": [ObjectEvent("bucket-two", "dir/red flower.jpg", C, "ObjectCreated:Put")],
    "moto-sns-raw.json": [ObjectEvent("bucket-two", "dir/red flower.jpg", C, "ObjectCreated:Put")],
    "moto-sns-test-event.json": [],
    "moto-eventbridge-created.json": [
        ObjectEvent("bucket-three", "dir/red flower+1.jpg", C, "Object Created")
    ],
    "moto-eventbridge-deleted.json": [
        ObjectEvent("bucket-three", "dir/red flower+1.jpg", D, "Object Deleted")
    ],
    # the real service's shapes
    "aws-put.json": [
        ObjectEvent("amzn-s3-demo-bucket", "images/2024/red flower+(1).jpg", C, "ObjectCreated:Put")
    ],
    "aws-post.json": [
        ObjectEvent("amzn-s3-demo-bucket", "uploads/€ 100% sure.pdf", C, "ObjectCreated:Post")
    ],
    "aws-delete.json": [
        ObjectEvent("amzn-s3-demo-bucket", "docs/old page.html", D, "ObjectRemoved:Delete")
    ],
    "aws-delete-marker.json": [
        ObjectEvent(
            "amzn-s3-demo-bucket", "docs/index.html", D, "ObjectRemoved:DeleteMarkerCreated"
        )
    ],
    "aws-lifecycle-expiration.json": [
        ObjectEvent("amzn-s3-demo-bucket", "tmp/report.csv", D, "LifecycleExpiration:Delete")
    ],
    "aws-restore-completed.json": [],
    "aws-replication-failed.json": [],
    "aws-multi-record.json": [
        ObjectEvent("amzn-s3-demo-bucket", "a/one.html", C, "ObjectCreated:Put"),
        # ObjectTagging:Put in between does not count
        ObjectEvent("other-bucket", "a/two.html", D, "s3:ObjectRemoved:Delete"),
    ],
    "aws-test-event.json": [],
    "aws-sns.json": [
        ObjectEvent("amzn-s3-demo-bucket", "site/about us/index.html", C, "ObjectCreated:Copy")
    ],
    "aws-sns-subscription-confirmation.json": [],
    "aws-eventbridge-created.json": [
        ObjectEvent(
            "amzn-s3-demo-bucket",
            "logs/2024-05-02T12:34:56 red flower+1.zip",
            C,
            "Object Created",
        )
    ],
    "aws-eventbridge-deleted.json": [
        ObjectEvent("amzn-s3-demo-bucket", "docs/index.html", D, "Object Deleted")
    ],
    "aws-eventbridge-expired.json": [
        ObjectEvent("amzn-s3-demo-bucket", "tmp/report.csv", D, "Object Deleted")
    ],
    "aws-eventbridge-restore-completed.json": [],
    "aws-sns-eventbridge.json": [
        ObjectEvent("amzn-s3-demo-bucket", "img/café/日本 語.png", C, "Object Created")
    ],
}

MALFORMED: dict[str, str] = {
    "malformed-truncated.json": "message body is not JSON (Unterminated string",
    "malformed-empty-records.json": "Records is an empty list",
    "malformed-missing-key.json": "Records[0].s3.object.key is missing",
    "malformed-key-not-string.json": (
        "Records[0].s3.object.key is a JSON number, expected a string: 42"
    ),
    "malformed-key-bad-utf8.json": "Records[0].s3.object.key does not decode to UTF-8: caf%E9",
    "malformed-unknown-shape.json": (
        "message is not an S3 event notification (no 'Records'), an S3 test event, an SNS "
        "envelope or an EventBridge event: keys: count, hello"
    ),
    "malformed-sns-message-not-json.json": "Message is not JSON (Expecting value",
    "malformed-eventbridge-other-source.json": (
        "source: an EventBridge event not from S3 (expected 'aws.s3'): aws.ec2"
    ),
    "malformed-eventbridge-no-detail.json": "detail is missing",
    "malformed-list.json": "message is a JSON list, expected an object",
}


def _body(name: str) -> str:
    return (DATA / name).read_text(encoding="utf-8")


def test_every_recorded_file_has_an_expectation() -> None:
    """No file in tests/data/s3events goes untested, and no expectation names a missing file."""
    on_disk = {p.name for p in DATA.glob("*.json")}
    assert on_disk == set(EXPECTED) | set(MALFORMED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_recorded_shapes_parse_to_the_exact_events(name: str) -> None:
    """Each recorded body yields exactly the expected object events, decoded keys included."""
    assert parse_message(_body(name)) == EXPECTED[name]


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_bodies_are_refused_with_a_specific_reason(name: str) -> None:
    """Each malformed body raises MalformedMessage saying what is wrong and where."""
    with pytest.raises(MalformedMessage) as caught:
        parse_message(_body(name))
    assert str(caught.value).startswith(MALFORMED[name])
    assert "\n" not in str(caught.value)


def test_malformed_message_is_a_value_error_with_reason_and_short_excerpt() -> None:
    """MalformedMessage is a ValueError whose excerpt quotes the bad value, short, on one line."""
    body = json.dumps({"Records": {"long": "x" * 500, "lines": "a\nb"}})
    with pytest.raises(ValueError, match="Records is a JSON object, expected a list") as caught:
        parse_message(body)
    error = caught.value
    assert isinstance(error, MalformedMessage)
    assert error.reason == "Records is a JSON object, expected a list"
    assert len(error.excerpt) == EXCERPT_CHARS
    assert error.excerpt.endswith("...")
    assert "\n" not in str(error)


def test_sns_envelope_inside_sns_envelope_is_refused() -> None:
    """An SNS envelope whose Message is again an SNS envelope is not something SNS produces."""
    inner = json.loads(_body("aws-sns.json"))
    outer = dict(inner, Message=json.dumps(inner))
    with pytest.raises(MalformedMessage, match="SNS envelope inside an SNS envelope"):
        parse_message(json.dumps(outer))


def test_unknown_sns_type_is_refused() -> None:
    """Only Notification, SubscriptionConfirmation and UnsubscribeConfirmation are SNS types."""
    envelope = dict(json.loads(_body("aws-sns.json")), Type="Surprise")
    with pytest.raises(MalformedMessage, match="Type: unknown SNS message type: Surprise"):
        parse_message(json.dumps(envelope))


def test_unsubscribe_confirmation_is_ignored() -> None:
    """An SNS UnsubscribeConfirmation carries no object events."""
    envelope = dict(json.loads(_body("aws-sns-subscription-confirmation.json")))
    envelope["Type"] = "UnsubscribeConfirmation"
    assert parse_message(json.dumps(envelope)) == []


@pytest.mark.parametrize(
    ("event_name", "kind"),
    [
        ("ObjectCreated:Put", C),
        ("ObjectCreated:Post", C),
        ("ObjectCreated:Copy", C),
        ("ObjectCreated:CompleteMultipartUpload", C),
        ("ObjectRemoved:Delete", D),
        ("ObjectRemoved:DeleteMarkerCreated", D),
        ("LifecycleExpiration:Delete", D),
        ("LifecycleExpiration:DeleteMarkerCreated", D),
        ("s3:ObjectCreated:Put", C),
        ("ObjectRestore:Post", None),
        ("ObjectRestore:Completed", None),
        ("ObjectRestore:Delete", None),
        ("Replication:OperationFailedReplication", None),
        ("Replication:OperationReplicatedAfterThreshold", None),
        ("LifecycleTransition", None),
        ("IntelligentTiering", None),
        ("ObjectTagging:Put", None),
        ("ObjectAcl:Put", None),
        ("ReducedRedundancyLostObject", None),
        ("SomethingNew:Happened", None),
    ],
)
def test_which_notification_events_count(event_name: str, kind: ChangeKind | None) -> None:
    """Created and removed/expired objects count; restores, replication, transitions, tags,
    ACLs and unknown names are ignored without needing any other field."""
    full = {"eventName": event_name, "s3": {"bucket": {"name": "b"}, "object": {"key": "k"}}}
    bare = {"eventName": event_name}
    expected = [] if kind is None else [ObjectEvent("b", "k", kind, event_name)]
    assert parse_message(json.dumps({"Records": [full]})) == expected
    if kind is None:
        assert parse_message(json.dumps({"Records": [bare]})) == []


@pytest.mark.parametrize(
    ("detail_type", "kind"),
    [
        ("Object Created", C),
        ("Object Deleted", D),
        ("Object Restore Initiated", None),
        ("Object Restore Completed", None),
        ("Object Restore Expired", None),
        ("Object Storage Class Changed", None),
        ("Object Access Tier Changed", None),
        ("Object ACL Updated", None),
        ("Object Tags Added", None),
        ("Object Tags Deleted", None),
        ("AWS API Call via CloudTrail", None),
    ],
)
def test_which_eventbridge_events_count(detail_type: str, kind: ChangeKind | None) -> None:
    """Only "Object Created" and "Object Deleted" count among S3's EventBridge events."""
    event = {
        "source": "aws.s3",
        "detail-type": detail_type,
        "detail": {"bucket": {"name": "b"}, "object": {"key": "a b+c"}},
    }
    expected = [] if kind is None else [ObjectEvent("b", "a b+c", kind, detail_type)]
    assert parse_message(json.dumps(event)) == expected


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ("red+flower.jpg", "red flower.jpg"),
        ("a%2Bb.txt", "a+b.txt"),
        ("100%25.txt", "100%.txt"),
        ("a%2Fb%2Fc.html", "a/b/c.html"),
        ("a/b/c.html", "a/b/c.html"),
        ("%E6%97%A5%E6%9C%AC%E8%AA%9E.html", "日本語.html"),
        ("sp++aces", "sp  aces"),
        ("tilde~and%7Ebrace%7B%7D", "tilde~and~brace{}"),
        ("half%2", "half%2"),
        ("%zz", "%zz"),
    ],
)
def test_notification_keys_are_form_decoded(raw: str, key: str) -> None:
    """Notification keys are decoded with unquote_plus: '+' is a space, %2B a plus, %25 a percent;
    a stray '%' that starts no escape stays as it is."""
    record = {
        "eventName": "ObjectCreated:Put",
        "s3": {"bucket": {"name": "b"}, "object": {"key": raw}},
    }
    assert parse_message(json.dumps({"Records": [record]}))[0].key == key


_keys = st.text(
    alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="\x00"),
    min_size=1,
    max_size=60,
)


@given(key=_keys)
def test_any_key_survives_form_encoding_both_ways(key: str) -> None:
    """Whatever the key, both encodings seen in the wild (moto's quote_plus, the real service's
    quote_plus leaving '/' alone) decode back to it exactly."""
    for raw in (quote_plus(key), quote_plus(key, safe="/")):
        record = {
            "eventName": "ObjectRemoved:Delete",
            "s3": {"bucket": {"name": "b"}, "object": {"key": raw}},
        }
        assert parse_message(json.dumps({"Records": [record]})) == [
            ObjectEvent("b", key, D, "ObjectRemoved:Delete")
        ]


@given(key=_keys)
def test_any_eventbridge_key_is_taken_verbatim(key: str) -> None:
    """EventBridge keys are not decoded: '+', '%XX' and spaces arrive and stay as they are."""
    for candidate in (key, quote(key), key + "+%41"):
        event = {
            "source": "aws.s3",
            "detail-type": "Object Created",
            "detail": {"bucket": {"name": "b"}, "object": {"key": candidate}},
        }
        assert parse_message(json.dumps(event))[0].key == candidate


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ('{"Records": [{"eventName": 7}]}', "Records[0].eventName is a JSON number"),
        ('{"Records": ["x"]}', "Records[0] is a JSON string, expected an object"),
        ('{"Records": [{"eventName": "ObjectCreated:Put"}]}', "Records[0].s3 is missing"),
        (
            '{"Records": [{"eventName": "ObjectCreated:Put", "s3": {"object": {"key": "k"}}}]}',
            "Records[0].s3.bucket is missing",
        ),
        (
            '{"Records": [{"eventName": "ObjectCreated:Put", "s3": '
            '{"bucket": {"name": ""}, "object": {"key": "k"}}}]}',
            "Records[0].s3.bucket.name is empty",
        ),
        (
            '{"Records": [{"eventName": "ObjectCreated:Put", "s3": '
            '{"bucket": {"name": "b"}, "object": {"key": ""}}}]}',
            "Records[0].s3.object.key is empty",
        ),
        (
            '{"source": "aws.s3", "detail-type": "Object Created", '
            '"detail": {"bucket": {"name": "b"}, "object": {}}}',
            "detail.object.key is missing",
        ),
        (
            '{"source": "aws.s3", "detail-type": 3, "detail": {}}',
            "detail-type is a JSON number, expected a string",
        ),
        (
            '{"Type": "Notification", "TopicArn": "t", "Message": {"Records": []}}',
            "Message is a JSON object, expected a string",
        ),
        (
            '{"Type": "Notification", "TopicArn": "t", "Message": "[1]"}',
            "Message is a JSON list, expected an object",
        ),
        (
            '{"Type": "Notification", "TopicArn": "t", "Message": "{\\"Records\\": 5}"}',
            "Message.Records is a JSON number, expected a list",
        ),
        ("", "message body is not JSON"),
        ("null", "message is a JSON null, expected an object"),
        ("[" * 100_000, "message body is"),
    ],
)
def test_missing_and_mistyped_fields_are_named(body: str, reason: str) -> None:
    """Every structural problem is reported with the JSON path of the offending field."""
    with pytest.raises(MalformedMessage) as caught:
        parse_message(body)
    assert str(caught.value).startswith(reason)

"""deploy/template.yaml (AWS SAM): valid for cfn-lint (SAM transform included), and wired the way
Lambda mode needs: a redrive policy to a dead-letter queue, a visibility timeout that outlasts
a batch, partial batch responses, a role that can do what the handler does and nothing else."""

from __future__ import annotations

import importlib
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from invalidatord.cloudfront import IAM_ACTIONS

TEMPLATE = Path(__file__).resolve().parent.parent / "deploy" / "template.yaml"


class _CfnLoader(yaml.SafeLoader):
    """YAML with CloudFormation's short tags: `!Ref X` -> {"Ref": X}, `!Sub s` -> {"Fn::Sub": s}."""


def _tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
        if suffix == "GetAtt":
            value = str(value).split(".", 1)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    return {"Ref" if suffix == "Ref" else f"Fn::{suffix}": value}


_CfnLoader.add_multi_constructor("!", _tag)


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    data: dict[str, Any] = yaml.load(TEMPLATE.read_text(encoding="utf-8"), Loader=_CfnLoader)  # noqa: S506 - a SafeLoader subclass
    return data


def resources(template: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {name: r for name, r in template["Resources"].items() if r["Type"] == kind}


def cfn_lint() -> str:
    found = shutil.which("cfn-lint", path=str(Path(sys.executable).parent)) or shutil.which(
        "cfn-lint"
    )
    if found is None:
        pytest.skip("cfn-lint is not installed (pip install cfn-lint aws-sam-translator)")
    return found


def test_cfn_lint_passes_with_informational_checks() -> None:
    """cfn-lint, which runs the SAM transform and checks the result against the resource
    specifications, reports nothing, informational findings included."""
    done = subprocess.run(
        [cfn_lint(), "--include-checks", "I", "--", str(TEMPLATE)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_cfn_lint_sees_into_the_sam_function(tmp_path: Path) -> None:
    """The lint is not vacuous: a retired runtime in the Serverless function is an error."""
    broken = tmp_path / "template.yaml"
    text = TEMPLATE.read_text(encoding="utf-8")
    assert "Runtime: python3.12" in text
    broken.write_text(text.replace("Runtime: python3.12", "Runtime: python2.7"), encoding="utf-8")
    done = subprocess.run(
        [cfn_lint(), "--", str(broken)], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode != 0
    assert "E2533" in done.stdout


def test_the_queue_redrives_to_the_dead_letter_queue_and_outlasts_a_batch(
    template: dict[str, Any],
) -> None:
    """Messages that keep failing move to the DLQ after MaxReceiveCount deliveries; the
    visibility timeout is at least six function timeouts plus the longest batching window
    (AWS's guidance); the message size is SQS's maximum."""
    queue = template["Resources"]["EventQueue"]["Properties"]
    function = template["Resources"]["InvalidatorFunction"]["Properties"]
    window = template["Parameters"]["BatchingWindowSeconds"]
    assert queue["RedrivePolicy"] == {
        "deadLetterTargetArn": {"Fn::GetAtt": ["DeadLetterQueue", "Arn"]},
        "maxReceiveCount": {"Ref": "MaxReceiveCount"},
    }
    assert queue["VisibilityTimeout"] >= 6 * function["Timeout"] + window["MaxValue"]
    assert window["MaxValue"] <= 300
    assert queue["MaximumMessageSize"] == 262144
    dlq = template["Resources"]["DeadLetterQueue"]["Properties"]
    assert dlq["MessageRetentionPeriod"] > queue["MessageRetentionPeriod"]


def test_the_function_consumes_the_queue_in_batches_with_partial_failures(
    template: dict[str, Any],
) -> None:
    """The handler named is the real one; the SQS event batches with a window (the debounce)
    and reports failures per message."""
    function = template["Resources"]["InvalidatorFunction"]["Properties"]
    module, _, name = function["Handler"].rpartition(".")
    assert callable(getattr(importlib.import_module(module), name))
    (event,) = function["Events"].values()
    assert event["Type"] == "SQS"
    props = event["Properties"]
    assert props["Queue"] == {"Fn::GetAtt": ["EventQueue", "Arn"]}
    assert props["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert props["MaximumBatchingWindowInSeconds"] == {"Ref": "BatchingWindowSeconds"}
    assert props["BatchSize"] == {"Ref": "BatchSize"}
    assert template["Parameters"]["BatchSize"]["MaxValue"] == 10000
    assert template["Parameters"]["BatchingWindowSeconds"]["MinValue"] >= 1  # BatchSize > 10


def test_the_role_allows_what_the_handler_does_and_nothing_more(template: dict[str, Any]) -> None:
    """The function's only role grants CreateInvalidation on the one distribution (the only
    CloudFront call Lambda mode makes), the three SQS consume actions on the one queue, and
    log writes to its own log group: no wildcard action or resource, no managed policy."""
    (role,) = resources(template, "AWS::IAM::Role").values()
    assert "ManagedPolicyArns" not in role["Properties"]
    function = template["Resources"]["InvalidatorFunction"]["Properties"]
    assert function["Role"] == {"Fn::GetAtt": ["FunctionRole", "Arn"]}
    assert "Policies" not in function
    grants: dict[str, Any] = {}
    for policy in role["Properties"]["Policies"]:
        for statement in policy["PolicyDocument"]["Statement"]:
            assert statement["Effect"] == "Allow"
            actions = statement["Action"]
            for action in [actions] if isinstance(actions, str) else actions:
                assert "*" not in action
                grants[action] = statement["Resource"]
    assert grants == {
        IAM_ACTIONS["CreateInvalidation"]: {
            "Fn::Sub": "arn:${AWS::Partition}:cloudfront::${AWS::AccountId}:"
            "distribution/${DistributionId}"
        },
        "sqs:ReceiveMessage": {"Fn::GetAtt": ["EventQueue", "Arn"]},
        "sqs:DeleteMessage": {"Fn::GetAtt": ["EventQueue", "Arn"]},
        "sqs:GetQueueAttributes": {"Fn::GetAtt": ["EventQueue", "Arn"]},
        "logs:CreateLogStream": {"Fn::Sub": "${FunctionLogGroup.Arn}:*"},
        "logs:PutLogEvents": {"Fn::Sub": "${FunctionLogGroup.Arn}:*"},
    }


def test_the_bucket_notifies_the_queue_which_accepts_only_that_bucket(
    template: dict[str, Any],
) -> None:
    """Created and removed objects notify the queue (under the prefix, if one is given); the
    queue policy lets S3 send for this bucket and account only, and exists before the
    bucket's notification is created."""
    bucket = template["Resources"]["OriginBucket"]
    assert bucket["DependsOn"] == "EventQueuePolicy"
    assert bucket["DeletionPolicy"] == "Retain"
    configs = bucket["Properties"]["NotificationConfiguration"]["QueueConfigurations"]
    assert {c["Event"] for c in configs} == {"s3:ObjectCreated:*", "s3:ObjectRemoved:*"}
    assert all(c["Queue"] == {"Fn::GetAtt": ["EventQueue", "Arn"]} for c in configs)
    (statement,) = template["Resources"]["EventQueuePolicy"]["Properties"]["PolicyDocument"][
        "Statement"
    ]
    assert statement["Principal"] == {"Service": "s3.amazonaws.com"}
    assert statement["Action"] == "sqs:SendMessage"
    assert statement["Condition"] == {
        "ArnLike": {"aws:SourceArn": {"Fn::Sub": "arn:${AWS::Partition}:s3:::${BucketName}"}},
        "StringEquals": {"aws:SourceAccount": {"Ref": "AWS::AccountId"}},
    }


def test_the_fleet_queue_is_fifo_with_a_fifo_dead_letter_queue(template: dict[str, Any]) -> None:
    """With CreateFleetQueue, a FIFO queue (explicit deduplication ids, no content-based
    deduplication) redrives to a FIFO dead-letter queue, and the publisher and invalidator
    policies grant the same actions as deploy/iam-policy-fleet-*.json, on that queue."""
    res = template["Resources"]
    queue, dlq = res["FleetQueue"], res["FleetDeadLetterQueue"]
    assert queue["Condition"] == dlq["Condition"] == "MakeFleet"
    props = queue["Properties"]
    assert props["FifoQueue"] is True
    assert dlq["Properties"]["FifoQueue"] is True
    assert props["ContentBasedDeduplication"] is False
    assert props["QueueName"]["Fn::Sub"].endswith(".fifo")
    assert dlq["Properties"]["QueueName"]["Fn::Sub"].endswith(".fifo")
    assert props["RedrivePolicy"] == {
        "deadLetterTargetArn": {"Fn::GetAtt": ["FleetDeadLetterQueue", "Arn"]},
        "maxReceiveCount": {"Ref": "MaxReceiveCount"},
    }
    deploy = TEMPLATE.parent
    for name, file in (
        ("FleetPublisherPolicy", "iam-policy-fleet-publisher.json"),
        ("FleetInvalidatorPolicy", "iam-policy-fleet-invalidator.json"),
    ):
        statements = res[name]["Properties"]["PolicyDocument"]["Statement"]
        shipped = json.loads((deploy / file).read_text())["Statement"]

        def actions(stmts: list[dict[str, Any]]) -> set[str]:
            out: set[str] = set()
            for s in stmts:
                out |= {s["Action"]} if isinstance(s["Action"], str) else set(s["Action"])
            return out

        assert actions(statements) == actions(shipped), name
        sqs = [s for s in statements if str(s["Action"]).find("sqs:") >= 0]
        assert all(s["Resource"] == {"Fn::GetAtt": ["FleetQueue", "Arn"]} for s in sqs)

"""The run metrics the failed-document alarm of deploy/aws/ray-cluster.yaml reads: what a run's summary
publishes to CloudWatch (moto's), through the Amazon provider's hook and the ``aws_default`` connection."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from include.control import metrics, report
from include.control.batching import RunPlan
from include.control.settings import get_control_settings, reload_settings

ROOT = Path(__file__).resolve().parents[3]
DEPLOYMENT = "docs-ingest"
CONNECTION = {"conn_type": "aws", "login": "x", "password": "y", "extra": {"region_name": "us-east-1"}}


@pytest.fixture
def env(monkeypatch):
    """The Airflow side's environment on AWS, with moto behind ``aws_default``."""
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", json.dumps(CONNECTION))
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                 "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PIPELINE_METRICS_DEPLOYMENT", DEPLOYMENT)
    reload_settings()
    with mock_aws():
        yield monkeypatch
    reload_settings()


def summary(**statuses: int) -> dict:
    """A run's summary as the summary task gets it, from ``report.summarize``: so many documents
    ended in each status (ingested, failed, quarantined, postponed)."""
    rows = [{"source_uri": f"s3://documents/inbox/{status}-{i}.pdf", "doc_id": f"{status}-{i}", "reason": "new",
             "status": status, "stage": None if status == "ingested" else "extract",
             "error": None if status == "ingested" else "bad", "cause": None}
            for status, n in statuses.items() for i in range(n)]
    return report.summarize("document_ingest", "manual__1", RunPlan(run_id="manual__1", batches=[]), {}, rows)


def published(region: str = "us-east-1") -> dict[str, tuple[float, float, str]]:
    """Each metric of the namespace with the Deployment dimension: (sum, sample count, unit) over the hour."""
    cloudwatch = boto3.client("cloudwatch", region_name=region)
    found = {}
    for metric in cloudwatch.list_metrics(Namespace="DocumentIngest")["Metrics"]:
        assert metric["Dimensions"] == [{"Name": "Deployment", "Value": DEPLOYMENT}], metric  # the only one
        now = datetime.now(UTC)
        (point,) = cloudwatch.get_metric_statistics(
            Namespace="DocumentIngest", MetricName=metric["MetricName"], Dimensions=metric["Dimensions"],
            StartTime=now - timedelta(hours=1), EndTime=now + timedelta(minutes=1), Period=3600,
            Statistics=["Sum", "SampleCount"], Unit="Count",
        )["Datapoints"]
        found[metric["MetricName"]] = (point["Sum"], point["SampleCount"], point["Unit"])
    return found


def test_a_run_publishes_its_ingested_and_failed_counts_and_quarantined_files_are_not_failures(env):
    run = summary(ingested=3, failed=1, quarantined=2, postponed=1)
    assert run["counts"]["failed"] == 1 and run["counts"]["quarantined"] == 2
    assert len(run["failed"]) == 3  # the run's own failure list names the quarantined files too: not the metric

    assert metrics.publish_run(run) is True

    assert published() == {"DocumentsIngested": (3.0, 1.0, "Count"), "DocumentsFailed": (1.0, 1.0, "Count")}


def test_zeros_are_published_one_datum_each(env):
    assert metrics.publish_run(summary()) is True  # a run that ingested nothing and failed nothing

    assert published() == {"DocumentsIngested": (0.0, 1.0, "Count"), "DocumentsFailed": (0.0, 1.0, "Count")}


def test_runs_add_up_in_the_alarms_hour(env):
    metrics.publish_run(summary(ingested=9, failed=1))
    metrics.publish_run(summary(ingested=1))

    assert published() == {"DocumentsIngested": (10.0, 2.0, "Count"), "DocumentsFailed": (1.0, 2.0, "Count")}


def test_the_metrics_go_to_the_stacks_region(env):
    """PIPELINE_AWS_REGION (the AirflowEnvironment output sets it): the alarm reads its own region."""
    env.setenv("PIPELINE_AWS_REGION", "eu-west-1")
    reload_settings()

    metrics.publish_run(summary(ingested=2))

    assert published("eu-west-1")["DocumentsIngested"] == (2.0, 1.0, "Count")
    assert published("us-east-1") == {}


@pytest.mark.parametrize("value", [None, ""])
def test_nothing_is_published_without_a_deployment(env, value):
    if value is None:
        env.delenv("PIPELINE_METRICS_DEPLOYMENT")
    else:
        env.setenv("PIPELINE_METRICS_DEPLOYMENT", value)
    reload_settings()
    assert get_control_settings().metrics_deployment in (None, "")

    assert metrics.publish_run(summary(ingested=1, failed=1)) is False

    assert boto3.client("cloudwatch", region_name="us-east-1").list_metrics()["Metrics"] == []


def test_a_failed_call_to_cloudwatch_is_a_warning_and_the_run_goes_on(env, caplog):
    """As when the role may not PutMetricData (the stack's IAM condition refuses another namespace)."""
    from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook
    from botocore.stub import Stubber

    client = boto3.client("cloudwatch", region_name="us-east-1")
    stub = Stubber(client)
    stub.add_client_error("put_metric_data", service_error_code="AccessDenied", http_status_code=403,
                          service_message="not authorized to perform: cloudwatch:PutMetricData")
    stub.activate()
    env.setattr(AwsBaseHook, "get_conn", lambda self: client)

    with caplog.at_level(logging.WARNING, logger="include.control.metrics"):
        assert metrics.publish_run(summary(ingested=2, failed=1)) is False

    stub.assert_no_pending_responses()  # it did call CloudWatch
    (record,) = [r for r in caplog.records if r.name == "include.control.metrics"]
    assert record.levelno == logging.WARNING
    message = record.getMessage()
    assert "ClientError" in message and "AccessDenied" in message and "PutMetricData" in message
    assert "manual__1" in message and f"Deployment={DEPLOYMENT}" in message
    assert "DocumentsIngested=2, DocumentsFailed=1" in message


def test_the_publisher_is_airflow_side_only():
    """Importing it (and its settings) loads nothing of the data plane."""
    code = ("import sys, include.control.metrics\n"
            "heavy = {'docling', 'torch', 'ray', 'chromadb', 'pinecone', 'transformers'}\n"
            "print(sorted(heavy & {name.split('.')[0] for name in sys.modules}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"

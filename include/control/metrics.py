"""The run metrics the Airflow side publishes to CloudWatch, which the failed-document alarm of
``deploy/aws/ray-cluster.yaml`` reads (see ``deploy/aws/README.md``, "Metrics the Airflow side publishes").

One datum of each metric per ingest run, zeros included, from the summary task:

- ``DocumentsIngested``: the run report's ``counts["ingested"]``;
- ``DocumentsFailed``: its ``counts["failed"]``. Quarantined bad files have a status of their own
  (``counts["quarantined"]``), and so do the files the plan could not read (``counts["unreadable"]``):
  neither is counted here.

Namespace ``DocumentIngest`` (the namespace the stack's IAM condition allows and the alarm reads), one
dimension ``Deployment`` = ``PIPELINE_METRICS_DEPLOYMENT``; unset, nothing is published. Counts rather
than a rate: counts of the runs of an hour add up, rates of runs of different sizes do not.

Airflow side only: the Amazon provider's hook and the settings, nothing of the data plane.
"""

from __future__ import annotations

import logging
from typing import Any

from include.control.settings import ControlSettings, get_control_settings

log = logging.getLogger(__name__)

# Fixed, not a setting: the stack's IAM policy allows PutMetricData in this namespace only and its
# alarm reads this namespace; another value could only make the metrics unreadable or refused.
NAMESPACE = "DocumentIngest"
DIMENSION = "Deployment"
METRICS = {"DocumentsIngested": "ingested", "DocumentsFailed": "failed"}  # metric name: key of the counts
AWS_CONN_ID = "aws_default"


def metric_data(summary: dict[str, Any], deployment: str) -> list[dict[str, Any]]:
    """The run's data points: one per metric, zeros included."""
    counts = summary["counts"]
    return [{"MetricName": name, "Dimensions": [{"Name": DIMENSION, "Value": deployment}],
             "Value": float(counts.get(key, 0)), "Unit": "Count"}
            for name, key in METRICS.items()]


def publish_run(summary: dict[str, Any], settings: ControlSettings | None = None) -> bool:
    """Publish the run's counts if ``PIPELINE_METRICS_DEPLOYMENT`` is set. True if it published.

    Never raises: the metrics are observability, and by the time they are sent the run's work is done
    and settled in the ledger and the report. A failure to publish (no credentials, no permission,
    CloudWatch unreachable, a throttled call) is logged as a warning naming the cause, and the run
    goes on to its own verdict. The alarm then sees one run fewer in its hour.
    """
    settings = settings or get_control_settings()
    deployment = settings.metrics_deployment
    if not deployment:
        return False
    data = metric_data(summary, deployment)
    shown = ", ".join(f"{d['MetricName']}={int(d['Value'])}" for d in data)
    try:
        from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook

        # There is no CloudWatch (metrics) hook in the Amazon provider: the base hook gives the client,
        # with the connection's credentials. The region is the stack's (PIPELINE_AWS_REGION, from the
        # template's AirflowEnvironment output): metrics are regional, and the alarm reads its own region.
        client = AwsBaseHook(aws_conn_id=AWS_CONN_ID, client_type="cloudwatch",
                             region_name=settings.aws_region).get_conn()
        client.put_metric_data(Namespace=NAMESPACE, MetricData=data)
    except Exception as exc:  # noqa: BLE001 - whatever went wrong, the run must not fail for it
        log.warning("run %s: metrics not published to CloudWatch (namespace %s, %s=%s, %s): %s: %s",
                    summary.get("run_id"), NAMESPACE, DIMENSION, deployment, shown, type(exc).__name__, exc)
        return False
    log.info("run %s: published %s to CloudWatch (namespace %s, %s=%s)", summary.get("run_id"), shown,
             NAMESPACE, DIMENSION, deployment)
    return True

"""The job contract both tiers import: its names agree with the code that fills them."""

from __future__ import annotations

from include.backends.openai_api import Usage
from include.contract import SPEND_METRICS, PruneResult, now


def test_the_spend_metrics_are_the_metrics_a_paid_call_reports():
    assert tuple(Usage().metrics()) == SPEND_METRICS


def test_a_prune_result_reads_back_as_written():
    written = PruneResult(status="succeeded", removed={"s3://b/inbox/a #1.pdf": 3}, started_at=now(),
                          finished_at=now(), metrics={"vectors_removed": 3.0})
    assert PruneResult.model_validate_json(written.model_dump_json()) == written

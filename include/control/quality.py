"""The run's own quality checks, and its Data Docs: on the Airflow side, from the run's summary.

The stage gates check each document inside its stage's job (``include.quality.suites``); what only
the whole run can tell is checked here, with plain GX (the GX provider pins a structlog older than
Airflow 3's), on a frame of one row per document the run processed, read from the summary and the
ledger (small: no document's content):

- every ingested document has as many vectors as chunks (so the run's totals agree);
- every document ends settled (ingested, failed, quarantined or postponed), and none is still
  claimed by the run once it is summarized.

Then every validation of the run (the stage gates' results, which the jobs wrote beside their
batch results, and this one) is rendered as one Data Docs site in the run's folder.
"""

from __future__ import annotations

import logging
from typing import Any

from include.control.settings import ControlSettings
from include.storage import Storage

log = logging.getLogger(__name__)

SETTLED = ("ingested", "failed", "quarantined", "postponed")


def run_checks(touched: list[dict[str, Any]], claimed: set[str]) -> Any:
    """``touched``: the summary's row per document processed; ``claimed``: the sources the ledger
    still has claimed by this run."""
    import great_expectations.expectations as gxe
    import pandas as pd

    from include.quality.expectations import Checks

    frame = pd.DataFrame({
        "document": [row["doc_id"] for row in touched],
        "status": [row["status"] for row in touched],
        "chunks": [row.get("chunks") for row in touched],
        "vectors": [row.get("vectors") for row in touched],
        "claimed_after_run": [row["source_uri"] in claimed for row in touched],
    })
    ingested = {"row_condition": 'status=="ingested"', "condition_parser": "pandas"}
    return Checks("run", frame, [
        gxe.ExpectColumnPairValuesToBeEqual(column_A="vectors", column_B="chunks", **ingested),
        gxe.ExpectColumnValuesToNotBeNull(column="vectors", **ingested),
        gxe.ExpectColumnValuesToBeInSet(column="status", value_set=list(SETTLED)),
        gxe.ExpectColumnValuesToBeInSet(column="claimed_after_run", value_set=[False]),
    ])


def check_run(settings: ControlSettings, storage: Storage, folder: str, run_id: str, touched: list[dict[str, Any]],
              claimed: set[str], validation_uris: list[str]) -> dict[str, Any]:
    """The run's checks and its Data Docs: what the report says of the run's quality. A failure to
    render is reported, never raised: the run's documents are settled already."""
    from include.quality.expectations import failures, validate

    mode = settings.quality.run
    validations = [record for uri in validation_uris for record in storage.read_json(uri)]
    quality: dict[str, Any] = {
        "validations": len(validations),
        "failed": sum(not v["success"] and v["mode"] == "fail" for v in validations),
        "warned": sum(not v["success"] and v["mode"] == "warn" for v in validations),
        "run_mode": mode, "run_failures": [],
    }
    if mode != "off" and touched:
        result = validate(run_checks(touched, claimed))
        validations.append({"stage": "run", "suite": "run", "doc_id": None, "mode": mode,
                            "success": result["success"], "result": result})
        quality["run_failures"] = failures(result)
        for failure in quality["run_failures"]:
            log.error("the run's quality check failed: %s", failure)
    if validations:
        from include.quality.docs import publish

        try:
            quality.update(publish(storage, folder, validations, run_name=run_id,
                                   max_passed=settings.quality.data_docs_max_passed))
        except Exception as exc:  # the report says so; the validations themselves are kept by the jobs
            log.exception("the run's Data Docs could not be rendered")
            quality["data_docs_error"] = f"{type(exc).__name__}: {exc}"
    return quality

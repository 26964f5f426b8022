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
    from include.quality.expectations import Checks, expect

    columns = {
        "document": [row["doc_id"] for row in touched],
        "status": [row["status"] for row in touched],
        "chunks": [row.get("chunks") for row in touched],
        "vectors": [row.get("vectors") for row in touched],
        "claimed_after_run": [row["source_uri"] in claimed for row in touched],
    }
    ingested = {"row_condition": 'status=="ingested"', "condition_parser": "pandas"}
    return Checks("run", columns, [
        expect("ExpectColumnPairValuesToBeEqual", column_A="vectors", column_B="chunks", **ingested),
        expect("ExpectColumnValuesToNotBeNull", column="vectors", **ingested),
        expect("ExpectColumnValuesToBeInSet", column="status", value_set=list(SETTLED)),
        expect("ExpectColumnValuesToBeInSet", column="claimed_after_run", value_set=[False]),
    ])


def check_run(settings: ControlSettings, storage: Storage, folder: str, run_id: str, touched: list[dict[str, Any]],
              claimed: set[str], validation_files: list[tuple[str, int]],
              stages: dict[str, dict[str, float]]) -> dict[str, Any]:
    """The run's checks and its Data Docs: what the report says of the run's quality. A failure to
    render is reported, never raised: the run's documents are settled already.

    ``validation_files``: each stage job's file of validation results, with how many failed or
    warned; ``stages``: the stages' totals (their jobs counted the validations)."""
    from include.quality.expectations import failures, validate

    mode = settings.quality.run
    total = {name: int(sum(t.get(f"quality_{name}", 0) for t in stages.values()))
             for name in ("validations", "failed", "warned")}
    validations = rendered(storage, validation_files, settings.quality.data_docs_max_passed)
    quality: dict[str, Any] = {**total, "passed_not_rendered": total["validations"] - len(validations),
                               "run_mode": mode, "run_failures": []}
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
            quality.update(publish(storage, folder, validations, run_name=run_id))
        except Exception as exc:  # the report says so; the validations themselves are kept by the jobs
            log.exception("the run's Data Docs could not be rendered")
            quality["data_docs_error"] = f"{type(exc).__name__}: {exc}"
    return quality


def rendered(storage: Storage, files: list[tuple[str, int]], max_passed: int) -> list[dict[str, Any]]:
    """The validations the Data Docs show: every failed or warned one, and passed ones up to
    ``max_passed``; a file is read only if it holds either (a run of many batches does not read
    them all)."""
    shown: list[dict[str, Any]] = []
    passed = 0
    for uri, problems in sorted(files, key=lambda file: -file[1]):
        if not problems and passed >= max_passed:
            break
        for record in storage.read_json(uri):
            if not record["success"]:
                shown.append(record)
            elif passed < max_passed:
                shown.append(record)
                passed += 1
    return shown


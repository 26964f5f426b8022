"""Command line of a stage over one batch: the entrypoint of every Ray job the DAG submits.

    python -m include.stages extract --batch s3://.../batch-0001/batch.json
    python -m include.stages chunk --upstream s3://.../batch-0001/extract/<job>.json

The first stage reads the batch's documents; every later stage reads the previous
stage's batch result and takes the documents that succeeded there. The batch result
goes to ``--result`` (default ``$JOB_RESULT_URI``, which the Airflow operator sets
per job). Exit code 0: the batch ran, each document succeeded or failed on its own
(bad input); 1: the job failed (cluster, storage, a bug) and a retry may help. The
result is written in both cases.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import dataclass, field

from include.contract import (
    BatchResult,
    BatchSpec,
    DocumentOutcome,
    JobResult,
    StageManifest,
    now,
    validations_uri,
)
from include.fingerprints import STAGE_ORDER
from include.settings import PipelineSettings, get_settings
from include.stages import STAGES
from include.stages.base import StageInput, first_stage_inputs, run_stage
from include.stages.execution import run_inline, run_on_ray
from include.storage import Storage

log = logging.getLogger("include.stages")


@dataclass
class Inputs:
    batch_id: str
    items: list[StageInput]
    # Documents the first stage settles unrun (unchanged, or gone since listed).
    settled: list[DocumentOutcome] = field(default_factory=list)
    # What is left of the batch's budget for paid calls (None: no limit).
    budget_usd: float | None = None


def load_inputs(stage: str, settings: PipelineSettings, *, batch: str | None, upstream: str | None) -> Inputs:
    """The batch id, the documents this stage runs over, those the first stage settles unrun, the budget."""
    storage = Storage(settings)
    if batch:
        spec = BatchSpec.model_validate(storage.read_json(batch))
        items, settled = first_stage_inputs(storage, spec.documents, spec.ingested_sha256)
        return Inputs(spec.batch_id, items, settled, spec.budget_usd)
    previous = BatchResult.model_validate(storage.read_json(upstream))
    expected = STAGE_ORDER[STAGE_ORDER.index(stage) - 1] if STAGE_ORDER.index(stage) else None
    if previous.stage != expected or previous.status != "succeeded":
        raise RuntimeError(f"{upstream} is a {previous.status} result of {previous.stage!r}, not a "
                           f"succeeded result of {expected!r}: it cannot feed {stage!r}")
    items = []
    for outcome in previous.succeeded:
        manifest = StageManifest.model_validate(storage.read_json(outcome.manifest_uri))
        if manifest.status != "succeeded":
            raise RuntimeError(f"{outcome.manifest_uri} no longer records success (overwritten by another run?)")
        items.append(StageInput(manifest.document, manifest, outcome.manifest_uri))
    return Inputs(previous.batch_id, items, budget_usd=previous.budget_usd_left)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m include.stages", description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=STAGE_ORDER)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--batch", help="URI of a batch file (the first stage)")
    source.add_argument("--upstream", help="URI of the previous stage's batch result")
    parser.add_argument("--result", default=os.environ.get("JOB_RESULT_URI"),
                        help="where to write the batch result (default: $JOB_RESULT_URI)")
    parser.add_argument("--recompute", action="store_true", help="redo every document, reuse nothing")
    parser.add_argument("--inline", action="store_true", help="run in this process, without Ray")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stdout)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # the Chroma client logs every request
    settings = get_settings()
    storage = Storage(settings)
    submission_id = os.environ.get("JOB_SUBMISSION_ID")
    started = now()
    batch_id = "unknown"
    try:
        inputs = load_inputs(args.stage, settings, batch=args.batch, upstream=args.upstream)
        batch_id = inputs.batch_id
        log.info("%s of %s: %d document(s)%s", args.stage, batch_id, len(inputs.items),
                 f", job {submission_id}" if submission_id else "")
        validator = None
        if not args.inline:
            import ray

            from include.stages import warm

            ray.init(logging_level=logging.WARNING, log_to_driver=True)
            validator = warm.validator(settings)
            if inputs.items:
                warm.start_next_stage(args.stage, settings)
        result = run_stage(
            STAGES[args.stage], settings, inputs.items, batch_id=batch_id, recompute=args.recompute,
            submission_id=submission_id, executor=run_inline if args.inline else run_on_ray,
            settled=inputs.settled, budget_usd=inputs.budget_usd, validations_uri=validations_uri(args.result),
            validator=validator,
        )
    except Exception as exc:
        log.error("%s of %s failed: %s", args.stage, batch_id, exc)
        result = BatchResult(stage=args.stage, batch_id=batch_id, submission_id=submission_id,
                             started_at=started, finished_at=now(), **JobResult.failure_fields(exc))
    if args.result:
        storage.write_json(args.result, result.model_dump(mode="json"))
    ok, bad = len(result.succeeded), len(result.failed)
    print(f"RESULT: {args.stage} of {batch_id} {result.status}: {ok} succeeded, {bad} failed", flush=True)
    for outcome in result.failed:
        print(f"FAILED: {outcome.source_uri}: {outcome.error}", flush=True)
    return 0 if result.status == "succeeded" else 1


def _exit(code: int) -> None:
    """Leave as soon as the result is out: the job ends when this process does, and the interpreter's
    own teardown (GX, pandas, torch and their threads) takes seconds, measured at 1.6 s with GX alone
    against 0.3 s this way, that every stage job of a small drop would wait for."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            ray.shutdown()  # tells the cluster this driver is done: nothing it owns is left waiting
    os._exit(code)


if __name__ == "__main__":
    _exit(main())

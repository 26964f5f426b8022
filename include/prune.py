"""The prune job: the vectors of sources a run deleted or quarantined leave the store.

    python -m include.prune --spec s3://.../runs/<dag>/<run>/prune.json

It runs on the Ray cluster, where the store's credentials are; the Airflow side only
writes the spec (``include.control.ingest.finish_run``) and records the result in the ledger.
Removing a source's vectors twice removes nothing the second time, so a retried job
is harmless. Exit code 0 when every source was pruned; 1 otherwise (a retry may help).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from include.backends.vector_stores import build_vector_store
from include.contract import JobResult, PruneResult, PruneSpec, now
from include.settings import get_settings
from include.storage import Storage

log = logging.getLogger("include.prune")


def prune(spec: PruneSpec) -> dict[str, int]:
    """Vectors removed per source."""
    store = build_vector_store(get_settings())
    removed = {}
    for uri in spec.source_uris:
        removed[uri] = store.delete_stale(uri, keep_ids=set())
        log.info("PRUNED %s: %d vector(s) removed", uri, removed[uri])
    return removed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m include.prune", description=__doc__.splitlines()[0])
    parser.add_argument("--spec", required=True, help="URI of the run's prune spec")
    parser.add_argument("--result", default=os.environ.get("JOB_RESULT_URI"),
                        help="where to write the result (default: $JOB_RESULT_URI)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stdout)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    storage = Storage(get_settings())
    started = now()
    fields: dict[str, object] = {"submission_id": os.environ.get("JOB_SUBMISSION_ID"), "started_at": started}
    try:
        removed = prune(PruneSpec.model_validate(storage.read_json(args.spec)))
        result = PruneResult(**fields, status="succeeded", removed=removed, finished_at=now(),
                             metrics={"sources": len(removed), "vectors_removed": sum(removed.values())})
    except Exception as exc:
        log.error("prune failed: %s", exc)
        result = PruneResult(**fields, finished_at=now(), **JobResult.failure_fields(exc))
    if args.result:
        storage.write_json(args.result, result.model_dump(mode="json"))
    print(f"RESULT: prune {result.status}: {int(result.metrics.get('vectors_removed', 0))} vector(s) removed",
          flush=True)
    return 0 if result.status == "succeeded" else 1


if __name__ == "__main__":
    sys.exit(main())

"""Command line of a stage: the entrypoint of every Ray job the DAG submits.

The job driver reserves no CPU; the stage's work runs as a Ray task that does
(``PIPELINE_RAY_STAGE_CPUS``), or, for the embed stage, on a Ray Data actor pool.
Exit code 0 = succeeded, 2 = the document is bad (the message says why),
1 = anything else. The manifest is written in every case.
"""

from __future__ import annotations

import argparse
import logging
import sys

from include.documents import DocumentRef
from include.settings import get_settings
from include.stages import STAGES
from include.stages.base import DocumentError, Metrics, Outputs, StageContext, StageFn, execute_stage

EXIT_BAD_DOCUMENT = 2


def run_as_ray_task(fn: StageFn, ctx: StageContext) -> tuple[Outputs, Metrics]:
    import ray
    from ray.exceptions import RayTaskError

    remote = ray.remote(num_cpus=ctx.settings.ray_stage_cpus, max_retries=0)(fn)
    try:
        return ray.get(remote.remote(ctx))
    except RayTaskError as exc:
        # Surface the stage's own exception (and its message), not Ray's wrapper.
        raise exc.cause from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m include.stages")
    parser.add_argument("stage", choices=sorted(STAGES))
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--document", help="JSON of a DocumentRef (the first stage)")
    source.add_argument("--upstream", help="URI of the previous stage's manifest")
    args = parser.parse_args(argv)

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stdout
    )
    import ray

    ray.init(logging_level=logging.WARNING, log_to_driver=True)
    try:
        manifest = execute_stage(
            STAGES[args.stage],
            get_settings(),
            document=DocumentRef.model_validate_json(args.document) if args.document else None,
            upstream_manifest_uri=args.upstream,
            executor=run_as_ray_task,
        )
    except DocumentError as exc:
        print(f"BAD DOCUMENT: {exc}", flush=True)
        return EXIT_BAD_DOCUMENT
    print(f"RESULT: {manifest.status} {manifest.model_dump_json(include={'outputs', 'metrics'})}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

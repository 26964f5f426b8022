"""The prune job: the vectors and artifacts of sources a run deleted, quarantined or erased leave,
and the artifacts of the older versions of sources it replaced.

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
from include.contract import JobResult, PruneResult, PruneSpec, StageManifest, now
from include.documents import document_id, id_prefix, redacted_uri
from include.settings import PipelineSettings, get_settings
from include.stages import STAGES
from include.stages.base import MANIFEST_NAME
from include.storage import ObjectNotFound, Storage, join_uri, relative_key

log = logging.getLogger("include.prune")


def prune(spec: PruneSpec) -> PruneResult:
    """Vectors and artifact files removed per source, and the sources back in the inbox with the
    version whose vectors stay. A source is looked up first: one uploaded again since the spec was
    written (a replayed old run's spec, a file dropped back) keeps its current version's vectors and
    artifacts; older ones go."""
    settings = get_settings()
    store, storage = build_vector_store(settings), Storage(settings)
    started = now()
    removed: dict[str, int] = {}
    kept: dict[str, str] = {}
    files: dict[str, int] = {}
    for uri in spec.source_uris:
        try:
            current = document_id(uri, storage.stat(uri).version)
        except ObjectNotFound:
            current = None
        removed[uri] = store.delete_stale(uri, keep_ids=set(), keep_doc_id=current)
        files[uri] = remove_artifacts(settings, storage, uri, keep_doc_id=current)
        shown = redacted_uri(uri)[0]  # a key may be personal data (one being erased): the log names it redacted
        if current is None:
            log.info("PRUNED %s: %d vector(s) and %d artifact file(s) removed", shown, removed[uri], files[uri])
        else:
            kept[uri] = current
            log.info("PRUNED %s: %d vector(s) and %d artifact file(s) of older versions removed; it is in the inbox "
                     "again, and its current version's (%s) stay", shown, removed[uri], files[uri], current)
    expired = {doc_id: remove_unredacted(settings, storage, doc_id) for doc_id in spec.expire_doc_ids}
    if expired:
        log.info("EXPIRED the unredacted artifacts of %d version(s): %d file(s)", len(expired), sum(expired.values()))
    return PruneResult(status="succeeded", removed=removed, kept=kept, files_removed=files, expired=expired,
                       started_at=started, finished_at=now(),
                       metrics={"sources": len(removed), "vectors_removed": sum(removed.values()),
                                "files_removed": sum(files.values()), "unredacted_files_expired": sum(expired.values())})


# The stages whose outputs hold the text as extracted, before the PII is redacted.
UNREDACTED_STAGES = ("extract", "chunk")


def remove_unredacted(settings: PipelineSettings, storage: Storage, doc_id: str) -> int:
    """The version's unredacted artifacts (every file of its extract and chunk folders, the manifest last:
    a retry finds the rest); how many files."""
    removed = 0
    for name in UNREDACTED_STAGES:
        folder = join_uri(settings.artifacts_uri, STAGES[name].output_dir, doc_id) + "/"  # this id's, no longer one's
        for uri in sorted(storage.list(folder), key=lambda u: u.endswith(MANIFEST_NAME)):
            storage.delete(uri)
            removed += 1
    return removed



def remove_artifacts(settings: PipelineSettings, storage: Storage, source_uri: str, keep_doc_id: str | None) -> int:
    """Every stage's artifacts of the source's versions, but those of ``keep_doc_id``; the number of
    files removed. A version's folder is found by its id's readable prefix, and is the source's when
    its manifest says so (another file of the same name elsewhere has the same prefix)."""
    removed = 0
    for stage in STAGES.values():
        folders: dict[str, list[str]] = {}
        stage_root = join_uri(settings.artifacts_uri, stage.output_dir)
        for info in storage.list_objects(join_uri(stage_root, id_prefix(source_uri))):
            folders.setdefault(relative_key(stage_root, info.uri).split("/", 1)[0], []).append(info.uri)
        for doc_id, uris in folders.items():
            manifest = join_uri(stage_root, doc_id, MANIFEST_NAME)
            if doc_id == keep_doc_id or not storage.exists(manifest):
                continue
            if StageManifest.model_validate(storage.read_json(manifest)).document.source_uri != source_uri:
                continue
            for uri in sorted(uris, key=lambda u: u == manifest):  # the manifest last: a retry finds the rest
                storage.delete(uri)
            removed += len(uris)
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
        result = prune(PruneSpec.model_validate(storage.read_json(args.spec))).model_copy(update=fields)
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

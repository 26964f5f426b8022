"""Benchmark: what the quality gates cost, per stage, against the stage's own work on the same documents.

Every stage runs in one plain process (``include.stages.local.run_stages``, the stage jobs' code without
Ray) with its gate on, over two corpora made here: one long PDF (many chunks per document: the cost
per chunk) and many two-page PDFs (few chunks each: the cost per document, GX's fixed part). The
short PDFs go through twice in the same run: each document validated alone
(``PIPELINE_QUALITY__GATE_WAIT_SECONDS=0``), then with the documents finished about the same time (the
default: one validation per group). Each document's manifest records the seconds its stage worked on
it (``seconds``: its parts) and the seconds its gate took (``quality_seconds``: building the frame,
its share of the validation, for load reading the store back). The benchmark prints, per stage: both
sums, the gate's share of the stage's time, the gate's seconds per 1,000 chunks, and the short
corpus's gate seconds together against alone. GX is imported and its context made before anything is
timed; the import is timed on its own, in a fresh interpreter: a stage job pays it once, while its
workers start (``run_stage`` imports it in a thread). The first gate of a corpus that reads the store
(embed's, for its dimension) includes opening the store's client, as a stage job without the warm
validator does once.

    .venv/bin/python -m benchmarks.bench_gates                       # 300 pages; 40 two-page PDFs
    .venv/bin/python -m benchmarks.bench_gates --pages 1000 --documents 100
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.bench_ingest import synthetic_pdf

GATED = ("chunk", "enrich", "embed", "load")
OFFLINE = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS": ""}


def gate_costs(inbox: Path, work: Path, *, alone: bool = False) -> dict[str, dict[str, float]]:
    """Per gated stage: the stage's seconds, its gate's, chunks and documents, over the inbox's PDFs.
    ``alone``: each document validated on its own (``PIPELINE_QUALITY__GATE_WAIT_SECONDS=0``), not with
    the documents finished about the same time."""
    from include.contract import StageManifest
    from include.documents import discover
    from include.settings import PipelineSettings, QualitySettings
    from include.stages.local import run_stages
    from include.storage import Storage

    settings = PipelineSettings(work_dir=work, inbox_uri=inbox.resolve().as_uri() + "/",
                                artifacts_uri=(work / "artifacts").as_uri() + "/",
                                quality=QualitySettings(gate_wait_seconds=0) if alone else QualitySettings())
    storage = Storage(settings)
    documents, _ = discover(storage, settings.inbox_uri)
    results = run_stages(settings, documents, "load")
    costs = {}
    for stage in GATED:
        manifests = [StageManifest.model_validate(storage.read_json(o.manifest_uri)) for o in results[stage].succeeded]
        failed = [o.error for o in results[stage].failed]
        if failed:
            raise SystemExit(f"{stage} failed documents: {failed}")
        costs[stage] = {
            "stage_s": sum(m.metrics["seconds"] for m in manifests),
            "gate_s": sum(m.metrics["quality_seconds"] for m in manifests),
            "chunks": sum(m.metrics.get("chunks", m.metrics.get("vectors", 0)) for m in manifests),
            "documents": len(manifests),
        }
    return costs


def gx_warm() -> None:
    """GX imported and its context made before anything is timed: a stage job does that while its
    workers start, and ``gx_import_seconds`` reports it on its own."""
    from include.quality.expectations import validate
    from include.quality.suites import chunk_checks
    from include.settings import PipelineSettings

    row = {"chunk_id": "warm#0", "text": "warm", "tokens": 1, "page_start": 1, "page_end": 1}
    validate(chunk_checks([row], doc_id="warm", token_limit=8, pages=1, settings=PipelineSettings()))


def gx_import_seconds() -> float:
    script = "import time; t = time.perf_counter(); import include.quality.suites; print(time.perf_counter() - t)"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    return float(out.stdout.strip().splitlines()[-1])


def table(title: str, costs: dict[str, dict[str, float]]) -> list[str]:
    lines = [f"{title}", "| stage | documents | chunks | stage s | gate s | gate / stage | gate s per 1,000 chunks |",
             "|---|---|---|---|---|---|---|"]
    for stage, c in costs.items():
        share = c["gate_s"] / c["stage_s"] if c["stage_s"] else float("nan")
        per_thousand = 1000 * c["gate_s"] / c["chunks"] if c["chunks"] else float("nan")
        lines.append(f"| {stage} | {c['documents']} | {int(c['chunks'])} | {c['stage_s']:.2f} | {c['gate_s']:.3f} "
                     f"| {share:.1%} | {per_thousand:.3f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=300, help="pages of the long PDF")
    parser.add_argument("--documents", type=int, default=40, help="two-page PDFs of the second corpus")
    args = parser.parse_args()
    os.environ.update(OFFLINE)
    with tempfile.TemporaryDirectory(prefix="bench-gates-") as scratch:
        root = Path(scratch)
        (root / "long").mkdir()
        synthetic_pdf(root / "long" / "long.pdf", args.pages, seed=1)
        (root / "short").mkdir()
        for n in range(args.documents):
            synthetic_pdf(root / "short" / f"short-{n:03d}.pdf", 2, seed=100 + n)
        gx_warm()
        began = time.perf_counter()
        long_costs = gate_costs(root / "long", root / "work-long")
        alone_costs = gate_costs(root / "short", root / "work-alone", alone=True)
        short_costs = gate_costs(root / "short", root / "work-short")
        wall = time.perf_counter() - began
    print(*table(f"One PDF of {args.pages} pages", long_costs), "", sep="\n")
    print(*table(f"{args.documents} PDFs of 2 pages, each document validated alone (GATE_WAIT_SECONDS=0)",
                 alone_costs), "", sep="\n")
    print(*table(f"{args.documents} PDFs of 2 pages, validated together (the default)", short_costs), "", sep="\n")
    print("Gate seconds, together / alone: " + ", ".join(
        f"{stage} {short_costs[stage]['gate_s'] / alone_costs[stage]['gate_s']:.2f}" for stage in GATED))
    print(f"GX imported in a fresh interpreter: {gx_import_seconds():.2f} s (once per stage job, while its workers "
          f"start); both corpora through every stage: {wall:.0f} s")


if __name__ == "__main__":
    main()

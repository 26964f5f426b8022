"""Benchmark: what the Airflow side costs, this checkout against a baseline commit.

Three things the Airflow side does, each in a fresh interpreter, for each checkout (this one, and
``--baseline``, checked out into a temporary git worktree), ``--runs`` times, alternating:

- **parse**: import ``dags/document_ingest.py`` and ``dags/rag_batch_query.py`` as the DAG
  processor does, again and again; what the parse imports is what an Airflow image must install;
- **poke**: one sensor check (``inbox_has_work``) over a listing of ``--objects`` objects, against
  an empty ledger (all of them new);
- **plan**: planning a run (``plan_run``) over an inbox of ``--objects`` files of ``--object-kb``
  KiB each (a ``file://`` inbox, so the disk, not a server, is what reading costs).

It prints, per step and checkout, the median wall seconds (the step alone, imports excluded), the
megabytes the step read (``rchar``: files, sockets, page cache hits included), the peak RSS of the process, how many modules it loaded, and which of the data plane's libraries
among them; then the ratios this / baseline.

    .venv/bin/python -m benchmarks.bench_airflow_side                  # against 58acb1b
    .venv/bin/python -m benchmarks.bench_airflow_side --baseline HEAD~3 --runs 3 --objects 1000
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA_PLANE = ("docling", "docling_core", "docling_parse", "pypdfium2", "torch", "transformers",
              "sentence_transformers", "presidio_analyzer", "spacy", "chromadb", "pinecone", "llama_cpp",
              "ray", "ray.data", "pyarrow", "numpy")
STEPS = ("parse", "poke", "plan")
# Run in the checkout's own folder, by a fresh interpreter: one step and nothing else.
STEP = f"""
import importlib.util, json, resource, sys, time
sys.path[:0] = ['.', 'plugins']
step, objects, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])

def read_bytes():  # every byte the process read through a system call, page cache hits included
    return int(next(l for l in open('/proc/self/io') if l.startswith('rchar')).split()[1])

if step == 'parse':
    before = read_bytes()
    clock = time.perf_counter()
    for name in ('document_ingest', 'rag_batch_query'):
        spec = importlib.util.spec_from_file_location(name, f'dags/{{name}}.py')
        spec.loader.exec_module(importlib.util.module_from_spec(spec))
else:
    from include.control import ingest
    from include.control.ledger.store import Ledger, default_url
    from include.control.settings import get_control_settings
    # The schema's migration is not what is measured. Since upgrading became a deploy step it is a
    # call of its own; older checkouts migrate on open.
    if hasattr(Ledger, 'upgrade'):
        Ledger(default_url(get_control_settings())).upgrade()
    Ledger.open(get_control_settings())
    before = read_bytes()
    clock = time.perf_counter()
    if step == 'poke':
        files = [{{"Key": f"inbox/doc-{{n:05d}}.pdf", "Size": size, "ETag": f'"{{n:032x}}"'}} for n in range(objects)]
        assert ingest.inbox_has_work(files)
    else:
        assert ingest.plan_run('document_ingest', 'bench-run')
print(json.dumps({{"seconds": time.perf_counter() - clock, "read_mb": (read_bytes() - before) / 2**20,
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "modules": len(sys.modules),
                  "data_plane": [m for m in {DATA_PLANE!r} if m in sys.modules]}}))
"""


def run_step(checkout: Path, env: dict[str, str], step: str, objects: int, object_bytes: int,
             scratch: Path) -> dict:
    """One step in a fresh interpreter, with a work dir (ledger, artifacts) of its own."""
    work = Path(tempfile.mkdtemp(prefix=f"{step}-", dir=scratch))
    # The DAGs' sensors and the poke want an S3 inbox (a listing is all they read); planning reads a folder.
    inbox = (scratch / "inbox").as_uri() + "/" if step == "plan" else "s3://bench/inbox/"
    env = {**env, "PIPELINE_WORK_DIR": str(work), "PIPELINE_INBOX_URI": inbox,
           "PIPELINE_ARTIFACTS_URI": (work / "artifacts").as_uri() + "/",
           "PIPELINE_MAX_DOCUMENT_BYTES": str(max(object_bytes * 2, 1 << 20))}
    child = subprocess.run([sys.executable, "-c", STEP, step, str(objects), str(object_bytes)], cwd=checkout,
                           env=env, capture_output=True, text=True, timeout=3600)
    if child.returncode:
        raise RuntimeError(f"{step} in {checkout} failed:\n{child.stderr[-3000:]}")
    shutil.rmtree(work, ignore_errors=True)
    return json.loads(child.stdout.strip().splitlines()[-1])


def fill_inbox(folder: Path, objects: int, object_bytes: int) -> None:
    """``objects`` distinct files (random bytes: nothing to gain from a cache of equal blocks)."""
    folder.mkdir(parents=True)
    for n in range(objects):
        (folder / f"doc-{n:05d}.pdf").write_bytes(b"%PDF-1.7\n" + os.urandom(object_bytes - 9))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_airflow_side",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default="58acb1b", help="commit to compare with (default: before the tiers)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--objects", type=int, default=5000, help="objects in the inbox (poke and plan)")
    parser.add_argument("--object-kb", type=int, default=128, help="size of each inbox file (plan)")
    args = parser.parse_args(argv)

    env = {**os.environ, "AIRFLOW_HOME": tempfile.mkdtemp(prefix="bench-airflow-home-"),
           "AIRFLOW__CORE__LOAD_EXAMPLES": "False"}
    env = {k: v for k, v in env.items() if not k.startswith("PIPELINE_")}
    object_bytes = args.object_kb * 1024
    with tempfile.TemporaryDirectory(prefix="bench-airflow-side-") as folder:
        scratch = Path(folder)
        fill_inbox(scratch / "inbox", args.objects, object_bytes)
        baseline = scratch / "checkout"
        subprocess.run(["git", "worktree", "add", "--detach", str(baseline), args.baseline], cwd=ROOT, check=True,
                       capture_output=True)
        try:
            checkouts = {"this": ROOT, "baseline": baseline}
            runs = {(step, name): [] for step in STEPS for name in checkouts}
            for checkout in checkouts.values():  # warm the file cache for both, unmeasured
                run_step(checkout, env, "parse", args.objects, object_bytes, scratch)
            for _ in range(args.runs):
                for step in STEPS:
                    for name, checkout in checkouts.items():
                        runs[step, name].append(run_step(checkout, env, step, args.objects, object_bytes, scratch))
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(baseline)], cwd=ROOT, check=False,
                           capture_output=True)

    summary = {key: {"seconds": statistics.median(r["seconds"] for r in results),
                     "read_mb": statistics.median(r["read_mb"] for r in results),
                     "rss_mb": max(r["rss_mb"] for r in results),
                     "modules": results[-1]["modules"], "data_plane": results[-1]["data_plane"]}
               for key, results in runs.items()}
    print(f"The Airflow side, median of {args.runs} (baseline {args.baseline}; poke and plan over "
          f"{args.objects} objects, plan over files of {args.object_kb} KiB):\n")
    print(f"{'step':<6} {'checkout':<10} {'seconds':>8} {'MB read':>8} {'peak RSS MB':>12} {'modules':>8}  "
          "data-plane libraries loaded")
    for (step, name), row in summary.items():
        print(f"{step:<6} {name:<10} {row['seconds']:>8.2f} {row['read_mb']:>8.1f} {row['rss_mb']:>12.0f} "
              f"{row['modules']:>8}  {', '.join(row['data_plane']) or '(none)'}")
    print()
    for step in STEPS:
        this, base = summary[step, "this"], summary[step, "baseline"]
        print(f"{step}: this / baseline: seconds {this['seconds'] / base['seconds']:.2f}, peak RSS "
              f"{this['rss_mb'] / base['rss_mb']:.2f}, modules {this['modules'] / base['modules']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

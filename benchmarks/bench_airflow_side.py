"""Benchmark: what parsing the two DAGs costs the Airflow side, this checkout against a baseline commit.

Airflow's DAG processor parses every DAG file again and again; what the parse imports is what an
Airflow image must install. For each checkout (this one, and ``--baseline``, checked out into a
temporary git worktree), a fresh interpreter imports ``dags/document_ingest.py`` and
``dags/rag_batch_query.py`` as the DAG processor would, ``--runs`` times, alternating checkouts.
It prints the median wall seconds, the peak RSS, how many modules the parse loaded, and which of
the data plane's libraries among them, then the ratios this / baseline.

    .venv/bin/python -m benchmarks.bench_airflow_side                  # against 58acb1b
    .venv/bin/python -m benchmarks.bench_airflow_side --baseline HEAD~3 --runs 7
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA_PLANE = ("docling", "docling_core", "docling_parse", "pypdfium2", "torch", "transformers",
              "sentence_transformers", "presidio_analyzer", "spacy", "chromadb", "pinecone", "llama_cpp",
              "ray", "ray.data", "pyarrow", "numpy")
# Run in the checkout's own folder, by a fresh interpreter: the parse and nothing else.
PARSE = f"""
import importlib.util, json, resource, sys, time
sys.path[:0] = ['.', 'plugins']
clock = time.perf_counter()
for name in ('document_ingest', 'rag_batch_query'):
    spec = importlib.util.spec_from_file_location(name, f'dags/{{name}}.py')
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
print(json.dumps({{"seconds": time.perf_counter() - clock,
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "modules": len(sys.modules),
                  "data_plane": [m for m in {DATA_PLANE!r} if m in sys.modules]}}))
"""


def parse_once(checkout: Path, env: dict[str, str]) -> dict:
    child = subprocess.run([sys.executable, "-c", PARSE], cwd=checkout, env=env, capture_output=True,
                           text=True, timeout=300, check=True)
    return json.loads(child.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_airflow_side",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default="58acb1b", help="commit to compare with (default: before the tiers)")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)

    env = {**os.environ, "AIRFLOW_HOME": tempfile.mkdtemp(prefix="bench-airflow-home-"),
           "AIRFLOW__CORE__LOAD_EXAMPLES": "False"}
    env = {k: v for k, v in env.items() if not k.startswith("PIPELINE_")}
    with tempfile.TemporaryDirectory(prefix="bench-baseline-") as folder:
        baseline = Path(folder) / "checkout"
        subprocess.run(["git", "worktree", "add", "--detach", str(baseline), args.baseline], cwd=ROOT, check=True,
                       capture_output=True)
        try:
            checkouts = {"this": ROOT, "baseline": baseline}
            runs: dict[str, list[dict]] = {name: [] for name in checkouts}
            parse_once(ROOT, env)  # warm the file cache for both, unmeasured
            parse_once(baseline, env)
            for _ in range(args.runs):
                for name, checkout in checkouts.items():
                    runs[name].append(parse_once(checkout, env))
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(baseline)], cwd=ROOT, check=False,
                           capture_output=True)

    summary = {name: {"seconds": statistics.median(r["seconds"] for r in results),
                      "rss_mb": max(r["rss_mb"] for r in results),
                      "modules": results[-1]["modules"], "data_plane": results[-1]["data_plane"]}
               for name, results in runs.items()}
    print(f"Parsing both DAGs in a fresh interpreter, median of {args.runs} (baseline {args.baseline}):\n")
    print(f"{'checkout':<10} {'seconds':>8} {'peak RSS MB':>12} {'modules':>8}  data-plane libraries loaded")
    for name, row in summary.items():
        print(f"{name:<10} {row['seconds']:>8.2f} {row['rss_mb']:>12.0f} {row['modules']:>8}  "
              f"{', '.join(row['data_plane']) or '(none)'}")
    this, base = summary["this"], summary["baseline"]
    print(f"\nthis / baseline: seconds {this['seconds'] / base['seconds']:.2f}, peak RSS "
          f"{this['rss_mb'] / base['rss_mb']:.2f}, modules {this['modules'] / base['modules']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: answering questions on Ray Data (the rag_batch_query job) against the same steps in one process.

Both answer the same questions over the same store in the same invocation:

- **plain**: one Python process, the four steps built once (``InlineAnswerer``), batches one
  after the other: the floor any orchestration is measured against;
- **ray**: the job's own code (``run_job``) on a local Ray started here with the stack's two
  CPUs: read_parquet, four actor pools, write_parquet, publication of the answers.

The store is the three sample PDFs, ingested first in this process (not measured). The
questions are the sample question set repeated ``--repeat`` times. It prints, for each: wall
seconds, questions per second end to end, seconds and questions per second of each step
(embed, retrieve, prompt, generate), the generator's tokens per second, and the ratio
plain / ray (1.0: Ray Data costs nothing over one process).

    .venv/bin/python -m benchmarks.bench_query               # 14 questions x 3
    .venv/bin/python -m benchmarks.bench_query --repeat 1
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
import time
from pathlib import Path

OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS": "", "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
STEPS = ("embed", "retrieve", "prompt", "generate")


def ingest_samples(root: Path):
    from include.documents import describe
    from include.settings import PipelineSettings
    from include.stages.local import run_stages
    from include.storage import Storage, join_uri
    from tools.sample_pdfs import write_samples

    settings = PipelineSettings(
        work_dir=root / "work", inbox_uri=(root / "inbox").as_uri() + "/",
        artifacts_uri=(root / "artifacts").as_uri() + "/", quarantine_uri=(root / "quarantine").as_uri() + "/",
        queries_uri=(root / "queries").as_uri() + "/", answers_uri=(root / "answers").as_uri() + "/",
    )
    storage = Storage(settings)
    documents = []
    for path in write_samples(root / "samples"):
        uri = join_uri(settings.inbox_uri, path.name)
        storage.write_bytes(uri, path.read_bytes())
        documents.append(describe(storage, uri))
    run_stages(settings, documents, "load")
    return settings


def questions(repeat: int):
    import pyarrow as pa

    from include.query import evaluation

    rows = evaluation.load_question_set(evaluation.QUESTION_SETS / "samples.jsonl").to_pylist()
    return pa.Table.from_pylist([{**row, "id": f"{row['id']}-{n}"} for n in range(repeat) for row in rows])


def describe_run(name: str, metrics: dict[str, float]) -> str:
    count = metrics["questions"]
    steps = ", ".join(
        f"{step} {metrics[f'{step}_seconds']:.1f}s ({count / metrics[f'{step}_seconds']:.1f} q/s)"
        if metrics[f"{step}_seconds"] else f"{step} 0s" for step in STEPS
    )
    return (f"{name:<6} {metrics['seconds']:7.1f}s  {metrics['questions_per_second']:.2f} q/s end to end; "
            f"{steps}; generator {metrics.get('generated_tokens_per_second', 0):.1f} tokens/s, "
            f"hit@5 {metrics.get('hit@5', 0):.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_query", description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="times the 14 sample questions are asked")
    args = parser.parse_args(argv)
    os.environ.update(OFFLINE)

    import pyarrow.parquet as pq
    import ray

    from include.control.ingest import RUNTIME_EXCLUDES
    from include.query.pipeline import InlineAnswerer, answer_metrics, run_job
    from include.settings import PROJECT_ROOT
    from include.storage import Storage, join_uri

    root = Path(tempfile.mkdtemp(prefix="bench-query-"))
    print(f"==> Ingesting the sample PDFs into {root} (not measured)", flush=True)
    settings = ingest_samples(root)
    table = questions(args.repeat)
    print(f"==> {table.num_rows} questions", flush=True)

    clock = time.perf_counter()
    with InlineAnswerer(settings) as answerer:
        answers = answerer(table)
    plain = answer_metrics(answers, time.perf_counter() - clock)  # includes loading the models, as the job does

    sink = io.BytesIO()
    pq.write_table(table, sink)
    questions_uri = join_uri(settings.queries_uri, "bench.parquet")
    Storage(settings).write_bytes(questions_uri, sink.getvalue())
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING",
             _temp_dir=tempfile.mkdtemp(prefix="ray-bench-", dir="/tmp"),
             runtime_env={"working_dir": str(PROJECT_ROOT), "excludes": RUNTIME_EXCLUDES, "env_vars": OFFLINE})
    try:
        clock = time.perf_counter()
        result = run_job(settings, questions_uri, job_id="bench")
        wall = time.perf_counter() - clock
    finally:
        ray.shutdown()
    on_ray = {**result["metrics"], "seconds": wall, "questions_per_second": table.num_rows / wall}

    print()
    print(describe_run("plain", plain))
    print(describe_run("ray", on_ray))
    print(f"plain / ray wall time: {plain['seconds'] / on_ray['seconds']:.2f} "
          "(1.0: answering on Ray Data costs nothing over one process)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The main job on embedded defaults: `make demo`.

1. start the local stack (SeaweedFS S3, Chroma, Ray head) and migrate Airflow's database;
2. drop the sample PDFs into the watched inbox;
3. run the ``document_ingest`` DAG through Airflow (``airflow dags test``) for those
   files: the documents make one batch, and each stage is one Ray job over it. Run
   again, it finds them in the ledger, unchanged, and submits no Ray job at all;
4. print the run report (what each stage did, what became of each document);
5. drop the sample question set (a Parquet file) under the queries prefix and run the
   ``rag_batch_query`` DAG: one Ray job embeds, retrieves, prompts and generates with
   SmolLM2 on llama.cpp. Print a few answers with their sources, and the evaluation
   (hit@1, hit@5, MRR). Run again, the file is found answered: no Ray job.

The stack keeps running afterwards (Ray dashboard on http://127.0.0.1:8265);
``make down`` stops it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from tools import airflow_db, stack
from tools.sample_pdfs import write_samples

if TYPE_CHECKING:
    from include.settings import PipelineSettings
    from include.storage import Storage

DAG_ID = "document_ingest"
QUERY_DAG_ID = "rag_batch_query"
QUESTIONS_KEY = "samples.parquet"
SHOWN_ANSWERS = ("met-max-dose", "site-shipments", "ae-serious-deadline")


def run_airflow(args: list[str], env: dict[str, str], log_path: Path) -> int:
    """Run an Airflow CLI command, its output to a log; echo task ends as progress."""
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [str(stack.BIN / "airflow"), *args], env=env, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True,
        )
        assert process.stdout is not None
        for line in process.stdout:
            log.write(line)
            if "[DAG TEST] end task" in line:
                fields = dict(part.split("=", 1) for part in line.split() if "=" in part and not part.startswith("loc="))
                index = fields.get("map_index", "-1")
                suffix = f"[{index}]" if index != "-1" else ""
                print(f"  finished {fields.get('task_id', '?')}{suffix}", flush=True)
        return process.wait()


def ask_questions(env: dict[str, str], logs: Path, storage: Storage, settings: PipelineSettings) -> int:
    """The sample question set through the query DAG; a few answers and the evaluation printed."""
    import io

    import pyarrow.parquet as pq

    from include.query import evaluation
    from include.query.answers import MARKER, answers_uri_for
    from include.query.pipeline import read_answers
    from include.query.report import format_answer, format_metrics
    from include.storage import join_uri

    questions_uri = join_uri(settings.queries_uri, QUESTIONS_KEY)
    sink = io.BytesIO()
    pq.write_table(evaluation.load_question_set(evaluation.QUESTION_SETS / "samples.jsonl"), sink)
    storage.write_bytes(questions_uri, sink.getvalue())  # the same bytes again: still answered
    print(f"\n==> Asking the sample questions ({questions_uri}) through the {QUERY_DAG_ID} DAG "
          "(one Ray job: embed, retrieve, prompt, generate with SmolLM2-135M on llama.cpp)", flush=True)
    log = logs / "demo-query-dag-test.log"
    clock = time.monotonic()
    code = run_airflow(["dags", "test", QUERY_DAG_ID, "-c", json.dumps({"keys": [QUESTIONS_KEY]})], env, log)
    print(f"  DAG run finished in {time.monotonic() - clock:.0f}s (full log: {log})", flush=True)
    answers_uri = answers_uri_for(settings, questions_uri)
    if code != 0 or not storage.exists(join_uri(answers_uri, MARKER)):
        print(f"\nThe query DAG run failed: see {log}", file=sys.stderr)
        return 1
    rows = {row["id"]: row for row in read_answers(storage, answers_uri).to_pylist()}
    print(f"\n==> Answers ({answers_uri}), a few of {len(rows)}\n", flush=True)
    for question_id in SHOWN_ANSWERS:
        print(format_answer(rows[question_id]) + "\n", flush=True)
    print(format_metrics(storage.read_json(join_uri(answers_uri, MARKER))["metrics"]), flush=True)
    print('\nAsk your own: make ask Q="When do shipments leave the site?"', flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.demo")
    parser.add_argument("--stop", action="store_true", help="stop the stack at the end")
    args = parser.parse_args(argv)

    started = time.monotonic()
    # The demo's jobs take seconds: their deferred tasks ask for the status every second, not every 5.
    env = {"PIPELINE_RAY_POLL_SECONDS": "1", **os.environ, **stack.stack_env()}
    os.environ.update(env)  # this process talks to the same stack as its children
    from include.settings import get_settings
    from include.storage import Storage, join_uri

    settings = get_settings()
    work = settings.work_dir.resolve()
    print("==> Starting the local stack", flush=True)
    stack.up()
    logs = work / "logs"
    if run_airflow(["db", "migrate"], env, logs / "airflow-db-migrate.log") != 0:
        print(f"airflow db migrate failed: see {logs / 'airflow-db-migrate.log'}", file=sys.stderr)
        return 1

    print(f"==> Dropping sample PDFs into {settings.inbox_uri}", flush=True)
    storage = Storage(settings)
    keys = []
    for path in write_samples(work / "samples"):
        storage.write_bytes(join_uri(settings.inbox_uri, path.name), path.read_bytes())
        keys.append(path.name)
        print(f"  {path.name}", flush=True)

    print(f"==> Running the {DAG_ID} DAG through Airflow (one batch: one Ray job per stage)", flush=True)
    dag_log = logs / "demo-dag-test.log"
    clock = time.monotonic()
    # Naming the files: a run that finds them already ingested says so at once, instead of
    # waiting for new work in the inbox as a scheduled run does.
    code = run_airflow(["dags", "test", DAG_ID, "-c", json.dumps({"keys": keys})], env, dag_log)
    print(f"  DAG run finished in {time.monotonic() - clock:.0f}s (full log: {dag_log})", flush=True)

    airflow_home = Path(env["AIRFLOW_HOME"])
    run_id = airflow_db.latest_run_id(airflow_home, DAG_ID)
    summary = airflow_db.xcoms(airflow_home, DAG_ID, run_id, key="summary").get(("summarize", -1)) if run_id else None
    if summary:
        report = storage.read_text(summary["report_uri"].removesuffix(".json") + ".md")
        print(f"\n==> The run report ({summary['report_uri']})\n\n{report}", flush=True)
    if code != 0 or not summary or summary["failed"]:
        print(f"\nThe DAG run failed: see {dag_log}", file=sys.stderr)
        return 1

    if ask_questions(env, logs, storage, settings) != 0:
        return 1
    print(f"\nDone in {time.monotonic() - started:.0f}s. The stack is still running "
          "(Ray dashboard: http://127.0.0.1:%s); stop it with `make down`." % stack.LocalStackSettings().ray_dashboard_port)
    if args.stop:
        stack.down()
    return 0


if __name__ == "__main__":
    sys.exit(main())

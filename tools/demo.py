"""The main job on embedded defaults: `make demo`.

1. start the local stack (SeaweedFS S3, Ray head) and migrate Airflow's database;
2. drop the sample PDFs into the watched inbox;
3. run the ``document_ingest`` DAG through Airflow (``airflow dags test``): five
   Ray jobs per document;
4. print what each stage did (from the summary task's XCom) and answer a sample
   question by retrieval from the vector store.

The stack keeps running afterwards (Ray dashboard on http://127.0.0.1:8265);
``make down`` stops it.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from tools import stack
from tools.sample_pdfs import write_samples

DAG_ID = "document_ingest"
QUESTION = "What is the maximum daily dose of metformin in the trial?"


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


def latest_summary(airflow_home: Path) -> dict | None:
    """The summarize task's return value of the newest run, read from Airflow's DB."""
    with sqlite3.connect(airflow_home / "airflow.db") as db:
        row = db.execute(
            "SELECT value FROM xcom WHERE dag_id = ? AND task_id = 'summarize' AND key = 'return_value' "
            "ORDER BY timestamp DESC LIMIT 1",
            (DAG_ID,),
        ).fetchone()
    if row is None:
        return None
    value = row[0]
    return json.loads(value) if isinstance(value, (str, bytes)) else value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.demo")
    parser.add_argument("--question", default=QUESTION)
    parser.add_argument("--stop", action="store_true", help="stop the stack at the end")
    args = parser.parse_args(argv)

    started = time.monotonic()
    env = {**os.environ, **stack.stack_env()}
    os.environ.update(env)  # this process talks to the same stack as its children
    from include.ingest import format_summary
    from include.retrieval import format_hits, search
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
    for path in write_samples(work / "samples"):
        storage.write_bytes(join_uri(settings.inbox_uri, path.name), path.read_bytes())
        print(f"  {path.name}", flush=True)

    print(f"==> Running the {DAG_ID} DAG through Airflow (each stage is a Ray job)", flush=True)
    dag_log = logs / "demo-dag-test.log"
    clock = time.monotonic()
    code = run_airflow(["dags", "test", DAG_ID], env, dag_log)
    print(f"  DAG run finished in {time.monotonic() - clock:.0f}s (full log: {dag_log})", flush=True)

    summary = latest_summary(Path(env["AIRFLOW_HOME"]))
    if summary:
        print("\n==> What each stage did\n" + format_summary(summary), flush=True)
    if code != 0 or not summary or summary["failed"]:
        print(f"\nThe DAG run failed: see {dag_log}", file=sys.stderr)
        return 1

    print("\n==> Answering a question by retrieval", flush=True)
    print(format_hits(args.question, search(args.question, k=3, settings=settings)), flush=True)
    print(f"\nDone in {time.monotonic() - started:.0f}s. The stack is still running "
          "(Ray dashboard: http://127.0.0.1:%s); stop it with `make down`." % stack.LocalStackSettings().ray_dashboard_port)
    if args.stop:
        stack.down()
    return 0


if __name__ == "__main__":
    sys.exit(main())

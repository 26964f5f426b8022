"""Benchmark: drop a PDF into the inbox, search it seconds later (event-driven ingest, warm workers).

Everything runs under Airflow's real services (``airflow standalone``: scheduler, DAG processor,
triggerer, API server, LocalExecutor at its default parallelism) on the local stack, on bench_ingest's
ports and a fresh work dir. Nobody triggers a run: the triggerer's inbox watcher starts every
``document_ingest`` run (the sweep and the query schedule off, ``document_ingest_interval`` paused, the
watcher listing every second and announcing after two quiet seconds). With warm workers on
(``PIPELINE_WARM_IDLE_SECONDS=1200``):

1. **first drop, cold cluster**: the three demo PDFs; seconds from each upload to it being searchable;
2. **one more drop, warm**: once that run has ended, a copy of a demo PDF as ``later/one-more.pdf``;
   its phases: upload -> run queued (Airflow's ``dag_run.queued_at``) -> the run's first Ray job
   (Ray's job list) -> searchable;
3. **burst**: ``--burst`` synthetic one-page PDFs uploaded at once (a thread pool): the runs it started,
   their batches, and seconds until all are searchable, or that ``--deadline-seconds`` was hit;
4. ``--cold-too``: steps 1 and 2 again on a second fresh stack with warm workers off
   (``PIPELINE_WARM_IDLE_SECONDS=0``), the baseline; the final table shows warm / cold.

"Searchable" means the document's vectors are in the stack's Chroma server (records whose
``source_uri`` is the document's), what a user's search sees; polled every half second. Each drop
prints its runs and their batches, the seconds to searchable, the phases and its Ray jobs (start and
length); a table of the measures (and warm / cold) comes last.

Warm workers are keyed by a hash of ``include/``'s code: an edit to this checkout during the run gives
the next jobs new workers (and model loads). ``--project`` runs the stack, Airflow and the jobs from
another copy, such as an export of a commit that nobody edits.

    .venv/bin/python -m benchmarks.bench_drop                          # burst of 500
    .venv/bin/python -m benchmarks.bench_drop --burst 20 --cold-too    # small, and the baseline
    git archive HEAD | tar -x -C /tmp/head && .venv/bin/python -m benchmarks.bench_drop --project /tmp/head
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.bench_ingest import BENCH_PORTS, DAG_ID, synthetic_pdf

ROOT = Path(__file__).resolve().parents[1]
AIRFLOW = str(Path(sys.executable).parent / "airflow")
INTERVAL_DAG_ID = "document_ingest_interval"
SERVICE_SETTINGS = {"PIPELINE_INGEST_SCHEDULE": "", "PIPELINE_QUERY_SCHEDULE": "",
                    "PIPELINE_INBOX_WATCH_SECONDS": "1", "PIPELINE_INBOX_SETTLE_SECONDS": "2"}
WARM_IDLE_SECONDS = {"warm": "1200", "cold": "0"}
POLL_SECONDS = 0.5
# A drop's runs are over once they have all ended and no other appeared for this long: longer than the
# watcher's poll and settle seconds plus a scheduler loop, in which a folded event would start the next.
QUIET_SECONDS = 15
ENDED = ("success", "failed")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def unix_time(stamp: str | None) -> float | None:
    """A time as Airflow's SQLite database holds it (UTC, with or without its offset)."""
    if not stamp:
        return None
    moment = datetime.fromisoformat(stamp)
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def table(rows: list[tuple[str, float | None, float | None]], with_cold: bool) -> str:
    """The measures, warm workers on (and off, with their ratio warm / cold)."""
    def cell(value: float | None) -> str:
        return "-" if value is None else str(value) if isinstance(value, int) else f"{value:.1f}"

    width = max(len(label) for label, _, _ in rows) + 2
    header = f"{'measure':<{width}}{'warm':>9}" + (f"{'cold':>9}{'warm/cold':>11}" if with_cold else "")
    lines = [header, "-" * len(header)]
    for label, warm, cold in rows:
        line = f"{label:<{width}}{cell(warm):>9}"
        if with_cold:
            ratio = f"{warm / cold:.2f}" if warm is not None and cold else "-"
            line += f"{cell(cold):>9}{ratio:>11}"
        lines.append(line)
    return "\n".join(lines)


def run_cli(env: dict[str, str], project: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    done = subprocess.run(args, env=env, cwd=project, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done


@dataclass
class Drop:
    """What one drop into the inbox led to."""

    started: float  # when the first upload began (Unix time)
    uploaded: dict[str, float]  # source URI -> when its upload ended
    searchable: dict[str, float]  # source URI -> when its vectors were first in the vector store
    runs: list[dict[str, Any]]  # the document_ingest runs it started, oldest first
    jobs: list[dict[str, Any]] = field(default_factory=list)  # their Ray jobs, as Ray's job API lists them
    batches: dict[str, list[int]] = field(default_factory=dict)  # run id -> documents per batch
    # As the stage jobs report them: warm workers count theirs, a Ray Data pool (warm workers off) none.
    model_loads: int | None = None

    @property
    def all_searchable(self) -> bool:
        return len(self.searchable) == len(self.uploaded)

    def to_searchable(self, uri: str) -> float | None:
        return self.searchable[uri] - self.uploaded[uri] if uri in self.searchable else None

    def phases(self) -> dict[str, float | None]:
        """Last upload -> the first run queued -> its first Ray job -> every document searchable."""
        last_upload = max(self.uploaded.values())
        queued = unix_time(self.runs[0]["queued_at"]) if self.runs else None
        first_run = self.runs[0]["run_id"] if self.runs else None
        first_job = min((job["start_time"] / 1000 for job in self.jobs
                         if job["metadata"].get("run_id") == first_run and job["start_time"]), default=None)
        searchable = max(self.searchable.values()) if self.all_searchable else None
        return {"upload -> run queued": queued - last_upload if queued else None,
                "run queued -> first Ray job": first_job - queued if first_job and queued else None,
                "first Ray job -> searchable": searchable - first_job if searchable and first_job else None,
                "upload -> searchable": searchable - last_upload if searchable else None}


@dataclass
class Bench:
    """The stack and Airflow's services of one session, and how to drop files and see what happens."""

    env: dict[str, str]
    deadline_seconds: float
    settings: Any = field(init=False)
    storage: Any = field(init=False)
    collection: Any = field(init=False)  # the vector store's Chroma collection

    def __post_init__(self) -> None:
        from include.backends.vector_stores import ChromaStore
        from include.control.settings import get_control_settings
        from include.storage import Storage

        self.settings = get_control_settings()
        self.storage = Storage(self.settings)
        self.collection = ChromaStore(self.settings)._collection
        # Also makes the S3 client before the upload threads share it.
        if leftovers := self.storage.list(self.settings.inbox_uri):
            raise RuntimeError(f"the inbox of a fresh stack holds {len(leftovers)} objects")

    @property
    def home(self) -> Path:
        return Path(self.env["AIRFLOW_HOME"])

    def drop(self, files: dict[str, bytes]) -> Drop:
        """Uploads ``files`` (inbox key -> bytes) at once, then waits until they are searchable and the
        runs they started have ended (or the deadline)."""
        from include.control.batching import read_plan, run_folder
        from include.storage import join_uri
        from tools import airflow_db

        before = {run["run_id"] for run in airflow_db.runs(self.home, DAG_ID)}
        deadline = time.monotonic() + self.deadline_seconds

        def upload(item: tuple[str, bytes]) -> tuple[str, float]:
            uri = join_uri(self.settings.inbox_uri, item[0])
            self.storage.write_bytes(uri, item[1])
            return uri, time.time()

        started = time.time()
        with ThreadPoolExecutor(max_workers=10) as pool:  # boto3's default connection pool holds 10
            uploaded = dict(pool.map(upload, files.items()))
        searchable = self._wait_searchable(uploaded, deadline)
        runs = self._wait_runs_ended(before, deadline)
        drop = Drop(started, uploaded, searchable, runs)
        run_ids = {run["run_id"] for run in runs}
        drop.jobs = sorted((job for job in self.ray_jobs() if (job["metadata"] or {}).get("run_id") in run_ids),
                           key=lambda job: job["start_time"] or 0)
        for run_id in run_ids:
            plan = read_plan(self.storage, run_folder(self.settings.artifacts_uri, DAG_ID, run_id))
            drop.batches[run_id] = [batch.documents for batch in plan.batches] if plan else []
            for (task, _), value in airflow_db.xcoms(self.home, DAG_ID, run_id).items():
                loads = value.get("metrics", {}).get("model_loads") if isinstance(value, dict) else None
                if task.startswith("ingest_batch.") and loads is not None:
                    drop.model_loads = (drop.model_loads or 0) + int(loads)
        return drop

    def ray_jobs(self) -> list[dict[str, Any]]:
        """Every job of the stack's Ray cluster. Its job API, not Ray's client: that keeps the first
        cluster token it read for the whole process, and the second session's stack has another."""
        token = Path(self.env["RAY_AUTH_TOKEN_PATH"]).read_text().strip()
        request = urllib.request.Request(f"{self.env['RAY_ADDRESS']}/api/jobs/",
                                         headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=60) as answer:
            return json.load(answer)

    def _wait_searchable(self, uploaded: dict[str, float], deadline: float) -> dict[str, float]:
        found: dict[str, float] = {}
        while (pending := [uri for uri in uploaded if uri not in found]) and time.monotonic() < deadline:
            records = self.collection.get(where={"source_uri": {"$in": pending}}, include=["metadatas"])
            seen_at = time.time()
            for metadata in records["metadatas"]:
                found.setdefault(metadata["source_uri"], seen_at)
            time.sleep(POLL_SECONDS)
        return found

    def _wait_runs_ended(self, before: set[str], deadline: float) -> list[dict[str, Any]]:
        from tools import airflow_db

        snapshot, changed_at = None, time.monotonic()
        while True:
            runs = [run for run in airflow_db.runs(self.home, DAG_ID) if run["run_id"] not in before]
            if (states := [(run["run_id"], run["state"]) for run in runs]) != snapshot:
                snapshot, changed_at = states, time.monotonic()
            ended = runs and all(state in ENDED for _, state in states)
            if (ended and time.monotonic() - changed_at >= QUIET_SECONDS) or time.monotonic() >= deadline:
                return runs
            time.sleep(1)


def _watcher_running(home: Path) -> bool:
    """Has the triggerer taken the inbox watcher (a trigger row with a triggerer assigned)?"""
    try:
        with sqlite3.connect(f"file:{home / 'airflow.db'}?mode=ro", uri=True) as db:
            return db.execute("SELECT COUNT(*) FROM trigger WHERE classpath LIKE '%InboxWorkTrigger' "
                              "AND triggerer_id IS NOT NULL").fetchone()[0] > 0
    except sqlite3.OperationalError:
        return False


@contextmanager
def session(project: Path, work: Path, warm_idle_seconds: str, deadline_seconds: float) -> Iterator[Bench]:
    """The bench stack and ``airflow standalone`` on it, both of ``project``'s code, and this process's
    environment pointed at them."""
    from include.control.settings import reload_settings

    base = {**os.environ, **BENCH_PORTS, **SERVICE_SETTINGS, "PIPELINE_WORK_DIR": str(work),
            "PIPELINE_WARM_IDLE_SECONDS": warm_idle_seconds}
    # The project's own stack_env: its paths (PYTHONPATH, the DAGs folder) are that checkout's.
    stack_vars = run_cli(base, project, sys.executable, "-c",
                         "import json; from tools.stack import stack_env; print(json.dumps(stack_env()))").stdout
    api_port = free_port()
    env = {**base, **json.loads(stack_vars),
           "AIRFLOW__API__HOST": "127.0.0.1", "AIRFLOW__API__PORT": str(api_port),
           # The workers and the triggerer reach the API server here, not on the default :8080.
           "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{api_port}/execution/",
           # Another standalone on this machine (the integration tests') holds the default log server ports.
           "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
           "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
           "AIRFLOW__SCHEDULER__DAG_DIR_LIST_INTERVAL": "5"}
    saved = dict(os.environ)
    os.environ.update(env)  # for this process's settings, S3 and Chroma clients
    reload_settings()
    home = Path(env["AIRFLOW_HOME"])
    standalone = None
    try:
        run_cli(env, project, sys.executable, "-m", "tools.stack", "up")
        run_cli(env, project, AIRFLOW, "db", "migrate")
        with (home / "standalone.log").open("w") as log:
            standalone = subprocess.Popen([AIRFLOW, "standalone"], env=env, cwd=project, stdout=log,
                                          stderr=subprocess.STDOUT, start_new_session=True)
        give_up = time.monotonic() + 300
        for dag_id in (DAG_ID, INTERVAL_DAG_ID):
            while subprocess.run([AIRFLOW, "dags", "details", dag_id], env=env, cwd=project,
                                 capture_output=True).returncode != 0:
                if standalone.poll() is not None or time.monotonic() > give_up:
                    raise RuntimeError(f"the DAG processor never parsed {dag_id}:\n"
                                       f"{(home / 'standalone.log').read_text()[-4000:]}")
                time.sleep(3)
        run_cli(env, project, AIRFLOW, "dags", "pause", INTERVAL_DAG_ID)
        while not _watcher_running(home):
            if time.monotonic() > give_up:
                raise RuntimeError("the triggerer never took the inbox watcher")
            time.sleep(1)
        time.sleep(5)  # its first listings (of the empty inbox) are behind it
        yield Bench(env, deadline_seconds)
    finally:
        if standalone is not None:
            from tools.stack import stop_session

            stop_session(standalone)
        subprocess.run([sys.executable, "-m", "tools.stack", "down"], env=env, cwd=project, capture_output=True)
        os.environ.clear()
        os.environ.update(saved)
        reload_settings()


def print_drop(title: str, drop: Drop, deadline_seconds: float) -> None:
    print(f"==> {title}: {len(drop.uploaded)} file(s), uploaded in {max(drop.uploaded.values()) - drop.started:.1f}s",
          flush=True)
    for run in drop.runs:
        queued = unix_time(run["queued_at"])
        batches = drop.batches.get(run["run_id"], [])
        print(f"    run {run['run_id']} ({run['run_type']}, {run['state']}): queued "
              f"{queued - drop.started:.1f}s after the drop began, {len(batches)} batch(es) of {batches} documents")
    if not drop.runs:
        print("    no run started")
    if len(drop.uploaded) <= 5:
        for uri in drop.uploaded:
            seconds = drop.to_searchable(uri)
            print(f"    {uri.rsplit('/', 1)[-1]}: " + (f"searchable {seconds:.1f}s after its upload" if seconds is not None
                                                      else f"not searchable within {deadline_seconds:.0f}s"))
    if drop.all_searchable:
        print(f"    all {len(drop.uploaded)} searchable {max(drop.searchable.values()) - drop.started:.1f}s "
              "after the drop began")
    else:
        print(f"    DEADLINE HIT: {len(drop.searchable)} of {len(drop.uploaded)} searchable after "
              f"{deadline_seconds:.0f}s")
    print("    phases: " + ", ".join(f"{name} {'-' if seconds is None else f'{seconds:.1f}s'}"
                                     for name, seconds in drop.phases().items()))
    stages = Counter(job["metadata"].get("task_id", "?").split(".")[-1] for job in drop.jobs)
    print(f"    {len(drop.jobs)} Ray jobs ({', '.join(f'{stage} {n}' for stage, n in stages.items())}), "
          + (f"{drop.model_loads} model loads" if drop.model_loads is not None else "model loads not reported"),
          flush=True)
    if len(drop.jobs) <= 12:
        for job in drop.jobs:
            if job["start_time"] and job["end_time"]:
                print(f"      {job['metadata'].get('task_id', '?'):<22} started "
                      f"{job['start_time'] / 1000 - drop.started:6.1f}s after the drop, ran "
                      f"{(job['end_time'] - job['start_time']) / 1000:5.1f}s", flush=True)


def run_steps(bench: Bench, label: str, burst: int, scratch: Path) -> list[Drop]:
    """Steps 1 and 2, and 3 with ``burst``; their drops."""
    from tools.sample_pdfs import write_samples

    demo = {path.name: path.read_bytes() for path in write_samples(scratch / "demo")}
    first = bench.drop(demo)
    print_drop(f"{label}: first drop, cold cluster", first, bench.deadline_seconds)
    one_more = bench.drop({"later/one-more.pdf": next(iter(demo.values()))})
    print_drop(f"{label}: one more drop", one_more, bench.deadline_seconds)
    if not burst:
        return [first, one_more]
    folder = scratch / "burst"
    folder.mkdir()
    synthetic = {f"burst/report-{n:04d}.pdf": synthetic_pdf(folder / f"{n}.pdf", 1, n).read_bytes()
                 for n in range(burst)}
    burst_drop = bench.drop(synthetic)
    print_drop(f"{label}: burst of {burst}", burst_drop, bench.deadline_seconds)
    return [first, one_more, burst_drop]


def summary_rows(drops: list[Drop]) -> list[tuple[str, float | None]]:
    first, one_more, *burst = drops
    times = [first.to_searchable(uri) for uri in first.uploaded]
    rows = [(f"first drop, {len(times)} PDFs: slowest upload -> searchable, s",
             max(times) if None not in times else None)]
    rows += [(f"one more drop: {name}, s", seconds) for name, seconds in one_more.phases().items()]
    rows += [("one more drop: Ray jobs", len(one_more.jobs)), ("one more drop: model loads", one_more.model_loads)]
    for drop in burst:
        name = f"burst of {len(drop.uploaded)}"
        rows += [(f"{name}: runs started", len(drop.runs)),
                 (f"{name}: batches", sum(len(sizes) for sizes in drop.batches.values())),
                 (f"{name}: documents searchable", len(drop.searchable)),
                 (f"{name}: drop -> all searchable, s",
                  max(drop.searchable.values()) - drop.started if drop.all_searchable else None)]
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_drop", description=__doc__.splitlines()[0])
    parser.add_argument("--burst", type=int, default=500, help="one-page PDFs dropped at once (0: no burst)")
    parser.add_argument("--cold-too", action="store_true",
                        help="steps 1 and 2 again on a fresh stack with warm workers off, the baseline")
    parser.add_argument("--deadline-seconds", type=float, default=1800,
                        help="longest each drop may take to be searchable and its runs to end")
    parser.add_argument("--project", type=Path, default=ROOT,
                        help="run the stack, Airflow and the jobs of this copy of the project (default: this "
                        "checkout), e.g. an export of a commit, so that edits made here during the run do not "
                        "change the code measured")
    args = parser.parse_args(argv)

    print("settings: " + ", ".join(f"{k}={v!r}" for k, v in SERVICE_SETTINGS.items())
          + f"; PIPELINE_WARM_IDLE_SECONDS {WARM_IDLE_SECONDS['warm']} (warm) / {WARM_IDLE_SECONDS['cold']} (cold); "
          f"Airflow's default parallelism; ports {BENCH_PORTS}; code of {args.project.resolve()}", flush=True)
    results: dict[str, list[Drop]] = {}
    for label in ["warm", "cold"] if args.cold_too else ["warm"]:
        # Short: Ray's socket paths under the work dir must stay short.
        scratch = Path(tempfile.mkdtemp(prefix=f"bd-{label}-", dir="/tmp"))
        try:
            with session(args.project.resolve(), scratch / "w", WARM_IDLE_SECONDS[label],
                         args.deadline_seconds) as bench:
                settings = bench.settings
                print(f"{label}: batches of at most {settings.batch_max_documents} documents, "
                      f"{settings.max_parallel_batches} in flight, Ray job status polled every "
                      f"{settings.ray_poll_seconds:.0f}s, warm_idle_seconds={settings.warm_idle_seconds:.0f}",
                      flush=True)
                results[label] = run_steps(bench, label, args.burst if label == "warm" else 0, scratch)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    warm = summary_rows(results["warm"])
    cold = dict(summary_rows(results["cold"])) if "cold" in results else {}
    print("\n" + table([(label, value, cold.get(label)) for label, value in warm], with_cold=bool(cold)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

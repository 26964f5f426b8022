"""``document_ingest`` under Airflow's real services (``airflow standalone``: API server, scheduler,
DAG processor, triggerer, LocalExecutor), not ``airflow dags test``: files dropped into the inbox
start a run with nobody triggering it (the triggerer's inbox watcher); with one worker slot, each
stage task is DEFERRED while its Ray job runs, so more mapped batches than worker slots still have
their jobs running on Ray at the same time; a backfill of ``document_ingest_interval`` takes the
documents that arrived in each of its intervals.
"""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import pytest
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_fixed

from tests.integration.conftest import AIRFLOW, DAG_ID, isolated_env, ray_jobs_of, run
from tools import airflow_db
from tools.stack import stop_session

BATCHES = 3
INTERVAL_DAG_ID = "document_ingest_interval"
RUN_TIMEOUT = 900


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def services(stack, tmp_path_factory, sample_pdfs):
    """Airflow's services on a home of their own, one worker slot, one document per batch."""
    home = tmp_path_factory.mktemp("airflow-services")
    port = _free_port()
    # Three jobs at once on the worker node's two CPUs: each stage's pool one actor of 0.4 CPU and its
    # split tasks 0.1, or one job's actors hold the CPUs another's split task waits for (Ray Data sizes a
    # job as if it had the cluster to itself).
    pools = {f"PIPELINE_{stage.upper()}_POOL__{field}": value
             for stage in ("extract", "chunk", "enrich", "embed", "load")
             for field, value in (("MAX_ACTORS", "1"), ("ACTOR_CPUS", "0.4"))}
    settings = {**pools, "PIPELINE_SPLIT_CPUS": "0.1",
                # Each job starts its own actors, so a one-document job runs long enough (about ten
                # seconds) for the next task to take the one worker slot and submit its job meanwhile:
                # on warm workers it ends in about two, before another task could start.
                "PIPELINE_WARM_IDLE_SECONDS": "0",
                # Deferral is what is tested here: each task defers at once, holding no slot meanwhile.
                "PIPELINE_RAY_WAIT_BEFORE_DEFER_SECONDS": "0",
                "PIPELINE_BATCH_MAX_DOCUMENTS": "1", "PIPELINE_MAX_PARALLEL_BATCHES": str(BATCHES),
                "PIPELINE_QUERY_SCHEDULE": "", "PIPELINE_INGEST_SCHEDULE": "", "PIPELINE_INBOX_WATCH_SECONDS": "1",
                "PIPELINE_INBOX_SETTLE_SECONDS": "2", "PIPELINE_INGEST_INTERVAL_SCHEDULE": "* * * * *",
                "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__PARALLELISM": "1",
                "AIRFLOW__API__PORT": str(port), "AIRFLOW__API__HOST": "127.0.0.1",
                # The workers and the triggerer reach the API server here, not on the default :8080.
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
                "AIRFLOW__SCHEDULER__DAG_DIR_LIST_INTERVAL": "5"}
    for env in isolated_env(stack, "deferral", **settings):
        run(env, AIRFLOW, "db", "migrate")
        log = (home / "standalone.log").open("w")
        services = subprocess.Popen([AIRFLOW, "standalone"], env=env, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        try:
            deadline = time.monotonic() + 300
            for dag_id in (DAG_ID, INTERVAL_DAG_ID):
                while run(env, AIRFLOW, "dags", "details", dag_id, "-o", "json", check=False).returncode != 0:
                    assert services.poll() is None, (home / "standalone.log").read_text()[-4000:]
                    assert time.monotonic() < deadline, f"the DAG processor never parsed {dag_id}"
                    time.sleep(3)
            # Its runs every minute would take the one worker slot; the backfill test unpauses it.
            run(env, AIRFLOW, "dags", "pause", INTERVAL_DAG_ID)
            yield env
        finally:
            stop_session(services)
            log.close()


@pytest.fixture(scope="module")
def watched_run(services, sample_pdfs):
    """Three documents dropped into the inbox, nothing triggered: the run the watcher starts, its task
    states sampled until it ends."""
    from include.control.settings import get_control_settings
    from include.storage import Storage, join_uri

    settings = get_control_settings()
    home = Path(services["AIRFLOW_HOME"])
    for name in sorted(sample_pdfs)[:BATCHES]:
        Storage(settings).write_bytes(join_uri(settings.inbox_uri, name), sample_pdfs[name].read_bytes())
    dropped = time.time()
    deadline = time.monotonic() + RUN_TIMEOUT
    while not (started := [r for r in airflow_db.runs(home, DAG_ID) if r["run_type"] == "asset_triggered"]):
        assert time.monotonic() < deadline, "no run started after the drop"
        time.sleep(0.3)
    run_id = started[0]["run_id"]
    print(f"the drop's run was queued {_unix(started[0]['queued_at']) - dropped:.1f}s after the upload")
    seen: dict[tuple[str, int], set[str]] = {}
    while True:
        states = airflow_db.task_states(home, DAG_ID, run_id)
        for key, state in states.items():
            seen.setdefault(key, set()).add(state)
        if states.get(("prune_vectors", -1)) in ("success", "skipped", "failed", "upstream_failed"):
            break
        assert time.monotonic() < deadline, states
        time.sleep(0.3)
    return run_id, seen, states


def _unix(stamp: str) -> float:
    """A time as Airflow's SQLite database holds it (UTC, with or without its offset)."""
    from datetime import UTC, datetime

    moment = datetime.fromisoformat(stamp)
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def test_a_drop_starts_exactly_one_run_with_nobody_triggering_it(services, watched_run):
    time.sleep(5)  # several polls of the watcher over the unchanged, now ingested inbox
    runs = airflow_db.runs(Path(services["AIRFLOW_HOME"]), DAG_ID)
    assert [r["run_type"] for r in runs] == ["asset_triggered"], runs


def test_the_run_succeeds_under_the_scheduler_with_one_worker_slot(watched_run):
    _, _, states = watched_run
    stages = [key for key in states if key[0].startswith("ingest_batch.") and key[1] >= 0]
    assert len(stages) == 5 * BATCHES and all(states[key] == "success" for key in stages), states
    assert states[("summarize", -1)] == "success"


def test_each_stage_task_was_deferred_while_its_job_ran(watched_run):
    _, seen, _ = watched_run
    # Mapped: one task instance per batch (map index 0..2; -1 is the placeholder before expansion).
    stage_tasks = {key: states for key, states in seen.items() if key[0].startswith("ingest_batch.") and key[1] >= 0}
    assert len(stage_tasks) == 5 * BATCHES and all("deferred" in states for states in stage_tasks.values()), stage_tasks


def test_more_batches_than_worker_slots_run_their_jobs_on_ray_at_once(services, watched_run):
    run_id, _, _ = watched_run
    extract = sorted((job.start_time, job.end_time) for job in ray_jobs_of(services, run_id)
                     if " extract " in f"{job.entrypoint} ")
    assert len(extract) == BATCHES
    # Ray's start and end times, in ms. With one worker slot, a task that held it for its job's whole
    # run would let the next job start only after that one ended: each started while the one before
    # still ran. (All three at one moment depends on how fast one slot submits three tasks against
    # how long a job runs: 8 s apart against 15 s jobs here, which made it a race.)
    assert all(start < previous_end for (_, previous_end), (start, _) in zip(extract, extract[1:])), extract


def test_a_backfill_takes_exactly_the_documents_that_arrived_in_each_interval(services, watched_run, sample_pdfs):
    from include.contract import BatchSpec
    from include.control.batching import read_plan, run_folder
    from include.control.settings import get_control_settings
    from include.storage import Storage, join_uri

    settings = get_control_settings()
    storage = Storage(settings)
    home = Path(services["AIRFLOW_HOME"])
    run(services, AIRFLOW, "dags", "pause", DAG_ID)  # the watcher's runs would take the new files first
    minute = lambda stamp: int(stamp // 60) * 60  # noqa: E731 - the interval (one minute) a time falls in
    # Two arrivals in two consecutive intervals, so the backfill has two runs (each interval costs a run).
    new = [join_uri(settings.inbox_uri, f"backfill/{name}") for name in sorted(sample_pdfs)[:2]]
    for number, (uri, name) in enumerate(zip(new, sorted(sample_pdfs), strict=False)):
        if number:
            time.sleep(max(0.0, minute(storage.stat(new[0]).modified) + 60.5 - time.time()))
        storage.write_bytes(uri, sample_pdfs[name].read_bytes())
    arrivals = {info.uri: info.modified for info in storage.list_objects(settings.inbox_uri)}
    first, last = minute(arrivals[new[0]]), minute(arrivals[new[1]])
    assert last == first + 60, (first, last)
    time.sleep(max(0.0, last + 61 - time.time()))  # the last interval has ended
    iso = lambda stamp: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(stamp))  # noqa: E731
    # Created while the DAG is paused, so the run the scheduler makes on unpausing (for the latest
    # interval) cannot take one of these intervals first; Airflow starts a paused DAG's backfill runs
    # once it is unpaused. The CLI writes the backfill in one transaction to the SQLite file the
    # scheduler and the DAG processor write too: once, on two busy cores, one of them held it past
    # SQLite's wait ("database is locked"), and the failed transaction left nothing to undo.
    create = Retrying(retry=retry_if_exception(lambda exc: "database is locked" in str(exc)),
                      stop=stop_after_attempt(3), wait=wait_fixed(2), reraise=True)
    create(run, services, AIRFLOW, "backfill", "create", "--dag-id", INTERVAL_DAG_ID,
           "--from-date", iso(first), "--to-date", iso(last), "--reprocess-behavior", "completed")
    run(services, AIRFLOW, "dags", "unpause", INTERVAL_DAG_ID)
    deadline = time.monotonic() + RUN_TIMEOUT
    while len(done := [r for r in airflow_db.runs(home, INTERVAL_DAG_ID)
                       if r["run_type"] == "backfill" and r["state"] in ("success", "failed")]) < 2:
        assert time.monotonic() < deadline, airflow_db.runs(home, INTERVAL_DAG_ID)
        time.sleep(1)
    assert {r["state"] for r in done} == {"success"}, done
    for interval, uri in zip(sorted(done, key=lambda r: r["data_interval_start"]), new, strict=True):
        start, end = _unix(interval["data_interval_start"]), _unix(interval["data_interval_end"])
        arrived = {uri for uri, modified in arrivals.items() if start <= modified < end}
        plan = read_plan(storage, run_folder(settings.artifacts_uri, INTERVAL_DAG_ID, interval["run_id"]))
        planned = {doc.source_uri for batch in plan.batches
                   for doc in BatchSpec.model_validate(storage.read_json(batch.batch_uri)).documents}
        # The new file is work; anything else that arrived then was ingested by the watcher's run.
        assert planned == {uri}, (interval, planned, arrived)
        assert plan.unchanged == len(arrived - {uri}), (interval, plan.unchanged, arrived)

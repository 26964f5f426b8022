"""``document_ingest`` under Airflow's real services (``airflow standalone``: API server, scheduler,
DAG processor, triggerer, LocalExecutor), not ``airflow dags test``: with one worker slot, each stage
task is DEFERRED while its Ray job runs, so more mapped batches than worker slots still have their
jobs running on Ray at the same time.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.integration.conftest import AIRFLOW, DAG_ID, isolated_env, ray_jobs_of, run
from tools import airflow_db

BATCHES = 3
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
                "PIPELINE_BATCH_MAX_DOCUMENTS": "1", "PIPELINE_MAX_PARALLEL_BATCHES": str(BATCHES),
                "PIPELINE_QUERY_SCHEDULE": "", "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__PARALLELISM": "1",
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
            while run(env, AIRFLOW, "dags", "details", DAG_ID, "-o", "json", check=False).returncode != 0:
                assert services.poll() is None, (home / "standalone.log").read_text()[-4000:]
                assert time.monotonic() < deadline, "the DAG processor never parsed document_ingest"
                time.sleep(3)
            yield env
        finally:
            os.killpg(services.pid, signal.SIGTERM)
            try:
                services.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(services.pid, signal.SIGKILL)
            log.close()


@pytest.fixture(scope="module")
def watched_run(services, sample_pdfs):
    """One triggered run over three documents, its task states sampled until it ends."""
    from include.control.settings import get_control_settings
    from include.storage import Storage, join_uri

    settings = get_control_settings()
    names = sorted(sample_pdfs)[:BATCHES]
    for name in names:
        Storage(settings).write_bytes(join_uri(settings.inbox_uri, name), sample_pdfs[name].read_bytes())
    triggered = run(services, AIRFLOW, "dags", "trigger", DAG_ID, "-c", json.dumps({"keys": names}), "-o", "json")
    run_id = json.loads(triggered.stdout.strip().splitlines()[-1])[0]["dag_run_id"]
    home = Path(services["AIRFLOW_HOME"])
    seen: dict[tuple[str, int], set[str]] = {}
    deadline = time.monotonic() + RUN_TIMEOUT
    while True:
        states = airflow_db.task_states(home, DAG_ID, run_id)
        for key, state in states.items():
            seen.setdefault(key, set()).add(state)
        if states.get(("prune_vectors", -1)) in ("success", "skipped", "failed", "upstream_failed"):
            break
        assert time.monotonic() < deadline, states
        time.sleep(0.3)
    return run_id, seen, states


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
    extract = [job for job in ray_jobs_of(services, run_id) if " extract " in f"{job.entrypoint} "]
    assert len(extract) == BATCHES
    # Ray's start and end times, in ms: all three were running at one moment, with one worker slot.
    assert max(job.start_time for job in extract) < min(job.end_time for job in extract), [
        (job.start_time, job.end_time) for job in extract]

"""Faults on the real stack, each while a real DAG run is under way: a stage's Ray job killed,
the S3 server stopped, two runs started at once. Each time, every document ends up
ingested once: no vector twice, no document processed by two runs, never two jobs of one
task at once.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from include.control.ingest import STAGE_ORDER as STAGES
from tests.integration.conftest import AIRFLOW, DAG_ID, chroma, isolated_env, ray_jobs_of
from tests.integration.conftest import run as run_command
from tools import airflow_db

pytestmark = pytest.mark.integration

SAMPLES = ("metformin_trial_protocol.pdf", "adverse_event_guide.pdf")


@pytest.fixture(scope="module")
def env(stack):
    yield from isolated_env(stack, "faults")


def _drop(sample_pdfs, folder: str) -> list[str]:
    from include.control.settings import get_control_settings
    from include.storage import Storage, join_uri

    settings = get_control_settings()
    uris = []
    for name in SAMPLES:
        uris.append(join_uri(settings.inbox_uri, folder, name))
        Storage(settings).write_bytes(uris[-1], sample_pdfs[name].read_bytes())
    return uris


def _start_run(env, log: Path) -> subprocess.Popen:
    return subprocess.Popen([AIRFLOW, "dags", "test", DAG_ID], env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)


def _wait_for_running_job(env, stage: str, known: set[str], run: subprocess.Popen, timeout: float = 300):
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(env["RAY_ADDRESS"])
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and run.poll() is None:
        for job in client.list_jobs():
            if job.submission_id not in known and f" {stage} " in job.entrypoint and str(job.status) == "RUNNING":
                return client, job
        time.sleep(0.3)
    raise AssertionError(f"no {stage} job ran (DAG run exit code {run.poll()})")


def _all_known_jobs(env) -> set[str]:
    from ray.job_submission import JobSubmissionClient

    return {j.submission_id for j in JobSubmissionClient(env["RAY_ADDRESS"]).list_jobs()}


def _assert_each_document_ingested_once(settings, uris: list[str]) -> None:
    from include.control.ledger import Ledger, Status

    entries = Ledger.open(settings).entries(source_uris=uris)
    assert {uri: entries[uri].status for uri in uris} == {uri: Status.INGESTED for uri in uris}
    stored = chroma(settings).get(where={"source_uri": {"$in": uris}}, include=["metadatas"])
    # One vector per chunk of the version the ledger has indexed, none of any other.
    assert len(stored["ids"]) == len(set(stored["ids"])) == sum(entries[u].chunks for u in uris)
    assert {m["doc_id"] for m in stored["metadatas"]} == {entries[u].indexed_doc_id for u in uris}


def test_a_killed_stage_job_is_retried_by_airflow_and_every_document_finishes_once(env, sample_pdfs, tmp_path):
    from include.control.settings import get_control_settings

    uris = _drop(sample_pdfs, "killed")
    known = _all_known_jobs(env)
    run = _start_run(env, tmp_path / "dag.log")
    client, job = _wait_for_running_job(env, "enrich", known, run)
    time.sleep(2)  # mid-batch: its workers are loading models or enriching
    assert client.stop_job(job.submission_id)
    assert run.wait(timeout=900) == 0, (tmp_path / "dag.log").read_text()[-4000:]

    run_id = job.metadata["run_id"]
    states = airflow_db.task_states(Path(env["AIRFLOW_HOME"]), DAG_ID, run_id)
    assert {states[(f"ingest_batch.{stage}", 0)] for stage in STAGES} == {"success"}
    enrich = sorted((j for j in ray_jobs_of(env, run_id) if " enrich " in j.entrypoint), key=lambda j: j.submission_id)
    assert [(j.submission_id[-5:], str(j.status)) for j in enrich] == [("-try1", "STOPPED"), ("-try2", "SUCCEEDED")]
    assert enrich[0].end_time <= enrich[1].start_time  # never two jobs of one task at once
    _assert_each_document_ingested_once(get_control_settings(), uris)


def test_with_s3_down_mid_run_tasks_fail_clearly_and_the_retry_completes(env, sample_pdfs, tmp_path):
    from include.control.settings import get_control_settings

    uris = _drop(sample_pdfs, "s3-outage")
    known = _all_known_jobs(env)
    log = tmp_path / "dag.log"
    run = _start_run(env, log)
    _, job = _wait_for_running_job(env, "enrich", known, run)
    run_command(env, sys.executable, "-m", "tools.stack", "down", "s3")
    time.sleep(20)  # long enough for the running job and its task to fail on it
    run_command(env, sys.executable, "-m", "tools.stack", "up")
    assert run.wait(timeout=900) == 0, log.read_text()[-4000:]

    output = log.read_text()
    assert "Could not connect to the endpoint URL" in output  # the failed try says what was unreachable
    run_id = job.metadata["run_id"]
    tries = [j for j in ray_jobs_of(env, run_id) if " enrich " in j.entrypoint]
    assert len(tries) >= 2 and str(max(tries, key=lambda j: j.submission_id).status) == "SUCCEEDED"
    _assert_each_document_ingested_once(get_control_settings(), uris)


def test_two_runs_started_at_once_process_each_document_once(env, sample_pdfs, tmp_path):
    from include.control.ledger import Ledger
    from include.control.settings import get_control_settings

    uris = _drop(sample_pdfs, "twice")
    home = Path(env["AIRFLOW_HOME"])
    before = set(airflow_db.run_ids(home, DAG_ID))
    runs = [_start_run(env, tmp_path / f"dag-{n}.log") for n in range(2)]
    assert [run.wait(timeout=900) for run in runs] == [0, 0]
    both = set(airflow_db.run_ids(home, DAG_ID)) - before
    assert len(both) == 2

    ledger = Ledger.open(get_control_settings())
    claims = [e.run_id for uri in uris for e in ledger.history(uri) if e.event == "claimed"]
    assert len(claims) == len(uris) and len(set(claims)) == 1  # one run claimed them all, each once
    [winner] = set(claims)
    [loser] = both - {winner}
    # The other run found them held by the winner (or, started late, found no work at all).
    assert ray_jobs_of(env, loser) == []
    assert [j.entrypoint.split()[3] for j in ray_jobs_of(env, winner)].count("extract") == 1
    _assert_each_document_ingested_once(get_control_settings(), uris)

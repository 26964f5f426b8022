"""The whole thing for real: SeaweedFS S3 and a Ray head started by the launcher, the
``document_ingest`` DAG run by Airflow (``airflow dags test``), vectors in Chroma.

The stack runs on its own ports and work dir, so a demo stack left running does not
interfere.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from include.ingest import STAGE_ORDER as STAGES
from tools import airflow_db
from tools.sample_pdfs import SAMPLES

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DAG_ID = "document_ingest"
GOOD = ("metformin_trial_protocol.pdf", "site_operations_handbook.pdf")
# A good PDF under a key with every character that once broke a URI round trip.
TRICKY = "Übersicht #2 ?100%.PDF"
TEST_PORTS = {"STACK_S3_PORT": "28333", "STACK_RAY_DASHBOARD_PORT": "28265", "STACK_RAY_GCS_PORT": "26379",
              "STACK_CHROMA_PORT": "28000"}


def _run(env: dict[str, str], *args: str, check: bool = True, timeout: int = 1200) -> subprocess.CompletedProcess:
    result = subprocess.run(args, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{args} exited {result.returncode}:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    from include.settings import get_settings
    from tools.stack import stack_env

    patch = pytest.MonkeyPatch()
    work = tmp_path_factory.mktemp("stack") / "work"
    for name, value in {**TEST_PORTS, "PIPELINE_WORK_DIR": str(work), "PIPELINE_INGEST_SCHEDULE": ""}.items():
        patch.setenv(name, value)
    for name, value in stack_env().items():  # this process reads the stack like the DAG does
        patch.setenv(name, value)
    env = dict(os.environ)
    get_settings.cache_clear()
    python = sys.executable
    try:
        _run(env, python, "-m", "tools.stack", "up")
        again = _run(env, python, "-m", "tools.stack", "up")  # idempotent: nothing restarted
        assert "s3: already running" in again.stdout and "ray: already running" in again.stdout
        _run(env, str(Path(python).parent / "airflow"), "db", "migrate")
        yield env
    finally:
        _run(env, python, "-m", "tools.stack", "down", check=False)
        patch.undo()
        get_settings.cache_clear()


@pytest.fixture(scope="module")
def inbox(stack, sample_pdfs, tmp_path_factory):
    """Two good PDFs, a corrupt one and an encrypted one, dropped into the S3 inbox."""
    from fpdf import FPDF

    from include.settings import get_settings
    from include.storage import Storage, join_uri

    settings = get_settings()
    storage = Storage(settings)
    for name in GOOD:
        storage.write_bytes(join_uri(settings.inbox_uri, name), sample_pdfs[name].read_bytes())
    storage.write_bytes(join_uri(settings.inbox_uri, TRICKY), sample_pdfs["adverse_event_guide.pdf"].read_bytes())
    storage.write_bytes(join_uri(settings.inbox_uri, "corrupt.pdf"), b"%PDF-1.7\n1 0 obj << broken")
    locked = FPDF()
    locked.set_encryption(owner_password="owner", user_password="1234")
    locked.add_page()
    locked.set_font("Helvetica", size=12)
    locked.cell(text="locked away")
    storage.write_bytes(join_uri(settings.inbox_uri, "locked.pdf"), bytes(locked.output()))
    return settings


def _dag_test(env) -> str:
    _run(env, str(Path(sys.executable).parent / "airflow"), "dags", "test", DAG_ID, check=False)
    return airflow_db.latest_run_id(Path(env["AIRFLOW_HOME"]), DAG_ID)


@pytest.fixture(scope="module")
def first_run(stack, inbox):
    return _dag_test(stack)


def _stage_xcoms(env, run_id):
    values = airflow_db.xcoms(Path(env["AIRFLOW_HOME"]), DAG_ID, run_id)
    return {key: value for key, value in values.items() if key[0].startswith("ingest_batch.")}


def test_good_documents_finish_all_stages_in_one_batch_and_bad_ones_fail_alone(stack, first_run):
    states = airflow_db.task_states(Path(stack["AIRFLOW_HOME"]), DAG_ID, first_run)
    # One batch: every stage task is map index 0, and a bad document fails none of them.
    assert {(task, index): state for (task, index), state in states.items() if task.startswith("ingest_batch.")} == {
        (f"ingest_batch.{stage}", 0): "success" for stage in STAGES
    }
    summary = airflow_db.xcoms(Path(stack["AIRFLOW_HOME"]), DAG_ID, first_run, key="summary")[("summarize", -1)]
    assert summary["batches"] == 1 and summary["documents"] == 5 and summary["succeeded"] == 3
    errors = {item["source_uri"].rsplit("/", 1)[-1]: (item["stage"], item["error"]) for item in summary["failed"]}
    assert errors["locked.pdf"][0] == errors["corrupt.pdf"][0] == "extract"
    assert "locked.pdf: the PDF is encrypted" in errors["locked.pdf"][1]
    assert "corrupt.pdf: the PDF is corrupt" in errors["corrupt.pdf"][1]
    assert states[("summarize", -1)] == "failed"  # the run says some documents failed


def test_xcom_holds_the_batch_result_uri_counts_and_metrics_only(stack, first_run):
    values = _stage_xcoms(stack, first_run)
    assert {task for task, _ in values} == {f"ingest_batch.{stage}" for stage in STAGES}
    for (task, _), value in values.items():
        assert set(value) == {"stage", "batch_id", "result_uri", "documents", "succeeded", "failed", "metrics"}
        assert value["result_uri"].startswith("s3://") and value["result_uri"].endswith("-try1.json")
        assert all(isinstance(n, (int, float)) for n in value["metrics"].values())
    extract = values[("ingest_batch.extract", 0)]
    assert (extract["documents"], extract["succeeded"], extract["failed"]) == (5, 3, 2)
    assert values[("ingest_batch.load", 0)]["documents"] == 3  # the bad ones were left out


def _chroma(settings):
    from include.backends.vector_stores import ChromaStore

    return ChromaStore(settings)._collection


def test_every_chunk_has_one_vector_no_pii_is_stored_and_keys_round_trip(stack, inbox, first_run):
    from include.storage import join_uri

    values = _stage_xcoms(stack, first_run)
    chunks = values[("ingest_batch.enrich", 0)]["metrics"]["chunks"]
    collection = _chroma(inbox)
    stored = collection.get(include=["documents", "metadatas"])
    assert len(stored["ids"]) == collection.count() == chunks
    everything = " ".join(stored["documents"]) + " ".join(str(m) for m in stored["metadatas"])
    secrets = [value for sample in SAMPLES for value in sample.pii.values()]
    assert secrets and not [s for s in secrets if s in everything]
    assert "[REDACTED:EMAIL]" in everything and "[REDACTED:SSN]" in everything
    sources = {m["source_uri"] for m in stored["metadatas"]}
    assert sources == {join_uri(inbox.inbox_uri, name) for name in (*GOOD, TRICKY)}


def test_each_stage_ran_as_one_ray_job_per_batch_with_a_deterministic_id(stack, first_run):
    from ray.job_submission import JobSubmissionClient

    jobs = JobSubmissionClient(stack["RAY_ADDRESS"]).list_jobs()
    ours = [j for j in jobs if j.submission_id.startswith("airflow-document_ingest") and j.metadata.get("run_id") == first_run]
    assert len(ours) == len(STAGES) * 1  # five stages x one batch, whatever the number of documents
    assert all(j.submission_id.endswith("-try1") and str(j.status) == "SUCCEEDED" for j in ours)
    assert sorted(j.entrypoint.split()[3] for j in ours) == sorted(STAGES)


def test_a_second_run_reuses_results_and_adds_no_vectors(stack, inbox, first_run):
    before = _chroma(inbox).count()
    second = _dag_test(stack)
    assert second != first_run
    assert _chroma(inbox).count() == before
    values = _stage_xcoms(stack, second)
    for stage in STAGES[:-1]:
        value = values[(f"ingest_batch.{stage}", 0)]
        assert value["metrics"]["reused"] == value["succeeded"] > 0


def test_a_retry_reattaches_to_the_running_batch_job_of_the_previous_try(stack, inbox):
    """The worker of try 1 lost its task while its Ray job ran on: try 2 waits for that job, submits none."""
    import threading
    from types import SimpleNamespace

    from ray.job_submission import JobSubmissionClient

    from include.ingest import plan_run
    from include.stage_operator import PipelineStageOperator

    run_id = "manual__retry-test"
    [batch] = plan_run(DAG_ID, run_id, list(GOOD))

    def context(try_number: int) -> dict:
        ti = SimpleNamespace(dag_id=DAG_ID, run_id=run_id, task_id="ingest_batch.extract", map_index=0,
                             try_number=try_number)
        return {"ti": ti, "params": {"recompute": ["extract"]}}  # real work, so the job runs a while

    first = PipelineStageOperator(task_id="extract", stage="extract", upstream=batch, poll_interval=0.5)
    worker = threading.Thread(target=first.execute, args=(context(1),))
    worker.start()
    client = JobSubmissionClient(stack["RAY_ADDRESS"])
    deadline = time.monotonic() + 60
    while not any(j.metadata.get("run_id") == run_id for j in client.list_jobs()):
        assert time.monotonic() < deadline, "try 1 never submitted its job"
        time.sleep(0.2)
    second = PipelineStageOperator(task_id="extract", stage="extract", upstream=batch, poll_interval=0.5)
    xcom = second.execute(context(2))
    worker.join()
    jobs = [j for j in client.list_jobs() if j.metadata.get("run_id") == run_id]
    assert [j.submission_id for j in jobs] == [first.submission_id] == [second.submission_id]
    assert xcom["succeeded"] == len(GOOD) and xcom["result_uri"].endswith("-try1.json")

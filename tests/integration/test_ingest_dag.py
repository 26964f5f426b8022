"""The whole thing for real: SeaweedFS S3 and a Ray head started by the launcher, the
``document_ingest`` DAG run by Airflow (``airflow dags test``), vectors in Chroma.

The stack runs on its own ports and work dir, so a demo stack left running does not
interfere.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from include.ingest import STAGE_ORDER as STAGES
from tools import airflow_db
from tools.sample_pdfs import SAMPLES

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DAG_ID = "document_ingest"
GOOD = ("metformin_trial_protocol.pdf", "site_operations_handbook.pdf")
TEST_PORTS = {"STACK_S3_PORT": "28333", "STACK_RAY_DASHBOARD_PORT": "28265", "STACK_RAY_GCS_PORT": "26379"}


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
    return {key: value for key, value in values.items() if key[0].startswith("ingest_document.")}


def test_good_documents_finish_all_stages_and_bad_ones_fail_alone(stack, first_run):
    states = airflow_db.task_states(Path(stack["AIRFLOW_HOME"]), DAG_ID, first_run)
    extract = {index: state for (task, index), state in states.items() if task == "ingest_document.extract"}
    assert sorted(extract.values()) == ["failed", "failed", "success", "success"]
    for index, state in extract.items():
        downstream = {states[(f"ingest_document.{s}", index)] for s in STAGES[1:]}
        assert downstream == ({"success"} if state == "success" else {"upstream_failed"})

    summary = airflow_db.xcoms(Path(stack["AIRFLOW_HOME"]), DAG_ID, first_run, key="summary")[("summarize", -1)]
    assert summary["succeeded"] == 2
    errors = {item["source_uri"].rsplit("/", 1)[-1]: item["error"] for item in summary["failed"]}
    assert "locked.pdf: the PDF is encrypted" in errors["locked.pdf"]
    assert "corrupt.pdf: the PDF is corrupt" in errors["corrupt.pdf"]
    assert states[("summarize", -1)] == "failed"  # the run says some documents failed


def test_xcom_holds_uris_and_metrics_only(stack, first_run):
    values = _stage_xcoms(stack, first_run)
    assert len(values) == len(GOOD) * len(STAGES)
    for value in values.values():
        assert set(value) == {"stage", "doc_id", "source_uri", "manifest_uri", "outputs", "metrics"}
        assert all("://" in uri and len(uri) < 300 for uri in value["outputs"].values())
        assert all(isinstance(n, (int, float)) for n in value["metrics"].values())
        assert value["manifest_uri"].startswith("s3://")


def _chroma(settings):
    from include.backends.vector_stores import ChromaStore

    return ChromaStore(settings)._collection


def test_every_chunk_has_one_vector_and_no_pii_is_stored(stack, inbox, first_run):
    values = _stage_xcoms(stack, first_run)
    chunks = sum(v["metrics"]["chunks"] for (task, _), v in values.items() if task == "ingest_document.enrich")
    collection = _chroma(inbox)
    stored = collection.get(include=["documents", "metadatas"])
    assert len(stored["ids"]) == collection.count() == chunks
    everything = " ".join(stored["documents"]) + " ".join(str(m) for m in stored["metadatas"])
    secrets = [value for sample in SAMPLES if sample.filename in GOOD for value in sample.pii.values()]
    assert secrets and not [s for s in secrets if s in everything]
    assert "[REDACTED:EMAIL]" in everything and "[REDACTED:SSN]" in everything


def test_each_stage_ran_as_its_own_ray_job_with_a_deterministic_id(stack, first_run):
    from ray.job_submission import JobSubmissionClient

    jobs = JobSubmissionClient(stack["RAY_ADDRESS"]).list_jobs()
    ours = [j for j in jobs if j.submission_id.startswith("airflow-document_ingest") and j.metadata.get("run_id") == first_run]
    assert len(ours) == len(GOOD) * len(STAGES) + 2  # two bad documents stop at extract
    assert all(j.submission_id.endswith("-try1") for j in ours)
    assert {j.entrypoint.split()[3] for j in ours} == set(STAGES)


def test_a_second_run_reuses_results_and_adds_no_vectors(stack, inbox, first_run):
    before = _chroma(inbox).count()
    second = _dag_test(stack)
    assert second != first_run
    assert _chroma(inbox).count() == before
    values = _stage_xcoms(stack, second)
    reused = [v for (task, _), v in values.items() if task != "ingest_document.load"]
    assert reused and all(v["metrics"].get("reused") == 1 for v in reused)


def test_a_retry_reattaches_to_the_running_job_of_the_previous_try(stack):
    """The worker of try 1 died while its Ray job ran on: try 2 must wait for that job, not start another."""
    from types import SimpleNamespace

    from ray_operators.hooks.ray_job import RayJobHook
    from ray_operators.operators.ray_job import RayJobOperator, submission_id_for

    hook = RayJobHook()
    first = submission_id_for("retry_dag", "run-1", "work", -1, 1)
    hook.submit(entrypoint="python -c 'import time; time.sleep(4); print(\"done\")'", submission_id=first)
    operator = RayJobOperator(task_id="work", entrypoint="python -c 'print(1)'", poll_interval=0.5)
    ti = SimpleNamespace(dag_id="retry_dag", run_id="run-1", task_id="work", map_index=-1, try_number=2)
    operator.execute({"ti": ti})
    assert str(hook.find(first).status) == "SUCCEEDED"
    assert hook.find(submission_id_for("retry_dag", "run-1", "work", -1, 2)) is None

"""The cloud path end to end, as a user would run it, against local fakes of OpenAI and Pinecone:
``enricher=openai``, ``embedder=openai``, ``vector_store=pinecone`` (and ``generator=openai`` for
the questions), both DAGs run by Airflow, every stage a Ray job on the stack's worker node. The
API keys live only in the Ray nodes' environment, never in the Airflow process's (``dag_test``);
the Job API's view of every job, and Airflow's task logs, must hold none of them.
"""

from __future__ import annotations

import io
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from include.pii_shapes import find_pii
from include.query.pipeline import read_answers
from tests.fakes.openai_server import FakeOpenAI, NotRedacting
from tests.fakes.pinecone_server import FakePinecone
from tests.integration.conftest import WORKER_SECRETS, dag_test, dag_test_logs, isolated_env, ray_jobs_of
from tools import airflow_db

pytestmark = pytest.mark.integration

QUERY_DAG = "rag_batch_query"
INDEX = "cloud-documents"


@pytest.fixture(scope="module")
def fakes():
    with FakeOpenAI(api_key=WORKER_SECRETS["OPENAI_API_KEY"]) as openai_fake, \
            FakePinecone(api_key=WORKER_SECRETS["PINECONE_API_KEY"]) as pinecone_fake:
        yield SimpleNamespace(openai=openai_fake, pinecone=pinecone_fake)


@pytest.fixture(scope="module")
def env(stack, fakes):
    yield from isolated_env(
        stack, "cloud",
        PIPELINE_ENRICHER="openai", PIPELINE_EMBEDDER="openai", PIPELINE_VECTOR_STORE="pinecone",
        PIPELINE_GENERATOR="openai", PIPELINE_OPENAI_BASE_URL=fakes.openai.base_url,
        PIPELINE_GENERATOR_BASE_URL=fakes.openai.base_url, PIPELINE_PINECONE_HOST=fakes.pinecone.control_host,
        PIPELINE_PINECONE_INDEX=INDEX,
    )


@pytest.fixture(scope="module")
def ingested(env, fakes, sample_pdfs):
    from include.control.settings import get_control_settings
    from include.storage import Storage, join_uri

    settings = get_control_settings()
    storage = Storage(settings)
    for name, path in sample_pdfs.items():
        storage.write_bytes(join_uri(settings.inbox_uri, name), path.read_bytes())
    # Every reply "forgets" to redact: the safety net after the model must catch it all.
    fakes.openai.script("chat", [NotRedacting()] * 200)
    run_id = dag_test(env)
    summary = airflow_db.xcoms(Path(env["AIRFLOW_HOME"]), "document_ingest", run_id, key="summary")[("summarize", -1)]
    return SimpleNamespace(run_id=run_id, summary=summary, settings=settings, storage=storage)


def _no_secret_in(jobs: list) -> None:
    for job in jobs:
        shown = repr(job)  # entrypoint, runtime_env, metadata: what the Job API and dashboard show
        for secret in WORKER_SECRETS.values():
            assert secret not in shown, job.submission_id


def _no_secret_in_airflow_logs(env) -> None:
    """Every task log of the module's runs, the jobs' driver logs streamed into them included."""
    logs = dag_test_logs(env)
    assert logs
    for path in logs:
        text = path.read_text(errors="replace")
        assert not any(secret in text for secret in WORKER_SECRETS.values()), path


def test_the_ingest_dag_runs_on_the_cloud_backends_and_reports_what_it_cost(env, fakes, ingested):
    summary = ingested.summary
    assert summary["succeeded"] == 3 and summary["failed"] == []
    chat_in, chat_out = fakes.openai.tokens("chat")
    embed_in, _ = fakes.openai.tokens("embeddings")
    expected = (chat_in * 0.15 + chat_out * 0.60 + embed_in * 0.02) / 1e6
    assert summary["cost"]["cost_usd"] == pytest.approx(expected, abs=1e-5)
    assert summary["cost"]["per_1000_pages_usd"] == pytest.approx(expected * 1000 / 4, abs=1e-3)
    jobs = ray_jobs_of(env, ingested.run_id)
    assert len(jobs) == 5 and all(str(j.status) == "SUCCEEDED" for j in jobs)
    _no_secret_in(jobs)


def test_pinecone_holds_one_vector_per_chunk_and_no_pii(fakes, ingested):
    stored = fakes.pinecone.vectors(INDEX)
    assert len(stored) == ingested.summary["stages"]["load"]["vectors"] > 0
    for _values, metadata in stored.values():
        assert not find_pii(metadata["text"]) and not find_pii(metadata["heading"]), metadata
    assert ingested.summary["stages"]["enrich"]["redactions_safety_net"] == 5


def test_questions_are_answered_from_pinecone_by_the_openai_generator(env, fakes, ingested):
    from include.storage import join_uri

    questions = pa.table({"id": ["dose"], "prompt": ["What is the maximum daily dose of metformin in the trial?"]})
    sink = io.BytesIO()
    pq.write_table(questions, sink)
    ingested.storage.write_bytes(join_uri(ingested.settings.queries_uri, "cloud.parquet"), sink.getvalue())
    run_id = dag_test(env, dag_id=QUERY_DAG)
    row = read_answers(ingested.storage, join_uri(ingested.settings.answers_uri, "cloud.parquet") + "/").to_pylist()[0]
    assert row["passages"][0]["source_uri"].endswith("metformin_trial_protocol.pdf")
    assert row["passages"][0]["page_start"] == 2
    assert row["model"] == "gpt-4o-mini" and row["answer"] and row["cost_usd"] > 0
    jobs = ray_jobs_of(env, run_id, QUERY_DAG)
    assert len(jobs) == 1 and str(jobs[0].status) == "SUCCEEDED"
    _no_secret_in(jobs)
    _no_secret_in_airflow_logs(env)


def test_a_deleted_document_leaves_pinecone_through_the_prune_job_the_airflow_side_holding_no_key(
        env, fakes, ingested):
    """Removing vectors takes the store's key: the prune job has it on the Ray node; Airflow does not."""
    from include.control.ledger import Ledger, Status
    from include.storage import join_uri

    gone = join_uri(ingested.settings.inbox_uri, "site_operations_handbook.pdf")
    assert any(meta["source_uri"] == gone for _values, meta in fakes.pinecone.vectors(INDEX).values())
    ingested.storage.delete(gone)
    run_id = dag_test(env)
    assert not any(meta["source_uri"] == gone for _values, meta in fakes.pinecone.vectors(INDEX).values())
    jobs = ray_jobs_of(env, run_id)
    assert [job.entrypoint.split()[2] for job in jobs] == ["include.prune"]
    assert str(jobs[0].status) == "SUCCEEDED"
    entry = Ledger.open(ingested.settings).entries()[gone]
    assert (entry.status, entry.indexed_doc_id, entry.vectors) == (Status.DELETED, None, 0)
    _no_secret_in(jobs)
    _no_secret_in_airflow_logs(env)

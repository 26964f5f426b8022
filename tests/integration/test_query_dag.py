"""The query side for real: the sample PDFs ingested by ``document_ingest``, then a questions
Parquet dropped under the queries prefix and answered by ``rag_batch_query`` through Airflow,
one Ray job on the stack's head running the four steps on Ray Data with SmolLM2 on llama.cpp.
"""

from __future__ import annotations

import io
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from airflow.sdk.exceptions import AirflowFailException
from ray_operators.operators.ray_job import RayJobOperator

from include.control.ingest import runtime_env
from include.query import evaluation
from include.query.answers import MARKER
from include.query.pipeline import read_answers
from include.query.prompts import NO_PASSAGES
from include.query.steps import ANSWER_SCHEMA, PASSAGE
from tests.helpers import task_instance
from tests.integration.conftest import AIRFLOW, dag_test, isolated_env, planted_secrets, ray_jobs_of, run
from tools import airflow_db

pytestmark = pytest.mark.integration

CRASH_LLAMA = Path(__file__).resolve().parents[1] / "fakes" / "crash_llama"

QUERY_DAG = "rag_batch_query"
OFF_TOPIC = {"id": "off-topic", "prompt": "What is the capital of Mongolia?"}
# Measured on this set: hit@5 1.00, hit@1 0.93 (MiniLM over the sample PDFs). The floor leaves
# room for one question to drop out of the top five, not for retrieval to break.
HIT_AT_5_FLOOR = 0.9


def _parquet(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


@pytest.fixture(scope="module")
def env(stack):
    yield from isolated_env(stack, "query")


@pytest.fixture(scope="module")
def ingested(env, sample_pdfs):
    from include.control.settings import get_control_settings
    from include.storage import Storage, join_uri

    settings = get_control_settings()
    storage = Storage(settings)
    for name, path in sample_pdfs.items():
        storage.write_bytes(join_uri(settings.inbox_uri, name), path.read_bytes())
    run_id = dag_test(env)
    states = airflow_db.task_states(Path(env["AIRFLOW_HOME"]), "document_ingest", run_id)
    assert states[("summarize", -1)] == "success", states
    return SimpleNamespace(settings=settings, storage=storage)


@pytest.fixture(scope="module")
def answered(env, ingested):
    """The sample question set plus an off-topic question, in one file under the queries prefix."""
    from include.storage import join_uri

    rows = evaluation.load_question_set(evaluation.QUESTION_SETS / "samples.jsonl").to_pylist() + [OFF_TOPIC]
    questions_uri = join_uri(ingested.settings.queries_uri, "samples.parquet")
    ingested.storage.write_bytes(questions_uri, _parquet(pa.Table.from_pylist(rows)))
    run_id = dag_test(env, dag_id=QUERY_DAG)
    answers_uri = join_uri(ingested.settings.answers_uri, "samples.parquet") + "/"
    return SimpleNamespace(run_id=run_id, rows=rows, questions_uri=questions_uri, answers_uri=answers_uri,
                           settings=ingested.settings, storage=ingested.storage)


def _states(env, run_id):
    return airflow_db.task_states(Path(env["AIRFLOW_HOME"]), QUERY_DAG, run_id)


def _job_xcom(env, run_id):
    return airflow_db.xcoms(Path(env["AIRFLOW_HOME"]), QUERY_DAG, run_id)[("answer_questions", 0)]


def test_a_dropped_questions_file_is_answered_by_one_ray_job_that_carries_no_secret(env, answered):
    states = _states(env, answered.run_id)
    assert states[("answer_questions", 0)] == "success" and states[("summarize", -1)] == "success", states
    jobs = ray_jobs_of(env, answered.run_id, QUERY_DAG)
    assert len(jobs) == 1 and str(jobs[0].status) == "SUCCEEDED"
    assert jobs[0].entrypoint.startswith("python -m include.query run --questions")
    shown = repr(jobs[0])  # what the Job API (and so the dashboard) shows of it
    for secret in ("AWS_SECRET_ACCESS_KEY", "PIPELINE_LEDGER_URL", *planted_secrets(env)):
        assert secret not in shown


def test_the_answers_file_has_typed_columns_and_one_row_per_question(env, answered):
    table = read_answers(answered.storage, answered.answers_uri)
    assert sorted(table.column("id").to_pylist()) == sorted(row["id"] for row in answered.rows)
    for field in ANSWER_SCHEMA:
        assert table.schema.field(field.name).type == field.type, field.name
    assert table.schema.field("passages").type == pa.list_(PASSAGE)
    # Nested results are Arrow lists and structs, never pickled Python objects.
    assert not any(isinstance(field.type, pa.ExtensionType) for field in table.schema)
    marker = answered.storage.read_json(answered.answers_uri + MARKER)
    assert marker["questions_uri"] == answered.questions_uri and len(marker["parts"]) >= 1


def test_every_evaluation_question_retrieves_its_document_and_hit_at_5_clears_the_floor(env, answered):
    rows = {row["id"]: row for row in read_answers(answered.storage, answered.answers_uri).to_pylist()}
    for question in answered.rows[:-1]:
        row = rows[question["id"]]
        sources = {passage["source_uri"].rsplit("/", 1)[1] for passage in row["passages"]}
        assert question["expected_source"] in sources, question["id"]
        assert row["model"] and row["completion_tokens"] > 0 and row["answer"], question["id"]
    metrics = _job_xcom(env, answered.run_id)["metrics"]
    assert metrics["eval_questions"] == len(answered.rows) - 1
    assert metrics["hit@5"] >= HIT_AT_5_FLOOR
    assert metrics["questions"] == len(answered.rows) and metrics["completion_tokens"] > 0


def test_an_off_topic_question_is_not_sent_to_the_model(env, answered):
    rows = {row["id"]: row for row in read_answers(answered.storage, answered.answers_uri).to_pylist()}
    off = rows[OFF_TOPIC["id"]]
    assert off["passages"] == [] and off["answer"] == NO_PASSAGES
    assert off["model"] == "" and off["prompt_tokens"] == 0 and off["expected_rank"] is None


def test_an_answered_file_starts_no_job_and_a_changed_one_is_answered_again_in_place(env, answered):
    again = dag_test(env, dag_id=QUERY_DAG)
    assert _states(env, again)[("wait_for_questions", -1)] == "skipped"
    assert ray_jobs_of(env, again, QUERY_DAG) == []

    # Replaced by a shorter file: its answers replace the old ones, no row of them is left.
    answered.storage.write_bytes(answered.questions_uri, _parquet(pa.Table.from_pylist(answered.rows[:2])))
    changed = dag_test(env, dag_id=QUERY_DAG)
    assert _states(env, changed)[("answer_questions", 0)] == "success"
    table = read_answers(answered.storage, answered.answers_uri)
    assert sorted(table.column("id").to_pylist()) == sorted(row["id"] for row in answered.rows[:2])
    marker = answered.storage.read_json(answered.answers_uri + MARKER)
    assert marker["questions_version"] == answered.storage.stat(answered.questions_uri).version


def test_a_file_without_a_prompt_column_fails_at_once_naming_the_file(env, answered):
    from include.storage import join_uri

    bad_uri = join_uri(answered.settings.queries_uri, "bad.parquet")
    answered.storage.write_bytes(bad_uri, _parquet(pa.table({"question": ["Where is the pharmacy?"]})))
    output = run(env, AIRFLOW, "dags", "test", QUERY_DAG, "-c", '{"keys": ["bad.parquet"]}', check=False)
    run_id = airflow_db.latest_run_id(Path(env["AIRFLOW_HOME"]), QUERY_DAG)
    assert _states(env, run_id)[("answer_questions", 0)] == "failed"
    assert len(ray_jobs_of(env, run_id, QUERY_DAG)) == 1  # not retried: the same file would fail the same way
    assert f"{bad_uri} has no 'prompt' column" in output.stdout + output.stderr


def test_a_model_that_dies_by_signal_fails_its_job_once_naming_step_model_and_signal(env, answered):
    """The real query job with llama.cpp made to segfault in its workers: the actor's restarts are
    bounded, the job fails, and the operator fails the task at once (no Airflow retry) with the cause.
    A restart loop would instead run into the job timeout, a retryable error this test rejects."""
    from ray.job_submission import JobSubmissionClient

    from include.control.settings import get_control_settings
    from include.storage import join_uri

    settings = get_control_settings()
    question = join_uri(settings.queries_uri, "crash/dose.parquet")
    prompts = pa.table({"prompt": ["What is the maximum daily dose of metformin?"]})
    answered.storage.write_bytes(question, _parquet(prompts))
    job_env = {**runtime_env(), "py_modules": [str(CRASH_LLAMA)],
               "worker_process_setup_hook": "crash_llama.install"}
    operator = RayJobOperator(
        task_id="answer_questions", entrypoint=f"python -m include.query run --questions {question}",
        result_prefix=join_uri(settings.artifacts_uri, "crash-test-results"), runtime_env=job_env,
        job_timeout=600,
    )
    ti = task_instance("crash_test", answered.run_id, "answer_questions")
    with pytest.raises(AirflowFailException) as caught:
        operator.execute({"ti": ti})
    deaths = settings.worker_crash_retries + 1
    assert (f"GenerateAnswers (packaged:SmolLM2-135M-Instruct on llama.cpp): the worker process died with "
            f"SIGSEGV {deaths} time(s)") in str(caught.value)
    assert "a native crash repeats on a retry" in str(caught.value)
    job = JobSubmissionClient(env["RAY_ADDRESS"]).get_job_info(operator.submission_id)
    assert str(job.status) == "FAILED"

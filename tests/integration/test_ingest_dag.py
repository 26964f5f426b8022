"""The whole thing for real, as a user drives it: files dropped into the S3 inbox, the
``document_ingest`` DAG run by Airflow, one Ray job per stage, vectors in Chroma, the
ledger, quarantine and the run report; then runs that find nothing new to do.
"""

from __future__ import annotations

import json
import re
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from include.control.ingest import STAGE_ORDER as STAGES
from tests.bad_inputs import OVERSIZED_KEY, bad_inputs, tricky_valid_keys
from tests.helpers import task_instance
from tests.integration.conftest import (
    DAG_ID,
    TEST_SETTINGS,
    WORKER_NODE,
    chroma,
    dag_test,
    dag_test_logs,
    isolated_env,
    planted_secrets,
    ray_jobs_of,
    run,
)
from tests.pii_corpus import KEEP, generate_corpus
from tools import airflow_db
from tools.sample_pdfs import SAMPLES

pytestmark = pytest.mark.integration

GOOD = ("metformin_trial_protocol.pdf", "site_operations_handbook.pdf")
# A good PDF under a key with every character that once broke a URI round trip.
TRICKY = "Übersicht #2 ?100%.PDF"
SIZE_LIMIT = int(TEST_SETTINGS["PIPELINE_MAX_DOCUMENT_BYTES"])


@pytest.fixture(scope="module")
def env(stack):
    # Warm workers outlast the tests between the first run and the drop that checks they are warm.
    yield from isolated_env(stack, "ingest", PIPELINE_WARM_IDLE_SECONDS="1200")


@pytest.fixture(scope="module")
def inbox(env, sample_pdfs, tmp_path_factory):
    """Good PDFs under plain and tricky keys, the labelled PII corpus, and one bad file of every kind;
    truth files of every PII value in them, for the leak audit."""
    from include.control.settings import get_control_settings
    from include.storage import Storage, join_uri

    settings = get_control_settings()
    storage = Storage(settings)
    good = {name: sample_pdfs[name].read_bytes() for name in GOOD}
    good[TRICKY] = sample_pdfs["adverse_event_guide.pdf"].read_bytes()
    for key in tricky_valid_keys():
        good[key] = sample_pdfs["adverse_event_guide.pdf"].read_bytes()
    truth_folder = tmp_path_factory.mktemp("truth")
    truth = [{"kind": kind, "value": value} for sample in SAMPLES for kind, value in sample.pii.items()]
    for report in generate_corpus(seed=7):
        good[f"site-reports/{report.filename}"] = report.pdf
        truth += [{"kind": label.kind, "value": label.value} for label in report.truth if label.kind != KEEP]
    (truth_folder / "truth.json").write_text(json.dumps(truth))
    bad = {item.key: item for item in bad_inputs(good[GOOD[0]], size_limit=SIZE_LIMIT)}
    for key, data in {**good, **{k: item.data for k, item in bad.items()}}.items():
        storage.write_bytes(join_uri(settings.inbox_uri, key), data)
    return SimpleNamespace(settings=settings, storage=storage, good=good, bad=bad, truth=truth_folder / "truth.json")


@pytest.fixture(scope="module")
def first_run(env, inbox):
    return dag_test(env)


def _home(env) -> Path:
    return Path(env["AIRFLOW_HOME"])


def _stage_xcoms(env, run_id):
    values = airflow_db.xcoms(_home(env), DAG_ID, run_id)
    return {key: value for key, value in values.items() if key[0].startswith("ingest_batch.")}


def _summary(env, run_id):
    return airflow_db.xcoms(_home(env), DAG_ID, run_id, key="summary")[("summarize", -1)]


def test_good_documents_finish_all_stages_in_one_batch_and_every_bad_one_fails_alone_for_its_cause(
        env, inbox, first_run):
    states = airflow_db.task_states(_home(env), DAG_ID, first_run)
    # One batch: every stage task is map index 0, and a bad document fails none of them.
    assert {(task, index): state for (task, index), state in states.items() if task.startswith("ingest_batch.")} == {
        (f"ingest_batch.{stage}", 0): "success" for stage in STAGES
    }
    summary = _summary(env, first_run)
    assert summary["batches"] == 1 and summary["documents"] == len(inbox.good) + len(inbox.bad)
    assert summary["succeeded"] == len(inbox.good)
    assert summary["counts"]["new"] == len(inbox.good) + len(inbox.bad)
    assert summary["counts"]["quarantined"] == len(inbox.bad)
    failed = {item["source_uri"].split("/inbox/", 1)[1]: item for item in summary["failed"]}
    assert set(failed) == set(inbox.bad)
    for key, bad in inbox.bad.items():
        assert failed[key]["stage"] == ("plan" if key == OVERSIZED_KEY else "extract"), key
        assert re.search(f"{re.escape(key)}: {bad.cause}", failed[key]["error"]), failed[key]["error"]
    assert states[("summarize", -1)] == "failed"  # the run says some documents failed


def test_bad_files_move_to_quarantine_with_a_note_and_the_ledger_says_why(env, inbox, first_run):
    from include.control.ledger import Ledger, Status
    from include.control.quarantine import NOTE_SUFFIX
    from include.storage import join_uri

    settings, storage = inbox.settings, inbox.storage
    entries = Ledger.open(settings).entries(under=settings.inbox_uri)
    for key in inbox.bad:
        uri = join_uri(settings.inbox_uri, key)
        entry = entries[uri]
        assert entry.status == Status.QUARANTINED and not storage.exists(uri), key
        assert entry.quarantine_uri == join_uri(settings.quarantine_uri, key)
        note = storage.read_json(entry.quarantine_uri + NOTE_SUFFIX)
        assert note["run_id"] == first_run and note["error"] == entry.error and note["source_uri"] == uri
        assert storage.read_bytes(entry.quarantine_uri) == inbox.bad[key].data
    ingested = [e for e in entries.values() if e.status == Status.INGESTED]
    assert len(ingested) == len(inbox.good) and all(e.vectors and e.indexed_doc_id == e.doc_id for e in ingested)


def test_the_run_report_names_every_document_it_touched(env, inbox, first_run):
    summary = _summary(env, first_run)
    report = inbox.storage.read_json(summary["report_uri"])
    assert {row["source_uri"].split("/inbox/", 1)[1] for row in report["touched"]} == {*inbox.good, *inbox.bad}
    markdown = inbox.storage.read_text(summary["report_uri"].replace("report.json", "report.md"))
    assert "| extract |" in markdown and "Jahresbericht Müller 2026.pdf" in markdown


def test_xcom_holds_the_batch_result_uri_counts_and_metrics_only(env, inbox, first_run):
    values = _stage_xcoms(env, first_run)
    assert {task for task, _ in values} == {f"ingest_batch.{stage}" for stage in STAGES}
    for (task, _), value in values.items():
        assert set(value) == {"stage", "batch_id", "result_uri", "documents", "succeeded", "failed", "postponed",
                              "metrics"}
        assert value["result_uri"].startswith("s3://") and value["result_uri"].endswith("-try1.json")
        assert all(isinstance(n, (int, float)) for n in value["metrics"].values())
    extract = values[("ingest_batch.extract", 0)]
    sent = len(inbox.good) + len(inbox.bad) - 1  # the oversized file never reaches a stage
    assert (extract["documents"], extract["succeeded"], extract["failed"]) == (sent, len(inbox.good), sent - len(inbox.good))
    assert values[("ingest_batch.load", 0)]["documents"] == len(inbox.good)  # the bad ones were left out


def test_every_chunk_has_one_vector_no_pii_is_stored_and_keys_round_trip(env, inbox, first_run):
    from include.storage import join_uri

    values = _stage_xcoms(env, first_run)
    chunks = values[("ingest_batch.enrich", 0)]["metrics"]["chunks"]
    collection = chroma(inbox.settings)
    stored = collection.get(include=["documents", "metadatas"])
    assert len(stored["ids"]) == collection.count() == chunks
    everything = " ".join(stored["documents"]) + " ".join(str(m) for m in stored["metadatas"])
    secrets = [value for sample in SAMPLES for value in sample.pii.values()]
    assert secrets and not [s for s in secrets if s in everything]
    assert "[REDACTED:EMAIL]" in everything and "[REDACTED:SSN]" in everything
    sources = {m["source_uri"] for m in stored["metadatas"]}
    assert sources == {join_uri(inbox.settings.inbox_uri, key) for key in inbox.good}


def test_the_leak_audit_finds_no_pii_downstream_of_enrichment_nor_in_the_vector_store(env, inbox, first_run):
    audit = run(env, sys.executable, "-m", "include.audit", "--truth", str(inbox.truth), check=False)
    assert audit.returncode == 0, audit.stdout[-4000:]
    assert "No PII found" in audit.stdout and "labelled values" in audit.stdout


def test_each_stage_ran_as_one_ray_job_per_batch_with_a_deterministic_id(env, first_run):
    ours = ray_jobs_of(env, first_run)
    stage_jobs = [j for j in ours if j.entrypoint.startswith("python -m include.stages ")]
    assert len(stage_jobs) == len(STAGES) * 1  # five stages x one batch, whatever the number of documents
    assert sorted(j.entrypoint.split()[3] for j in stage_jobs) == sorted(STAGES)
    # One more job removed the vectors of the quarantined files, where the store's credentials are.
    assert [j.entrypoint.split()[2] for j in ours if j not in stage_jobs] == ["include.prune"]
    assert all(j.submission_id.endswith("-try1") and str(j.status) == "SUCCEEDED" for j in ours)


def test_no_secret_reaches_the_job_api_rendered_fields_xcom_task_logs_or_the_report(env, inbox, first_run):
    """The S3 secret, the API keys only the Ray nodes hold and the ledger's password only the Airflow
    side holds are nowhere a person looks: the Job API's view of each job, the rendered template
    fields, XCom, the task logs (the jobs' driver logs are streamed into them) and the run report."""
    secrets = planted_secrets(env)
    home = _home(env)
    rendered = airflow_db.rendered_fields(home, DAG_ID, first_run)
    assert any("runtime_env" in fields for fields in rendered.values())  # the stage tasks' were recorded
    summary = _summary(env, first_run)
    report = inbox.storage.read_text(summary["report_uri"]) + inbox.storage.read_text(
        summary["report_uri"].replace("report.json", "report.md"))
    logs = dag_test_logs(env)
    assert logs
    seen = {"job api": repr(ray_jobs_of(env, first_run)), "rendered fields": repr(rendered),
            "xcom": repr(airflow_db.all_xcoms(home, DAG_ID, first_run)), "report": report,
            **{str(path): path.read_text(errors="replace") for path in logs}}
    for where, text in seen.items():
        assert not [secret for secret in secrets if secret in text], where


def test_the_stage_actors_and_drivers_ran_on_the_worker_node_and_none_on_the_head(env, first_run):
    """Two nodes, as a cluster has: every worker of every stage, and every job's driver (which
    assembles the documents), was placed on the worker node, by the resource it asks for."""
    from ray.util.state import list_actors, list_nodes

    address = env["RAY_ADDRESS"]
    nodes = {node.node_name: node for node in list_nodes(address=address) if node.state == "ALIVE"}
    assert len(nodes) == 2 and WORKER_NODE in nodes
    jobs = ray_jobs_of(env, first_run)
    assert jobs and {job.driver_node_id for job in jobs} == {nodes[WORKER_NODE].node_id}
    job_ids = {job.job_id for job in jobs if job.job_id}
    # Every stage's workers are warm (include.stages.warm): named actors the run's jobs created.
    pools = [actor for actor in list_actors(address=address, detail=True, limit=10_000)
             if actor.job_id in job_ids and actor.class_name == "WarmPartWorker"]
    assert {actor.name.split("-")[0] for actor in pools} == set(STAGES)
    # An actor the pool asked for while the node's CPUs were taken, then no longer needed, was
    # never placed (no node): every placed one is on the worker node.
    assert {actor.node_id for actor in pools if actor.node_id} == {nodes[WORKER_NODE].node_id}


def test_an_inbox_of_ingested_documents_starts_no_ray_job(env, inbox, first_run):
    """A scheduled run's sensor waits for work, not for objects: it gives up and the run is skipped."""
    before = chroma(inbox.settings).count()
    run_id = dag_test(env)
    assert run_id != first_run
    states = airflow_db.task_states(_home(env), DAG_ID, run_id)
    assert states[("wait_for_documents", -1)] == "skipped"
    assert {state for (task, _), state in states.items()} == {"skipped"}
    assert ray_jobs_of(env, run_id) == [] and chroma(inbox.settings).count() == before


def test_a_run_naming_unchanged_documents_short_circuits_without_a_ray_job(env, inbox, first_run):
    run_id = dag_test(env, '{"keys": ["%s", "%s"]}' % GOOD)
    summary = _summary(env, run_id)
    assert summary["batches"] == 0 and summary["counts"]["unchanged"] == 2 and summary["failed"] == []
    assert ray_jobs_of(env, run_id) == []


def test_rerunning_a_finished_run_gives_the_same_vectors_and_changes_nothing_in_the_ledger(env, inbox, first_run):
    """What clearing the run in the UI does: the same plan, every stage again (try 2), the summary again."""
    from include.control import ingest
    from include.control.ledger import Ledger
    from include.control.operators import PipelineStageOperator

    ledger = Ledger.open(inbox.settings)
    rows_before = {uri: e.model_dump(exclude={"last_seen"}) for uri, e in ledger.entries().items()}
    stored_before = sorted(chroma(inbox.settings).get(include=[])["ids"])

    [batch] = ingest.plan_run(DAG_ID, first_run)  # the run's own plan, read back
    results: dict[str, list] = {}
    upstream = batch
    for stage in STAGES:
        # Cleared after try 1: Airflow makes max_tries 1 + retries, and try 2 starts a new run of the task.
        ti = task_instance(DAG_ID, first_run, f"ingest_batch.{stage}", try_number=2, max_tries=1)
        operator = PipelineStageOperator(task_id=stage, stage=stage, upstream=upstream, poll_interval=0.5)
        upstream = operator.execute({"ti": ti, "params": {}})
        results[stage] = [upstream]
    ingest.finish_run(DAG_ID, first_run, results)

    assert sorted(chroma(inbox.settings).get(include=[])["ids"]) == stored_before
    assert {uri: e.model_dump(exclude={"last_seen"}) for uri, e in ledger.entries().items()} == rows_before


def test_a_small_drop_after_a_run_finds_every_stage_warm_and_loads_no_model(env, inbox, first_run, sample_pdfs):
    """The stages' workers stay loaded between jobs (include.stages.warm). Counted by the workers: each
    reports its model load to the first job that leases it, into the batch result's metrics."""
    from include.storage import join_uri

    assert all(value["metrics"]["model_loads"] >= 1 for value in _stage_xcoms(env, first_run).values())
    key = "later/one-more.pdf"
    inbox.storage.write_bytes(join_uri(inbox.settings.inbox_uri, key), sample_pdfs["adverse_event_guide.pdf"].read_bytes())
    run_id = dag_test(env, json.dumps({"keys": [key]}))
    values = _stage_xcoms(env, run_id)
    assert {task: (value["succeeded"], value["metrics"].get("model_loads")) for (task, _), value in values.items()} == {
        f"ingest_batch.{stage}": (1, 0) for stage in STAGES}


def test_a_retry_reattaches_to_the_running_batch_job_of_the_previous_try(env, inbox):
    """The worker of try 1 lost its task while its Ray job ran on: try 2 waits for that job, submits none."""
    from ray.job_submission import JobSubmissionClient

    from include.control.ingest import plan_run
    from include.control.operators import PipelineStageOperator

    run_id = "manual__retry-test"
    [batch] = plan_run(DAG_ID, run_id, list(GOOD), reprocess=True)

    def context(try_number: int) -> dict:
        # A retry (not a clear): max_tries is the task's retries, and both tries are one run of the task.
        ti = task_instance(DAG_ID, run_id, "ingest_batch.extract", try_number=try_number, max_tries=1)
        return {"ti": ti, "params": {"reprocess": True}}  # real work, so the job runs a while

    first = PipelineStageOperator(task_id="extract", stage="extract", upstream=batch, poll_interval=0.5, retries=1)
    worker = threading.Thread(target=first.execute, args=(context(1),))
    worker.start()
    client = JobSubmissionClient(env["RAY_ADDRESS"])
    deadline = time.monotonic() + 60
    while not any(j.metadata.get("run_id") == run_id for j in client.list_jobs()):
        assert time.monotonic() < deadline, "try 1 never submitted its job"
        time.sleep(0.2)
    second = PipelineStageOperator(task_id="extract", stage="extract", upstream=batch, poll_interval=0.5, retries=1)
    xcom = second.execute(context(2))
    worker.join()
    jobs = [j for j in client.list_jobs() if j.metadata.get("run_id") == run_id]
    assert [j.submission_id for j in jobs] == [first.submission_id] == [second.submission_id]
    assert xcom["succeeded"] == len(GOOD) and xcom["result_uri"].endswith("-try1.json")

"""Every DAG imports cleanly and carries the basics; stage code stays free of Airflow."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(ROOT / "dags"))


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}
    assert {"document_ingest", "document_ingest_interval", "rag_batch_query", "document_erase"} <= set(dagbag.dag_ids)


def test_every_dag_has_tags_and_every_task_retries(dagbag):
    for dag_id, dag in dagbag.dags.items():
        assert dag.tags, f"{dag_id} has no tags"
        for task in dag.tasks:
            assert task.retries >= 1, f"{dag_id}.{task.task_id} has no retries"


def test_ingest_dag_maps_the_five_stages_over_batches_in_order(dagbag):
    dag = dagbag.dags["document_ingest"]
    stages = [f"ingest_batch.{s}" for s in ("extract", "chunk", "enrich", "embed", "load")]
    for upstream, downstream in zip(stages, stages[1:]):
        assert downstream in dag.get_task(upstream).downstream_task_ids
    assert set(dag.get_task("summarize").upstream_task_ids) == {"plan_batches", stages[-1]}
    # The vectors of deleted and quarantined documents go in a Ray job, whatever became of the run.
    assert dag.get_task("prune_vectors").upstream_task_ids == {"summarize"}
    assert dag.get_task("prune_vectors").trigger_rule == "all_done"
    assert "plan_batches" in dag.get_task("wait_for_documents").downstream_task_ids
    # A run has at most this many Ray jobs of one stage on the cluster at once.
    assert all(dag.get_task(s).max_active_tis_per_dagrun == 2 for s in stages)
    assert set(dag.params.get_param("recompute").schema["items"]["enum"]) == {"all", *(s.split(".")[1] for s in stages)}


def test_ingest_runs_start_on_inbox_events_and_on_the_sweep_and_skip_when_an_event_finds_no_work(dagbag):
    from include.control.inbox_events import InboxWorkTrigger

    dag = dagbag.dags["document_ingest"]
    assert type(dag.timetable).__name__ == "AssetOrTimeSchedule"
    assert type(dag.timetable.timetable).__name__ == "CronTriggerTimetable"  # the sweep, hourly
    (inbox,) = dag.timetable.asset_condition.objects
    (watcher,) = inbox.watchers
    assert isinstance(watcher.trigger, InboxWorkTrigger) and inbox.uri.rstrip("/") == "s3://documents/inbox"
    sensor = dag.get_task("wait_for_documents")
    assert sensor.skip_idle_run_types == {"asset_triggered", "scheduled"}  # a person's run waits


def test_the_interval_dag_has_data_intervals_and_runs_the_same_tasks(dagbag):
    dag, events = dagbag.dags["document_ingest_interval"], dagbag.dags["document_ingest"]
    assert type(dag.timetable).__name__ == "CronDataIntervalTimetable"  # periodic: it can be backfilled
    assert dag.is_paused_upon_creation is False  # Airflow starts no backfill run of a paused DAG
    assert set(dag.task_ids) == set(events.task_ids) - {"wait_for_documents"}
    assert "keys" not in dag.params and "allow_mass_delete" not in dag.params  # an interval deletes nothing


def test_erase_dag_claims_and_unlinks_then_removes_vectors_in_a_ray_job_then_forgets(dagbag):
    from include.control.operators import PruneVectorsOperator

    dag = dagbag.dags["document_erase"]
    assert type(dag.timetable).__name__ == "NullTimetable"  # by hand only
    assert dag.get_task("remove_vectors_and_artifacts").upstream_task_ids == {"plan_erasure"}
    assert dag.get_task("forget").upstream_task_ids == {"remove_vectors_and_artifacts"}
    assert isinstance(dag.get_task("remove_vectors_and_artifacts"), PruneVectorsOperator)
    assert dag.params.get_param("documents").schema["minItems"] == 1


def test_ingest_dag_runs_once_dropped_files_arrive_and_waits_for_work_not_objects(dagbag):
    dag = dagbag.dags["document_ingest"]
    assert dag.is_paused_upon_creation is False  # a person who drops a file needs no unpause step
    from include.control import ingest
    from include.control.sensors import S3WorkSensor

    sensor = dag.get_task("wait_for_documents")
    # Asked on every listing, an empty one too: an emptied inbox is work.
    assert isinstance(sensor, S3WorkSensor) and sensor.has_work is ingest.inbox_has_work
    assert sensor.soft_fail and sensor.mode == "reschedule"
    assert dag.params.get_param("reprocess").value is False


def test_query_dag_waits_for_unanswered_files_then_maps_one_ray_job_per_file(dagbag):
    dag = dagbag.dags["rag_batch_query"]
    assert dag.is_paused_upon_creation is False
    from include.control import query_planning
    from include.control.sensors import S3WorkSensor

    sensor = dag.get_task("wait_for_questions")
    assert isinstance(sensor, S3WorkSensor) and sensor.has_work is query_planning.has_unanswered
    assert sensor.soft_fail and sensor.mode == "reschedule"
    assert dag.get_task("plan_questions").upstream_task_ids == {"wait_for_questions"}
    answer = dag.get_task("answer_questions")
    assert answer.upstream_task_ids == {"plan_questions"} and answer.max_active_tis_per_dagrun == 1
    assert dag.get_task("summarize").upstream_task_ids == {"answer_questions"}


def test_every_ray_task_defers_while_its_job_runs(dagbag):
    from ray_operators.operators.ray_job import RayJobOperator

    tasks = [task for dag in dagbag.dags.values() for task in dag.tasks]
    plain = [task for task in tasks if isinstance(task, RayJobOperator)]
    mapped = [task for task in tasks if not isinstance(task, RayJobOperator)
              and issubclass(getattr(task, "operator_class", object), RayJobOperator)]
    # Each ingest DAG's stages and prune, the erasure's; the questions, mapped.
    assert (len(plain), len(mapped)) == (2 * (5 + 1) + 1, 1)
    assert all(task.deferrable for task in plain) and all(task.partial_kwargs["deferrable"] for task in mapped)


@pytest.mark.parametrize("package", ["include/stages", "include/backends", "include/control/ledger", "include/query"])
def test_stage_and_ledger_code_never_imports_airflow_at_module_level(package):
    paths = list((ROOT / package).rglob("*.py"))
    assert paths, f"{package} holds no module: the test would check nothing"
    for path in paths:
        tree = ast.parse(path.read_text())
        # Module level only: the ledger asks Airflow for its connection inside a function, if Airflow is there.
        for node in [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]:
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            assert not any(n.split(".")[0] in ("airflow", "ray_operators") for n in names), path


@pytest.mark.parametrize("package", ["include/stages", "include/backends", "include/query"])
def test_stage_code_never_imports_airflow_anywhere(package):
    paths = list((ROOT / package).rglob("*.py"))
    assert paths, f"{package} holds no module: the test would check nothing"
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            assert not any(n.split(".")[0] in ("airflow", "ray_operators") for n in names), path


# The data plane: what only Ray workers install. Parsing a DAG must need none of it.
DATA_PLANE = ("docling", "docling_core", "docling_parse", "pypdfium2", "torch", "transformers",
              "sentence_transformers", "presidio_analyzer", "spacy", "chromadb", "pinecone", "llama_cpp",
              "ray.data", "pyarrow")


def test_parsing_the_dags_imports_nothing_of_the_data_plane():
    """In a fresh interpreter, as Airflow's DAG processor would: an Airflow image without the ML stack
    parses both DAGs."""
    import subprocess
    import sys

    code = (
        "import importlib.util, json, sys\n"
        "sys.path[:0] = ['.', 'plugins']\n"
        "for name in ('document_ingest', 'rag_batch_query'):\n"
        "    spec = importlib.util.spec_from_file_location(name, f'dags/{name}.py')\n"
        "    spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
        f"print(json.dumps([m for m in {DATA_PLANE!r} if m in sys.modules]))\n"
    )
    child = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert child.returncode == 0, child.stderr[-3000:]
    assert child.stdout.strip().splitlines()[-1] == "[]"

"""The operator's decisions on retries, clears, kills and failures, against a fake Job API (error
paths only; the real Job API is in tests/integration/test_ray_provider.py)."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest
from airflow.sdk.exceptions import AirflowException, AirflowFailException, TaskDeferred
from ray_operators.hooks.ray_job import JobApiConfig
from ray_operators.operators.ray_job import RayJobOperator, submission_id_for
from ray_operators.triggers.ray_job import RayJobTrigger

RETRIES = 2


class FakeJobApi:
    """The hook's calls, by submission id: each job has a status until a test changes it."""

    def __init__(self, jobs: dict[str, str] | None = None) -> None:
        self.jobs = dict(jobs or {})
        self.submitted: list[str] = []
        self.runtime_envs: list[dict] = []
        self.stopped: list[str] = []
        self.address = "http://fake:8265"
        self.config = JobApiConfig(address=self.address, token="fake-token", namespace="airflow")

    def find(self, submission_id):
        status = self.jobs.get(submission_id)
        return None if status is None else {"status": status, "message": f"job {status.lower()}"}

    def submit(self, *, submission_id, runtime_env=None, **_):
        if submission_id in self.jobs:
            raise RuntimeError("submission id already used")
        self.submitted.append(submission_id)
        self.runtime_envs.append(runtime_env)
        self.jobs[submission_id] = "PENDING"
        return submission_id

    def stop(self, submission_id):
        if self.jobs.get(submission_id) not in ("PENDING", "RUNNING"):
            return False
        self.stopped.append(submission_id)
        self.jobs[submission_id] = "STOPPED"
        return True


class FakeTi:
    def __init__(self, try_number: int, max_tries: int = RETRIES) -> None:
        self.dag_id, self.run_id, self.task_id, self.map_index = "dag", "manual__1", "stage", 3
        self.try_number, self.max_tries = try_number, max_tries
        self.xcoms: dict[str, object] = {}

    def xcom_push(self, key, value):
        self.xcoms[key] = value


def _id(try_number: int) -> str:
    return submission_id_for("dag", "manual__1", "stage", 3, try_number)


def _write_result(tmp_path, try_number: int, result: dict) -> None:
    """What the job of that try writes: its own file, naming itself."""
    (tmp_path / "results").mkdir(exist_ok=True)
    document = {"submission_id": _id(try_number), **result}
    (tmp_path / "results" / f"{_id(try_number)}.json").write_text(json.dumps(document))


def _operator(tmp_path, api: FakeJobApi, result: dict | None = None, try_number: int = 1) -> RayJobOperator:
    if result is not None:
        _write_result(tmp_path, try_number, result)
    prefix = (tmp_path / "results").as_uri()
    op = RayJobOperator(task_id="stage", entrypoint="python -m x", result_prefix=prefix, deferrable=True,
                        retries=RETRIES, job_timeout=600)
    op.hook = api  # cached_property: the instance attribute wins
    return op


def _run(op: RayJobOperator, ti: FakeTi, api: FakeJobApi, status: str = "SUCCEEDED", **event) -> object:
    """Execute until the deferral, let the job end as ``status``, then resume as Airflow does: on a
    new instance of the operator."""
    with pytest.raises(TaskDeferred) as deferred:
        op.execute({"ti": ti})
    trigger = deferred.value.trigger
    assert isinstance(trigger, RayJobTrigger) and deferred.value.method_name == "execute_complete"
    api.jobs[trigger.submission_id] = status
    resumed = RayJobOperator(task_id=op.task_id, entrypoint=op.entrypoint, result_prefix=op.result_prefix,
                             deferrable=True, retries=RETRIES)
    resumed.hook = api
    payload = {"submission_id": trigger.submission_id, "status": status, "message": f"job {status.lower()}",
               "log_tail": [], **event}
    return resumed.execute_complete({"ti": ti}, payload)


def test_submission_ids_are_deterministic_url_safe_differ_per_try_and_per_namespace():
    first = submission_id_for("dag", "manual__2026-01-01T00:00:00+00:00", "group.task", 0, 1)
    assert first == submission_id_for("dag", "manual__2026-01-01T00:00:00+00:00", "group.task", 0, 1)
    assert first.endswith("-try1") and first != submission_id_for("dag", "manual__2026-01-01T00:00:00+00:00", "group.task", 0, 2)
    assert all(c.isalnum() or c in "_.-" for c in first)
    assert first != submission_id_for("dag", "manual__2026-01-01T00:00:00+00:00", "group.task", 1, 1)
    other = submission_id_for("dag", "manual__2026-01-01T00:00:00+00:00", "group.task", 0, 1, namespace="staging")
    assert other.startswith("staging-") and other.split("-")[-2] != first.split("-")[-2]


def test_first_try_submits_defers_and_returns_outputs_and_metrics_only(tmp_path):
    api = FakeJobApi()
    result = {"outputs": {"chunks": "s3://b/c.jsonl"}, "metrics": {"chunks": 4}, "document": {"text": "no"}}
    ti = FakeTi(1)
    op = _operator(tmp_path, api, result)
    with pytest.raises(TaskDeferred) as deferred:
        op.execute({"ti": ti})
    trigger = deferred.value.trigger
    assert api.submitted == [_id(1)] and trigger.submission_id == _id(1)
    assert 590 < trigger.deadline - time.time() <= 600  # the job's timeout travels with the trigger
    assert ti.xcoms["_link_RayJobLink"] == f"http://fake:8265/#/jobs/{_id(1)}"
    # The job learns its own id and where its result goes; the operator's runtime env is untouched.
    env_vars = api.runtime_envs[0]["env_vars"]
    assert env_vars["JOB_SUBMISSION_ID"] == _id(1)
    assert env_vars["JOB_RESULT_URI"] == (tmp_path / "results" / f"{_id(1)}.json").as_uri()
    resumed = RayJobOperator(task_id="stage", entrypoint="python -m x", result_prefix=op.result_prefix,
                             deferrable=True)
    resumed.hook = api
    xcom = resumed.execute_complete({"ti": ti}, {"submission_id": _id(1), "status": "SUCCEEDED", "message": ""})
    assert xcom == {"outputs": {"chunks": "s3://b/c.jsonl"}, "metrics": {"chunks": 4}}


def test_the_trigger_round_trips_through_its_serialized_form():
    trigger = RayJobTrigger(submission_id="airflow-x-try1", ray_conn_id="ray_prod", poll_interval=2.5,
                            stream_logs=False, deadline=1_900_000_000.0, tail_lines=5)
    classpath, kwargs = trigger.serialize()
    module, name = classpath.rsplit(".", 1)
    rebuilt = getattr(__import__(module, fromlist=[name]), name)(**kwargs)
    assert rebuilt.serialize() == (classpath, kwargs)
    assert json.loads(json.dumps(kwargs)) == kwargs  # plain JSON: what the triggerer's table holds


def test_a_result_left_by_another_job_never_decides_the_task(tmp_path):
    api = FakeJobApi()
    _write_result(tmp_path, 1, {"outputs": {}, "metrics": {}})
    stale = json.loads((tmp_path / "results" / f"{_id(1)}.json").read_text())
    stale["submission_id"] = "airflow-some-other-job-try1"
    (tmp_path / "results" / f"{_id(1)}.json").write_text(json.dumps(stale))
    with pytest.raises(AirflowException, match="names job 'airflow-some-other-job-try1'"):
        _run(_operator(tmp_path, api), FakeTi(1), api)


def test_a_lost_submission_answer_attaches_to_the_job_it_created(tmp_path):
    api = FakeJobApi()

    def submit_then_lose_the_answer(*, submission_id, **_):
        api.jobs[submission_id] = "RUNNING"
        raise ConnectionError("read timed out")

    api.submit = submit_then_lose_the_answer
    xcom = _run(_operator(tmp_path, api, {"outputs": {"a": "s3://b/a"}, "metrics": {}}), FakeTi(1), api)
    assert xcom["outputs"] == {"a": "s3://b/a"}


def test_a_failed_submission_with_no_job_behind_it_fails_the_try(tmp_path):
    api = FakeJobApi()

    def refuse(**_):
        raise ConnectionError("connection refused")

    api.submit = refuse
    with pytest.raises(ConnectionError):
        _operator(tmp_path, api).execute({"ti": FakeTi(1)})


def test_retry_reattaches_to_a_job_still_running_instead_of_submitting(tmp_path):
    api = FakeJobApi({_id(1): "RUNNING"})
    xcom = _run(_operator(tmp_path, api, {"outputs": {"a": "s3://b/a"}, "metrics": {}}), FakeTi(2), api)
    assert api.submitted == [] and xcom["outputs"] == {"a": "s3://b/a"}  # try 1's job, try 1's result


def test_a_try_that_died_before_submitting_does_not_hide_an_older_running_job(tmp_path):
    api = FakeJobApi({_id(1): "RUNNING"})  # try 2 left no job behind
    _run(_operator(tmp_path, api, {"outputs": {}, "metrics": {}}), FakeTi(3), api)
    assert api.submitted == []


def test_retry_reuses_a_job_that_already_succeeded(tmp_path):
    api = FakeJobApi({_id(1): "SUCCEEDED"})
    xcom = _run(_operator(tmp_path, api, {"outputs": {"a": "s3://b/a"}, "metrics": {"n": 1}}), FakeTi(2), api)
    assert api.submitted == [] and xcom["outputs"] == {"a": "s3://b/a"}


def test_retry_after_a_failed_job_submits_under_the_new_try_id(tmp_path):
    api = FakeJobApi({_id(1): "FAILED"})
    _run(_operator(tmp_path, api, {"outputs": {}, "metrics": {}}, try_number=2), FakeTi(2), api)
    assert api.submitted == [_id(2)]


def test_a_cleared_task_runs_its_job_again_even_after_a_success(tmp_path):
    """Clearing try 1 makes max_tries 1 + retries: try 2 starts a new run of the task."""
    api = FakeJobApi({_id(1): "SUCCEEDED"})
    _run(_operator(tmp_path, api, {"outputs": {}, "metrics": {}}, try_number=2), FakeTi(2, max_tries=1 + RETRIES),
         api)
    assert api.submitted == [_id(2)]


def test_a_cleared_task_stops_its_earlier_runs_job_before_it_submits(tmp_path):
    """Never two jobs on the same work: the cleared run's job, still running, is stopped first."""
    api = FakeJobApi({_id(1): "RUNNING"})
    with pytest.raises(TaskDeferred):
        _operator(tmp_path, api).execute({"ti": FakeTi(2, max_tries=1 + RETRIES)})
    assert api.stopped == [_id(1)] and api.submitted == [_id(2)]


def test_a_bad_input_fails_at_once_and_says_why_with_the_logs_last_lines(tmp_path):
    api = FakeJobApi()
    result = {"status": "failed", "error": "s3://b/x.pdf: the PDF is encrypted", "retryable": False}
    with pytest.raises(AirflowFailException, match=r"x\.pdf: the PDF is encrypted") as caught:
        _run(_operator(tmp_path, api, result), FakeTi(1), api, "FAILED", log_tail=["reading x.pdf", "encrypted"])
    assert str(caught.value).endswith("Last lines of the job's log:\nreading x.pdf\nencrypted")


def test_other_failures_raise_a_retryable_error_with_the_job_message(tmp_path):
    api = FakeJobApi()
    with pytest.raises(AirflowException, match="job failed") as caught:
        _run(_operator(tmp_path, api), FakeTi(1), api, "FAILED")
    assert not isinstance(caught.value, AirflowFailException)


def test_a_job_past_its_deadline_fails_the_task_naming_it(tmp_path):
    api = FakeJobApi()
    with pytest.raises(AirflowException, match="ran past its deadline"):
        _run(_operator(tmp_path, api), FakeTi(1), api, "TIMED_OUT",
             message=f"Ray job {_id(1)} ran past its deadline and was stopped")


def test_on_kill_stops_the_running_job(tmp_path):
    api = FakeJobApi()
    op = _operator(tmp_path, api)
    with pytest.raises(TaskDeferred):
        op.execute({"ti": FakeTi(1)})
    api.jobs[_id(1)] = "RUNNING"
    op.on_kill()
    assert api.stopped == [_id(1)]


def test_a_kill_during_submission_stops_the_job_once_it_exists(tmp_path):
    api = FakeJobApi()
    arrived, release = threading.Event(), threading.Event()

    def slow_submit(*, submission_id, **_):
        arrived.set()
        release.wait(10)  # the request is on the wire; the cluster has not created the job yet
        api.jobs[submission_id] = "RUNNING"

    api.submit = slow_submit
    op = _operator(tmp_path, api)
    worker = threading.Thread(target=lambda: pytest.raises(TaskDeferred, op.execute, {"ti": FakeTi(1)}))
    worker.start()
    assert arrived.wait(10)
    killer = threading.Thread(target=op.on_kill)
    killer.start()
    time.sleep(1.0)  # on_kill finds no job yet, and waits for it
    release.set()
    killer.join(20)
    worker.join(20)
    assert api.stopped == [_id(1)] and api.jobs[_id(1)] == "STOPPED"


def test_a_job_that_succeeds_without_writing_its_result_fails_the_task(tmp_path):
    api = FakeJobApi()
    with pytest.raises(AirflowException, match="succeeded but wrote no result"):
        _run(_operator(tmp_path, api), FakeTi(1), api)


def test_the_stage_operator_templates_only_what_it_does_not_compute():
    from include.control.operators import PipelineStageOperator, PruneVectorsOperator

    for operator in (PipelineStageOperator, PruneVectorsOperator):
        assert not {"entrypoint", "result_prefix"} & set(operator.template_fields)


class EndingJobApi:
    """A job that runs until ``end`` is called. As Ray's: its status turns final at once, while its
    log's tail lags behind the log (the last line comes ``tail_lag`` seconds later), or breaks off."""

    def __init__(self, *, tail_lag: float = 3.0, tail_breaks: bool = False) -> None:
        self.ended = asyncio.Event()
        self.status_polls = 0
        self.log_requests = 0
        self._tail_lag, self._tail_breaks = tail_lag, tail_breaks

    async def __aenter__(self):
        return self

    async def __aexit__(self, *_exc):
        return None

    async def find(self, submission_id):
        self.status_polls += 1
        return {"status": "SUCCEEDED" if self.ended.is_set() else "RUNNING", "message": ""}

    async def logs(self, submission_id):
        self.log_requests += 1
        return "working\nRESULT: done\n" if self.ended.is_set() else "working\n"

    async def tail_logs(self, submission_id):
        yield "working"
        await self.ended.wait()
        if self._tail_breaks:
            raise ConnectionError("the tail broke off")
        await asyncio.sleep(self._tail_lag)
        yield "RESULT: done"

    def end(self) -> None:
        self.ended.set()


def _time_to_event(api: EndingJobApi, monkeypatch, poll_interval: float) -> tuple[dict, float]:
    trigger = RayJobTrigger(submission_id="airflow-x-try1", poll_interval=poll_interval)

    async def fake_api():
        return api

    monkeypatch.setattr(trigger, "_api", fake_api)

    async def scenario():
        running = asyncio.create_task(_first(trigger))
        await asyncio.sleep(0.5)
        ended = time.monotonic()
        api.end()
        event = await asyncio.wait_for(running, timeout=poll_interval * 3)
        return event, time.monotonic() - ended

    return asyncio.run(scenario())


async def _first(trigger: RayJobTrigger) -> dict:
    async for event in trigger.run():
        return event.payload
    raise AssertionError("no event")


def test_a_short_jobs_end_is_seen_at_once_and_the_log_the_tail_lags_behind_on_is_read_whole(monkeypatch, capfd):
    api = EndingJobApi(tail_lag=30.0)
    event, seconds = _time_to_event(api, monkeypatch, poll_interval=30.0)
    assert event["status"] == "SUCCEEDED" and event["log_tail"] == ["working", "RESULT: done"]
    assert seconds < 3.0  # polls start half a second apart: neither the interval nor the tail decides
    assert api.log_requests == 1
    logged = capfd.readouterr()
    assert (logged.out + logged.err).count("[ray] working") == 1  # each line once in the task's log
    assert (logged.out + logged.err).count("[ray] RESULT: done") == 1


def test_a_log_stream_that_broke_off_is_completed_from_the_whole_log(monkeypatch):
    api = EndingJobApi(tail_breaks=True)
    event, _ = _time_to_event(api, monkeypatch, poll_interval=2.0)
    assert event["status"] == "SUCCEEDED" and event["log_tail"] == ["working", "RESULT: done"]


def test_status_polls_wait_a_tenth_of_the_jobs_age_from_half_a_second_up_to_the_poll_interval():
    trigger = RayJobTrigger(submission_id="airflow-x-try1", poll_interval=5.0)
    assert [trigger.pause(age) for age in (0.0, 3.0, 20.0, 45.0, 3600.0)] == [0.5, 0.5, 2.0, 4.5, 5.0]
    assert RayJobTrigger(submission_id="airflow-x-try1", poll_interval=0.2).pause(0.0) == 0.2


def _briefly_waiting_operator(tmp_path, api: FakeJobApi, monkeypatch, job: EndingJobApi, wait: float):
    op = _operator(tmp_path, api, {"outputs": {"chunks": "s3://b/c.jsonl"}, "metrics": {"chunks": 4}})
    op.wait_before_defer = wait

    async def fake_api(self):
        return job

    monkeypatch.setattr(RayJobTrigger, "_api", fake_api)
    return op


def test_a_job_that_ends_within_the_wait_before_defer_ends_its_task_without_deferring(
        tmp_path, monkeypatch, capfd):
    api, job = FakeJobApi(), EndingJobApi()
    job.end()  # a short job: over within a moment
    op = _briefly_waiting_operator(tmp_path, api, monkeypatch, job, wait=10.0)
    xcom = op.execute({"ti": FakeTi(1)})  # no TaskDeferred
    assert xcom == {"outputs": {"chunks": "s3://b/c.jsonl"}, "metrics": {"chunks": 4}}
    logged = capfd.readouterr()
    assert (logged.out + logged.err).count("[ray] RESULT: done") == 1


def test_a_job_still_running_after_the_wait_defers_and_its_log_goes_on_where_the_worker_left_it(
        tmp_path, monkeypatch, capfd):
    api, job = FakeJobApi(), EndingJobApi()
    op = _briefly_waiting_operator(tmp_path, api, monkeypatch, job, wait=1.0)
    with pytest.raises(TaskDeferred) as deferred:
        op.execute({"ti": FakeTi(1)})
    trigger = deferred.value.trigger
    assert trigger.skip_lines == 1 and trigger.serialize()[1]["skip_lines"] == 1  # "working" is in the log
    job.end()
    event = asyncio.run(_first(trigger))  # the triggerer's turn
    assert event["status"] == "SUCCEEDED" and event["log_tail"] == ["working", "RESULT: done"]
    logged = capfd.readouterr()
    task_log = logged.out + logged.err
    assert task_log.count("[ray] working") == 1 and task_log.count("[ray] RESULT: done") == 1

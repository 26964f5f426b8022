"""The operator's decisions on retries and failures, against a fake Job API (error paths only)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from airflow.sdk.exceptions import AirflowException, AirflowFailException
from ray_operators.operators.ray_job import RayJobOperator, submission_id_for


class FakeJobApi:
    """Jobs by submission id; each status list advances one step per poll."""

    def __init__(self, jobs: dict[str, list[str]] | None = None) -> None:
        self.jobs = {k: list(v) for k, v in (jobs or {}).items()}
        self.submitted: list[str] = []
        self.runtime_envs: list[dict] = []
        self.stopped: list[str] = []
        self.address = "http://fake:8265"

    def find(self, submission_id):
        states = self.jobs.get(submission_id)
        if states is None:
            return None
        status = states.pop(0) if len(states) > 1 else states[0]
        return SimpleNamespace(status=status, message=f"job {status.lower()}")

    def submit(self, *, submission_id, runtime_env=None, **_):
        if submission_id in self.jobs:
            raise RuntimeError("submission id already used")
        self.submitted.append(submission_id)
        self.runtime_envs.append(runtime_env)
        self.jobs[submission_id] = ["PENDING", "RUNNING", "SUCCEEDED"]
        return submission_id

    def logs(self, submission_id):
        return "line one\nline two\n"

    def stop(self, submission_id):
        self.stopped.append(submission_id)
        return True


def _ti(try_number: int) -> SimpleNamespace:
    return SimpleNamespace(dag_id="dag", run_id="manual__1", task_id="stage", map_index=3, try_number=try_number)


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
    op = RayJobOperator(task_id="stage", entrypoint="python -m x", result_prefix=prefix, poll_interval=0)
    op.hook = api  # cached_property: the instance attribute wins
    return op


def test_submission_ids_are_deterministic_url_safe_and_differ_per_try():
    first = submission_id_for("dag", "manual__2026-01-01T00:00:00+00:00", "group.task", 0, 1)
    assert first == submission_id_for("dag", "manual__2026-01-01T00:00:00+00:00", "group.task", 0, 1)
    assert first.endswith("-try1") and first != submission_id_for("dag", "manual__2026-01-01T00:00:00+00:00", "group.task", 0, 2)
    assert all(c.isalnum() or c in "_.-" for c in first)
    assert first != submission_id_for("dag", "manual__2026-01-01T00:00:00+00:00", "group.task", 1, 1)


def test_first_try_submits_and_returns_outputs_and_metrics_only(tmp_path):
    api = FakeJobApi()
    result = {"outputs": {"chunks": "s3://b/c.jsonl"}, "metrics": {"chunks": 4}, "document": {"text": "no"}}
    xcom = _operator(tmp_path, api, result).execute({"ti": _ti(1)})
    assert api.submitted == [_id(1)]
    assert xcom == {"outputs": {"chunks": "s3://b/c.jsonl"}, "metrics": {"chunks": 4}}
    # The job learns its own id and where its result goes; the operator's runtime env is untouched.
    env_vars = api.runtime_envs[0]["env_vars"]
    assert env_vars["JOB_SUBMISSION_ID"] == _id(1)
    assert env_vars["JOB_RESULT_URI"] == (tmp_path / "results" / f"{_id(1)}.json").as_uri()


def test_a_result_left_by_another_job_never_decides_the_task(tmp_path):
    api = FakeJobApi()
    _write_result(tmp_path, 1, {"outputs": {}, "metrics": {}})
    stale = json.loads((tmp_path / "results" / f"{_id(1)}.json").read_text())
    stale["submission_id"] = "airflow-some-other-job-try1"
    (tmp_path / "results" / f"{_id(1)}.json").write_text(json.dumps(stale))
    with pytest.raises(AirflowException, match="names job 'airflow-some-other-job-try1'"):
        _operator(tmp_path, api).execute({"ti": _ti(1)})


def test_a_lost_submission_answer_attaches_to_the_job_it_created(tmp_path):
    api = FakeJobApi()

    def submit_then_lose_the_answer(*, submission_id, **_):
        api.jobs[submission_id] = ["RUNNING", "SUCCEEDED"]
        raise ConnectionError("read timed out")

    api.submit = submit_then_lose_the_answer
    xcom = _operator(tmp_path, api, {"outputs": {"a": "s3://b/a"}, "metrics": {}}).execute({"ti": _ti(1)})
    assert xcom["outputs"] == {"a": "s3://b/a"}


def test_a_failed_submission_with_no_job_behind_it_fails_the_try(tmp_path):
    api = FakeJobApi()

    def refuse(**_):
        raise ConnectionError("connection refused")

    api.submit = refuse
    with pytest.raises(ConnectionError):
        _operator(tmp_path, api).execute({"ti": _ti(1)})


def test_retry_reattaches_to_a_job_still_running_instead_of_submitting(tmp_path):
    api = FakeJobApi({_id(1): ["RUNNING", "RUNNING", "SUCCEEDED"]})
    xcom = _operator(tmp_path, api, {"outputs": {"a": "s3://b/a"}, "metrics": {}}).execute({"ti": _ti(2)})
    assert api.submitted == [] and xcom["outputs"] == {"a": "s3://b/a"}  # try 1's job, try 1's result


def test_a_try_that_died_before_submitting_does_not_hide_an_older_running_job(tmp_path):
    api = FakeJobApi({_id(1): ["RUNNING", "SUCCEEDED"]})  # try 2 left no job behind
    _operator(tmp_path, api, {"outputs": {}, "metrics": {}}).execute({"ti": _ti(3)})
    assert api.submitted == []


def test_retry_reuses_a_job_that_already_succeeded(tmp_path):
    api = FakeJobApi({_id(1): ["SUCCEEDED"]})
    xcom = _operator(tmp_path, api, {"outputs": {"a": "s3://b/a"}, "metrics": {"n": 1}}).execute({"ti": _ti(2)})
    assert api.submitted == [] and xcom["outputs"] == {"a": "s3://b/a"}


def test_retry_after_a_failed_job_submits_under_the_new_try_id(tmp_path):
    api = FakeJobApi({_id(1): ["FAILED"]})
    _operator(tmp_path, api, {"outputs": {}, "metrics": {}}, try_number=2).execute({"ti": _ti(2)})
    assert api.submitted == [_id(2)]


def test_a_bad_input_fails_at_once_and_says_why(tmp_path):
    api = FakeJobApi()
    api.submit = lambda *, submission_id, **_: api.jobs.setdefault(submission_id, ["RUNNING", "FAILED"])
    result = {"status": "failed", "error": "s3://b/x.pdf: the PDF is encrypted", "retryable": False}
    with pytest.raises(AirflowFailException, match=r"x\.pdf: the PDF is encrypted"):
        _operator(tmp_path, api, result).execute({"ti": _ti(1)})


def test_other_failures_raise_a_retryable_error_with_the_job_message(tmp_path):
    api = FakeJobApi()
    api.submit = lambda *, submission_id, **_: api.jobs.setdefault(submission_id, ["FAILED"])
    with pytest.raises(AirflowException, match="job failed") as caught:
        _operator(tmp_path, api).execute({"ti": _ti(1)})
    assert not isinstance(caught.value, AirflowFailException)


def test_on_kill_stops_the_running_job(tmp_path):
    api = FakeJobApi()
    op = _operator(tmp_path, api, {"outputs": {}, "metrics": {}})
    op.execute({"ti": _ti(1)})
    op.on_kill()
    assert api.stopped == [_id(1)]


def test_a_job_that_succeeds_without_writing_its_result_fails_the_task(tmp_path):
    with pytest.raises(AirflowException, match="succeeded but wrote no result"):
        _operator(tmp_path, FakeJobApi()).execute({"ti": _ti(1)})


def test_log_lines_are_streamed_whole_even_when_a_poll_catches_one_half_written(tmp_path):
    op = _operator(tmp_path, FakeJobApi())
    logged = []
    op.log.info = lambda fmt, line: logged.append(line)
    growing = iter(["first line\nsecond li", "first line\nsecond line\nthird", "first line\nsecond line\nthird"])
    op.hook.logs = lambda _id: next(growing)
    printed = op._stream_logs("job", 0)
    printed = op._stream_logs("job", printed)
    op._stream_logs("job", printed, final=True)
    assert logged == ["first line", "second line", "third"]

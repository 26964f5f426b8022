"""Answers folders: one per questions file, none inside another, and published by one write of the marker,
so a reader sees the old answers or the new ones, never a mix, and never another file's."""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from include.query.answers import MARKER, answers_uri_for, job_folder
from include.query.pipeline import publish, read_answers
from include.settings import PipelineSettings
from include.storage import Storage, join_uri


@pytest.fixture
def places(tmp_path) -> PipelineSettings:
    return PipelineSettings(work_dir=tmp_path / "work", queries_uri=(tmp_path / "queries").as_uri() + "/",
                            answers_uri=(tmp_path / "answers").as_uri() + "/")


def _job(storage: Storage, answers_uri: str, job_id: str, answers: list[str]) -> list[str]:
    """What a job's dataset writes: its parts in its own folder (one answer per part here)."""
    parts = []
    for number, answer in enumerate(answers):
        sink = io.BytesIO()
        pq.write_table(pa.table({"answer": [answer]}), sink)
        parts.append(join_uri(job_folder(answers_uri, job_id), f"{number:06d}_000000.parquet"))
        storage.write_bytes(parts[-1], sink.getvalue())
    return parts


def _publish(storage, answers_uri, job_id, parts):
    publish(storage, job_folder(answers_uri, job_id), answers_uri, parts, {"job": job_id})


def test_a_file_and_a_folder_of_the_same_name_have_answers_folders_apart(places):
    storage = Storage(places)
    top, nested = (join_uri(places.queries_uri, key) for key in ("a.parquet", "a.parquet/b.parquet"))
    top_answers, nested_answers = answers_uri_for(places, top), answers_uri_for(places, nested)
    assert top_answers == join_uri(places.answers_uri, "a.parquet") + "/"
    assert nested_answers == join_uri(places.answers_uri, "a.parquet%2Fb.parquet") + "/"  # its "/" escaped
    assert not nested_answers.startswith(top_answers) and not top_answers.startswith(nested_answers)
    assert answers_uri_for(places, join_uri(places.queries_uri, "a/b.parquet")) != answers_uri_for(
        places, join_uri(places.queries_uri, "a%2Fb.parquet"))

    _publish(storage, nested_answers, "job-1", _job(storage, nested_answers, "job-1", ["nested"]))
    _publish(storage, top_answers, "job-1", _job(storage, top_answers, "job-1", ["old"]))
    _publish(storage, top_answers, "job-2", _job(storage, top_answers, "job-2", ["new", "newer"]))
    assert read_answers(storage, top_answers).column("answer").to_pylist() == ["new", "newer"]
    assert read_answers(storage, nested_answers).column("answer").to_pylist() == ["nested"]
    assert storage.exists(join_uri(nested_answers, MARKER))


def test_a_reader_sees_the_published_answers_until_the_next_job_is_published(places):
    storage = Storage(places)
    answers = answers_uri_for(places, join_uri(places.queries_uri, "q.parquet"))
    _publish(storage, answers, "job-1", _job(storage, answers, "job-1", ["first"]))
    unfinished = _job(storage, answers, "job-2", ["half"])  # a job still writing, or one that died
    assert read_answers(storage, answers).column("answer").to_pylist() == ["first"]
    # Under '_jobs/', which Parquet dataset readers skip: a half job is found through no path but its own.
    assert unfinished[0].startswith(join_uri(answers, "_jobs") + "/")
    _publish(storage, answers, "job-3", _job(storage, answers, "job-3", ["third"]))
    assert read_answers(storage, answers).column("answer").to_pylist() == ["third"]
    assert not any(storage.exists(part) for part in unfinished)  # the dead job's parts are cleared


def test_questions_outside_the_queries_prefix_need_an_answers_folder_named(places):
    with pytest.raises(ValueError, match="not under the queries prefix"):
        answers_uri_for(places, "s3://elsewhere/q.parquet")

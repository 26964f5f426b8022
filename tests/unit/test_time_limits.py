"""The seconds-per-document bound: a part that runs past it is stopped wherever it runs (a Ray actor's
thread, a plain thread), a document whose parts together run past it fails, and in both cases that
document alone goes to quarantine while the rest of its batch goes on."""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import replace

import pytest

from include.contract import DocumentRef
from include.stages import STAGES
from include.stages.base import BadFileError, Progress, StageInput
from include.stages.execution import run_inline, run_on_ray
from include.time_limits import call_with_time_limit


def _spin(seconds: float, catch_everything: bool = False) -> str:
    """Pure Python work, like a converter's loop; optionally one that catches every Exception."""
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        try:
            sum(range(1000))
        except Exception:  # noqa: BLE001 - what careless library code does
            if not catch_everything:
                raise
    return "finished"


class Overrun(Exception):
    pass


@pytest.mark.parametrize("catch_everything", [False, True])
def test_a_call_past_its_limit_is_stopped_even_through_code_that_catches_every_exception(catch_everything):
    started = time.monotonic()
    with pytest.raises(Overrun):
        call_with_time_limit(0.3, Overrun, _spin, 5.0, catch_everything)
    assert time.monotonic() - started < 2.0


def test_a_call_within_its_limit_returns_and_nothing_goes_off_later_in_another_thread():
    results: list[object] = []

    def run() -> None:
        results.append(call_with_time_limit(0.5, Overrun, _spin, 0.05))
        try:
            call_with_time_limit(0.2, Overrun, _spin, 3.0)
        except Overrun:
            results.append("stopped")
        results.append(_spin(0.8))  # the limits above are over: this runs to its end

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert results == ["finished", "stopped", "finished"]
    assert call_with_time_limit(None, Overrun, _spin, 0.01) == "finished"


class SlowOnSomeDocuments:
    """A stage worker that spends its document id's "slow-<seconds>" on each part."""

    def __init__(self, settings) -> None:
        pass

    def __call__(self, doc, part):
        name = doc.document.doc_id
        if name.startswith("slow-"):
            _spin(float(name.removeprefix("slow-")))
        return {"done": name, "part": part["n"]}


def _batch(settings, executor, doc_ids: list[str], parts: int = 1):
    stage = replace(STAGES["embed"], split=lambda doc, settings: [{"units": 1, "n": n} for n in range(parts)],
                    worker=SlowOnSomeDocuments)
    limited = settings.model_copy(update={"max_seconds_per_document": 1.0})
    items = [StageInput(DocumentRef(doc_id=doc_id, source_uri=f"s3://documents/inbox/{doc_id}.pdf",
                                    content_sha256="0" * 64, size_bytes=1)) for doc_id in doc_ids]
    with Progress("embed", "chunks", len(items), 60) as progress:
        return {done.item.document.doc_id: done for done in executor(stage, limited, items, progress)}


def _assert_only_slow_failed(found, slow: str, good: list[str], parts: int) -> None:
    error = found[slow].error
    # From a Ray actor the error comes back as its message and whether the file is bad: that is what is recorded.
    assert isinstance(error, BadFileError) and error.bad_file
    assert str(error).startswith(f"s3://documents/inbox/{slow}.pdf: embed worked on this document for more than "
                                 "1 s (PIPELINE_MAX_SECONDS_PER_DOCUMENT)")
    for doc_id in good:
        assert found[doc_id].error is None
        assert found[doc_id].payloads == [{"done": doc_id, "part": n} for n in range(parts)]


def test_in_one_process_a_document_past_the_limit_fails_alone_counting_all_its_parts(settings):
    found = _batch(settings, run_inline, ["good-1", "slow-30", "good-2"])
    _assert_only_slow_failed(found, "slow-30", ["good-1", "good-2"], parts=1)
    assert found["slow-30"].seconds < 5
    # Three parts of 0.4 s: none is over the limit alone, together they are.
    found = _batch(settings, run_inline, ["good-1", "slow-0.4"], parts=3)
    _assert_only_slow_failed(found, "slow-0.4", ["good-1"], parts=3)


def test_on_ray_a_part_past_the_limit_is_stopped_in_its_actor_and_parts_are_added_up(settings, ray_local):
    import ray

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # this module is not shipped to workers
    found = _batch(settings, run_on_ray, ["good-1", "slow-30", "good-2"])
    _assert_only_slow_failed(found, "slow-30", ["good-1", "good-2"], parts=1)
    found = _batch(settings, run_on_ray, ["slow-0.4", "good-1"], parts=3)
    _assert_only_slow_failed(found, "slow-0.4", ["good-1"], parts=3)

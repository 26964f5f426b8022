"""A worker that dies by a signal inside a Ray Data pool: bounded restarts, then the document it dies on
fails alone, or, when workers die whatever they run, a job error that names the step, what it runs and
the signal, and says whether a retry can help. The packaged llama.cpp model
answers on this machine's CPU (an Intel Xeon with AMX, where its AMX kernels used to segfault)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from include.contract import DocumentRef
from include.stages import STAGES
from include.stages.base import Progress, StageInput
from include.stages.execution import run_on_ray
from include.worker_crashes import WorkerCrashed, _stderr_tail, signal_in

ROOT = Path(__file__).resolve().parents[2]

# What Ray's failure handler and Python's faulthandler write to a worker's stderr, as read from a
# worker killed by SIGSEGV on Ray 2.60.
RAY_SEGV_LOG = """:job_id:01000000
:actor_name:MapWorker(MapBatches(GenerateAnswers))
*** SIGSEGV received at time=1796160415 on cpu 0 ***
PC: @     0x7f0b6daa3f16  (unknown)  ggml_backend_amx_mul_mat()
Fatal Python error: Segmentation fault
"""


def test_the_signal_is_read_from_either_handler_of_a_worker_log():
    assert signal_in(RAY_SEGV_LOG) == "SIGSEGV"
    assert signal_in("Fatal Python error: Aborted\n\nStack (most recent call first):") == "SIGABRT"
    assert signal_in("INFO worker.py: task done\n") is None


def test_a_dead_workers_log_its_node_cannot_find_yet_is_read_again(monkeypatch):
    """The log agent once answered "Could not find a log file" for a worker just dead (a full CI run)."""
    import ray.util.state

    answers = [FileNotFoundError("Could not find a log file."), RAY_SEGV_LOG.splitlines(keepends=True)]

    def get_log(**options):
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        yield from answer

    monkeypatch.setattr(ray.util.state, "get_log", get_log)
    worker = type("DeadWorker", (), {"pid": 4242, "node_id": "n1"})()
    assert signal_in(_stderr_tail("127.0.0.1:6379", worker)) == "SIGSEGV" and answers == []


def test_a_native_crash_is_not_retryable_and_a_kill_without_a_signal_is():
    crash = WorkerCrashed("GenerateAnswers", "packaged:SmolLM2-135M-Instruct on llama.cpp", 3, "SIGSEGV", 2)
    assert not crash.retryable
    assert str(crash).startswith("GenerateAnswers (packaged:SmolLM2-135M-Instruct on llama.cpp): the worker "
                                 "process died with SIGSEGV 3 time(s), more than the 2 restart(s) allowed")
    assert WorkerCrashed("embed", "", 3, None, 2).retryable  # OOM-killed, node lost: may run next time


class DiesOnBadDocuments:
    """A stage worker whose 'model' dies by SIGSEGV on the documents whose id starts with "bad", as
    llama.cpp's AMX kernel or a parser's native code would, and works on the others."""

    def __init__(self, settings) -> None:
        pass

    def __call__(self, doc, part):
        if doc.document.doc_id.startswith("bad"):
            os.kill(os.getpid(), signal.SIGSEGV)
        return {"done": doc.document.doc_id}


def _crashing_batch(settings, doc_ids: list[str], restarts: int = 0):
    import ray

    # The worker class travels by value: this test module is not shipped to the workers.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    stage = replace(STAGES["embed"], split=lambda doc, settings: [{"units": 1}], worker=DiesOnBadDocuments)
    crashy = settings.model_copy(update={"worker_crash_retries": restarts})
    items = [StageInput(DocumentRef(doc_id=doc_id, source_uri=f"s3://documents/inbox/{doc_id}.pdf",
                                    content_sha256="0" * 64, size_bytes=1)) for doc_id in doc_ids]
    with Progress("embed", "chunks", len(items), 60) as progress:
        return {done.item.document.doc_id: done for done in run_on_ray(stage, crashy, items, progress)}


def test_a_document_its_worker_dies_on_fails_alone_naming_step_model_and_signal_and_the_batch_goes_on(
        settings, ray_local):
    found = _crashing_batch(settings, ["good-1", "bad", "good-2"])
    assert set(found) == {"good-1", "bad", "good-2"}
    assert [found[d].payloads for d in ("good-1", "good-2")] == [[{"done": "good-1"}], [{"done": "good-2"}]]
    error = str(found["bad"].error)
    assert found["bad"].payloads == [] and not found["bad"].error.bad_file
    assert error.startswith("s3://documents/inbox/bad.pdf: embed on this document alone: embed "
                            "(packaged:all-MiniLM-L6-v2 on ONNX Runtime): the worker process died with "
                            "SIGSEGV")


def test_workers_that_die_whatever_they_run_fail_the_job_after_their_restarts(settings, ray_local):
    with pytest.raises(WorkerCrashed) as caught:
        _crashing_batch(settings, ["bad-1", "bad-2"], restarts=1)
    crash = caught.value
    assert crash.step == "embed" and crash.model == "packaged:all-MiniLM-L6-v2 on ONNX Runtime"
    assert crash.signal == "SIGSEGV" and crash.deaths >= 2 and not crash.retryable


def test_the_packaged_llama_cpp_model_answers_on_this_cpu():
    """In a child process: were llama.cpp to crash (as its AMX kernels did here), this test fails
    with the signal instead of taking the whole test run down with it."""
    code = (
        "from include.backends.generators import SmolLM2Generator\n"
        "from include.settings import PipelineSettings\n"
        "generator = SmolLM2Generator(PipelineSettings())\n"
        "reply = generator.generate([{'role': 'user', 'content': 'Context: the maximum daily dose of "
        "metformin is 2000 mg.\\nQuestion: What is the maximum daily dose of metformin?'}])\n"
        "print(reply.text)\n"
        "generator.close()\n"
    )
    child = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                           timeout=300)
    flags = sorted({flag for flag in Path("/proc/cpuinfo").read_text().split() if flag.startswith("amx")})
    died = signal.Signals(-child.returncode).name if child.returncode < 0 else f"exit {child.returncode}"
    assert child.returncode == 0, f"llama.cpp died ({died}) on a CPU with {flags}:\n{child.stderr[-3000:]}"
    assert "2000 mg" in child.stdout

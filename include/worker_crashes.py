"""Worker processes that die, in every Ray Data pipeline of the ingest and query jobs.

Ray Data restarts a map actor that dies, and retries a task whose worker died, without
limit by default: a model that crashes in native code (a signal, an abort in llama.cpp,
pdfium or torch) would be restarted and crash again until the Airflow task times out.
Every pool and task here gets a budget instead (``worker_crash_retries``), and when it
is spent the job fails with ``WorkerCrashed``: which step, which model, how often it
died and by which signal, and whether a retry can help.

The signal is read from the dead workers' own logs (Ray's failure handler writes
``*** SIGSEGV received ...`` and Python's faulthandler ``Fatal Python error: ...`` to the
worker's stderr), through Ray's state API: it reaches workers on every node.
"""

from __future__ import annotations

import logging
import re
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from include.settings import PipelineSettings

log = logging.getLogger(__name__)

# Crashes in native code: the same input and the same binary crash the same way again.
_NATIVE_CRASHES = {"SIGSEGV", "SIGABRT", "SIGILL", "SIGBUS", "SIGFPE"}
# Python's faulthandler names the signal in words.
_FAULTHANDLER_NAMES = {"Segmentation fault": "SIGSEGV", "Aborted": "SIGABRT", "Illegal instruction": "SIGILL",
                       "Bus error": "SIGBUS", "Floating-point exception": "SIGFPE"}
_SIGNAL_LINE = re.compile(r"\*\*\* (SIG[A-Z]+) received|Fatal Python error: ([A-Za-z -]+)")
# Ray names a map actor after its callable class: class_name: MapWorker(MapBatches(GenerateAnswers)),
# and any other actor by its class: class_name: WarmPartWorker.
_WORKER_CLASSES = (re.compile(r"MapBatches\((\w+)\)"), re.compile(r"class_name: (\w+)"))
_LOG_TAIL_LINES = 400


class WorkerCrashed(RuntimeError):
    """A step's worker process died more often than its budget allowed.

    ``retryable`` is False for a native crash (a signal such as SIGSEGV or SIGABRT): it
    repeats on a retry. A worker killed without a recorded signal (the kernel's OOM
    killer, a lost node, a preempted Spot instance) may well run on a retry.
    """

    def __init__(self, step: str, model: str, deaths: int, signal: str | None, budget: int) -> None:
        self.step, self.model, self.deaths, self.signal = step, model, deaths, signal
        self.retryable = signal not in _NATIVE_CRASHES
        runs = f" ({model})" if model else ""
        how = f"died with {signal}" if signal else "died with no signal recorded (out of memory? node lost?)"
        advice = ("a native crash repeats on a retry: see the worker log above" if not self.retryable
                  else "a retry may help")
        super().__init__(f"{step}{runs}: the worker process {how} {deaths} time(s), more than the "
                         f"{budget} restart(s) allowed (worker_crash_retries); {advice}")


# Both go to Ray Data as extra remote arguments. Ray 2.60 warns that those go away in 2.64 but has
# no named parameter for these two yet: check on upgrading Ray.
def actor_crash_limits(settings: PipelineSettings) -> dict[str, int]:
    """``map_batches`` arguments of an actor pool: restarts of a dead actor, and retries of its tasks."""
    return {"max_restarts": settings.worker_crash_retries, "max_task_retries": settings.worker_crash_retries}


def task_crash_limits(settings: PipelineSettings) -> dict[str, int]:
    """Ray remote arguments of a stateless task (a split, a read, a write)."""
    return {"max_retries": settings.worker_crash_retries}


@contextmanager
def crashes_named(settings: PipelineSettings, steps: Mapping[str, tuple[str, str]],
                  default_step: str) -> Iterator[None]:
    """Turn a worker death that ends a Ray Data pipeline into ``WorkerCrashed``.

    ``steps`` maps each pool's callable class (by name) to the step it is and what it
    runs; a death Ray cannot charge to a class (a task's worker) goes to ``default_step``.
    """
    import ray.exceptions

    started_ms = time.time() * 1000
    try:
        yield
    except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError) as exc:
        name = next((match.group(1) for pattern in _WORKER_CLASSES if (match := pattern.search(str(exc)))), None)
        step, model = steps.get(name, (name, "")) if name else (default_step, "")
        signals = _signals_since(started_ms)
        deaths = sum(signals.values()) or settings.worker_crash_retries + 1
        signal = signals.most_common(1)[0][0] if signals else None
        raise WorkerCrashed(step, model, deaths, signal, settings.worker_crash_retries) from exc


def _signals_since(started_ms: float) -> Counter[str]:
    """The signals that killed workers (of any node) since ``started_ms``, from their stderr logs.
    Empty when the state API cannot tell (a cluster without a dashboard): the error then says so."""
    import ray
    from ray.util.state import list_workers

    found: Counter[str] = Counter()
    try:
        # The cluster this process is connected to, not whichever one the state API would guess.
        cluster = ray.get_runtime_context().gcs_address
        dead = list_workers(address=cluster, detail=True, limit=1000, raise_on_missing_output=False,
                            filters=[("is_alive", "=", "False"), ("exit_type", "=", "SYSTEM_ERROR")])
    except Exception as exc:  # diagnosis must never hide the failure it explains
        log.warning("could not list the dead workers to name the signal: %s", exc)
        return found
    for worker in dead:
        if (worker.end_time_ms or 0) < started_ms:
            continue
        try:
            if signal := signal_in(_stderr_tail(cluster, worker)):
                found[signal] += 1
        except Exception as exc:  # its node may be gone with it
            log.warning("could not read the log of dead worker %s (pid %s): %s", worker.worker_id, worker.pid, exc)
    return found


def _stderr_tail(cluster: str, worker) -> str:
    """The end of a dead worker's stderr. Its node's log agent once failed to find the file of a
    worker just dead, in a full CI run (not reproduced alone): the read is tried again for a
    moment before the signal goes unnamed."""
    from ray.util.state import get_log
    from tenacity import Retrying, stop_after_attempt, wait_fixed

    read = Retrying(stop=stop_after_attempt(4), wait=wait_fixed(0.5), reraise=True)
    # Joined inside the retried call: get_log's generator only asks for the file when iterated.
    return read(lambda: "".join(get_log(address=cluster, pid=worker.pid, node_id=worker.node_id, suffix="err",
                                        tail=_LOG_TAIL_LINES)))


def signal_in(text: str) -> str | None:
    """The fatal signal a worker's stderr records, if any: ``SIGSEGV``, ``SIGABRT``..."""
    for match in _SIGNAL_LINE.finditer(text):
        if match.group(1):
            return match.group(1)
        if name := _FAULTHANDLER_NAMES.get(match.group(2).strip()):
            return name
    return None


"""Benchmark: the Ray operator before and after it deferred, on the same job in the same invocation.

One job prints ``--lines`` lines over about ``--seconds`` seconds (as a long stage does), and runs
twice on the local stack's Ray head (its own ports and work dir):

- **before**: the operator of ``--before`` (a git ref; by default the last commit before the
  provider), exported from git and run in a child process: it polls on the worker, downloading the
  whole log on every poll;
- **after**: this checkout's operator, deferrable: ``execute`` submits and defers, the trigger waits
  (in a triggerer, not on a worker) and streams the log through the Job API's websocket tail, and
  ``execute_complete`` reads the outcome.

It prints, for each: the seconds a worker slot is held (before: the whole job; after: execute and
execute_complete), the log bytes fetched from the Job API and in how many requests, and the ratios
after / before.

    .venv/bin/python -m benchmarks.bench_ray_provider [--lines 100000] [--seconds 30] [--before REF]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shlex
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
BENCH_PORTS = {"STACK_S3_PORT": "22433", "STACK_RAY_DASHBOARD_PORT": "38365", "STACK_RAY_GCS_PORT": "36479",
               "STACK_CHROMA_PORT": "38100", "STACK_RAY_WORKER_NODES": "0"}
BEFORE_REF = "ec770fd"

# What the old operator does, in a child process that imports it from the exported tree.
_BEFORE_SCRIPT = """
import json, sys, time
from types import SimpleNamespace
from ray_operators.operators.ray_job import RayJobOperator
entrypoint, run_id = sys.argv[1], sys.argv[2]
op = RayJobOperator(task_id="bench", entrypoint=entrypoint)
fetched = {"bytes": 0, "requests": 0}
logs = op.hook.logs
def counted(submission_id):
    text = logs(submission_id)
    fetched["bytes"] += len(text.encode()); fetched["requests"] += 1
    return text
op.hook.logs = counted
op.log.info = lambda *args, **kwargs: None  # the lines themselves are not what is measured
ti = SimpleNamespace(dag_id="bench", run_id=run_id, task_id="before", map_index=0, try_number=1)
clock = time.perf_counter()
op.execute({"ti": ti})
print(json.dumps({"slot_seconds": time.perf_counter() - clock, "log_bytes": fetched["bytes"],
                  "log_requests": fetched["requests"]}))
"""


def _entrypoint(lines: int, seconds: float) -> str:
    batches = 100
    code = (f"import time\nfor b in range({batches}):\n"
            f"    for i in range({lines // batches}): print('progress line', b * {lines // batches} + i, 'x' * 40)\n"
            f"    print(end='', flush=True); time.sleep({seconds / batches})")
    return f"python -c {shlex.quote(code)}"


def before(env: dict[str, str], ref: str, entrypoint: str) -> dict:
    with tempfile.TemporaryDirectory() as tree:
        archive = subprocess.run(["git", "archive", ref, "plugins/ray_operators"], cwd=ROOT, check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", tree], input=archive, check=True)
        child_env = {**env, "PYTHONPATH": os.pathsep.join([str(Path(tree) / "plugins"), str(ROOT)])}
        done = subprocess.run([sys.executable, "-c", _BEFORE_SCRIPT, entrypoint, f"before-{uuid.uuid4().hex[:8]}"],
                              env=child_env, cwd=tree, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"the operator of {ref} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def after(entrypoint: str) -> dict:
    from airflow.sdk.exceptions import TaskDeferred
    from ray_operators.hooks import ray_job as hooks
    from ray_operators.operators.ray_job import RayJobOperator

    fetched = {"bytes": 0, "requests": 0}
    tail = hooks.AsyncJobApi.tail_logs

    async def counted(self, submission_id):
        fetched["requests"] += 1
        async for line in tail(self, submission_id):
            fetched["bytes"] += len(line.encode()) + 1
            yield line

    hooks.AsyncJobApi.tail_logs = counted
    ti = SimpleNamespace(dag_id="bench", run_id=f"after-{uuid.uuid4().hex[:8]}", task_id="after", map_index=0,
                         try_number=1, max_tries=0, xcom_push=lambda **_: None)
    op = RayJobOperator(task_id="after", entrypoint=entrypoint, deferrable=True, poll_interval=1.0)
    clock = time.perf_counter()
    try:
        op.execute({"ti": ti})
    except TaskDeferred as deferred:
        slot = time.perf_counter() - clock
        trigger = deferred.trigger
    trigger._log = logging.getLogger("bench.trigger")  # the lines themselves are not what is measured
    trigger._log.disabled = True

    async def first_event():
        async for event in trigger.run():
            return event.payload

    waited = time.perf_counter()
    event = asyncio.run(first_event())
    waited = time.perf_counter() - waited
    resumed = RayJobOperator(task_id="after", entrypoint=entrypoint, deferrable=True)
    clock = time.perf_counter()
    resumed.execute_complete({"ti": ti}, event)
    slot += time.perf_counter() - clock
    return {"slot_seconds": slot, "trigger_seconds": waited, "log_bytes": fetched["bytes"],
            "log_requests": fetched["requests"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--before", default=BEFORE_REF)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-ray-provider-"))
    base = {**os.environ, **BENCH_PORTS, "PIPELINE_WORK_DIR": str(work)}
    stack_vars = subprocess.run(
        [sys.executable, "-c", "import json; from tools.stack import stack_env; print(json.dumps(stack_env()))"],
        env=base, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    env = {**base, **json.loads(stack_vars)}
    subprocess.run([sys.executable, "-m", "tools.stack", "up"], env=env, cwd=ROOT, check=True, capture_output=True)
    try:
        os.environ.update(env)
        entrypoint = _entrypoint(args.lines, args.seconds)
        old, new = before(env, args.before, entrypoint), after(entrypoint)
    finally:
        subprocess.run([sys.executable, "-m", "tools.stack", "down"], env=env, cwd=ROOT, capture_output=True)
    print(f"job: {args.lines:,} log lines over ~{args.seconds:.0f} s; before = {args.before}, after = this checkout")
    print(f"{'':24}{'before':>14}{'after':>14}{'after/before':>14}")
    for key, label in (("slot_seconds", "worker-slot seconds"), ("log_bytes", "log bytes fetched"),
                       ("log_requests", "log requests")):
        ratio = new[key] / old[key] if old[key] else float("nan")
        print(f"{label:24}{old[key]:>14,.1f}{new[key]:>14,.1f}{ratio:>14.3f}")
    print(f"(after: the trigger waited {new['trigger_seconds']:.1f} s in the event loop, on no worker slot)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

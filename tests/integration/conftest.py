"""One real stack for every integration test: SeaweedFS S3, Chroma, a Ray head and a Ray worker
node started by the launcher, Airflow's database migrated; the ``document_ingest`` DAG run by Airflow itself
(``airflow dags test``).

The stack runs on its own ports and work dir, so a demo stack left running does not
interfere. Each test module gets its own inbox prefix and vector collection
(``module_env``), so modules never see each other's documents.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import warnings
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from tools import airflow_db

ROOT = Path(__file__).resolve().parents[2]
DAG_ID = "document_ingest"
AIRFLOW = str(Path(sys.executable).parent / "airflow")
# SeaweedFS also takes each of its ports + 10000 for gRPC: they must stay below the kernel's
# ephemeral range (32768 and up), where any client socket may hold them.
TEST_PORTS = {"STACK_S3_PORT": "21333", "STACK_RAY_DASHBOARD_PORT": "28265", "STACK_RAY_GCS_PORT": "26379",
              "STACK_CHROMA_PORT": "28000"}
# A run finds out quickly that there is no work, or that its job ended; a file over 64 KiB is too big.
TEST_SETTINGS = {"PIPELINE_INGEST_SCHEDULE": "", "PIPELINE_SENSOR_TIMEOUT_SECONDS": "12",
                 "PIPELINE_SENSOR_POKE_SECONDS": "4", "PIPELINE_MAX_DOCUMENT_BYTES": str(64 * 1024),
                 "PIPELINE_RAY_POLL_SECONDS": "1"}
# Two Ray nodes, as on a real cluster: the head keeps the job drivers, and every actor and task of
# the jobs asks for the resource only the worker node offers.
TEST_CLUSTER = {"STACK_RAY_WORKER_NODES": "1", "PIPELINE_RAY_WORKER_RESOURCE": "pipeline_worker"}
WORKER_NODE = "ray-node-1"
# The keys the cloud backends (and the pseudonyms of keys that carry PII) read on the workers, from
# their own environment: the Ray head is started with them, as a cluster's nodes would be. Fake values, for the local fakes of the APIs;
# the tests check that no job ever carries them.
WORKER_SECRETS = {"OPENAI_API_KEY": "sk-test-worker-only-5b1e0c", "PINECONE_API_KEY": "pc-test-worker-only-9d2c4a",
                  "SOURCE_PSEUDONYM_KEY": "pseudonym-test-worker-only-41d7"}
# The ledger runs on PostgreSQL with a password, as in production: the Airflow side holds its URL,
# no job may see it.
LEDGER_PASSWORD = "pg-test-ledger-only-7c3e91"


def run(env: dict[str, str], *args: str, check: bool = True, timeout: int = 1200) -> subprocess.CompletedProcess:
    result = subprocess.run(args, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{args} exited {result.returncode}:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


# Package scope: the stack and the variables pointing at it are gone before the unit tests run.
@pytest.fixture(scope="package")
def stack(tmp_path_factory) -> Iterator[dict[str, str]]:
    from include.control.settings import reload_settings
    from tools.stack import stack_env

    patch = pytest.MonkeyPatch()
    work = tmp_path_factory.mktemp("stack") / "work"
    with ExitStack() as stopped_at_exit:
        ledger_url = _ledger_url(stopped_at_exit, tmp_path_factory.mktemp("ledger"))
        ledger = {"PIPELINE_LEDGER_URL": ledger_url} if ledger_url else {}
        for name, value in {**TEST_PORTS, **TEST_SETTINGS, **TEST_CLUSTER, **WORKER_SECRETS, **ledger,
                            "PIPELINE_WORK_DIR": str(work)}.items():
            patch.setenv(name, value)
        for name, value in stack_env().items():  # this process reads the stack like the DAG does
            patch.setenv(name, value)
        env = dict(os.environ)
        reload_settings()
        python = sys.executable
        try:
            run(env, python, "-m", "tools.stack", "up")
            again = run(env, python, "-m", "tools.stack", "up")  # idempotent: nothing restarted
            assert "s3: already running" in again.stdout and "ray: already running" in again.stdout
            assert f"{WORKER_NODE}: already running" in again.stdout
            run(env, AIRFLOW, "db", "migrate")
            yield env
        finally:
            run(env, python, "-m", "tools.stack", "down", check=False)
            patch.undo()
            reload_settings()


def _ledger_url(stopped_at_exit: ExitStack, root: Path) -> str:
    """The ledger's URL on a PostgreSQL server of the stack's own, with a password; where this machine
    cannot run PostgreSQL, the default SQLite file (and the secrets test has no ledger password to
    look for)."""
    from include.control.ledger.store import sqlalchemy_url
    from tests.postgres import PostgresUnavailable, postgres_server

    try:
        server = stopped_at_exit.enter_context(postgres_server(root, password=LEDGER_PASSWORD))
    except PostgresUnavailable as reason:
        warnings.warn(f"the ledger runs on SQLite: {reason}", stacklevel=2)
        return ""
    return sqlalchemy_url(server.uri(server.create_database("ledger")))


def isolated_env(stack: dict[str, str], name: str, **settings: str) -> Iterator[dict[str, str]]:
    """The stack's environment with an inbox, a quarantine, queries and answers prefixes and a vector
    collection of its own, and any other ``PIPELINE_*`` settings given."""
    from include.control.settings import reload_settings

    overrides = {"PIPELINE_INBOX_URI": f"s3://documents/{name}/inbox/",
                 "PIPELINE_QUARANTINE_URI": f"s3://documents/{name}/quarantine/",
                 "PIPELINE_QUERIES_URI": f"s3://documents/{name}/queries/",
                 "PIPELINE_ANSWERS_URI": f"s3://documents/{name}/answers/",
                 "PIPELINE_CHROMA_COLLECTION": name, **settings}
    patch = pytest.MonkeyPatch()
    for key, value in overrides.items():
        patch.setenv(key, value)
    reload_settings()
    try:
        yield {**stack, **overrides}
    finally:
        patch.undo()
        reload_settings()


def planted_secrets(env: dict[str, str]) -> list[str]:
    """Every secret this stack holds: the S3 secret (the Airflow side and the workers), the Ray
    cluster's token (its nodes, and Airflow's ``ray_default`` connection), the API keys (the Ray
    nodes only) and the ledger's password (the Airflow side only)."""
    ledger = [LEDGER_PASSWORD] if LEDGER_PASSWORD in env.get("PIPELINE_LEDGER_URL", "") else []
    ray_token = Path(env["RAY_AUTH_TOKEN_PATH"]).read_text()
    return [env["AWS_SECRET_ACCESS_KEY"], ray_token, *WORKER_SECRETS.values(), *ledger]


def airflow_env(env: dict[str, str]) -> dict[str, str]:
    """The environment of an Airflow process: without the workers' API keys, as in a deployment where
    only the Ray nodes hold them."""
    return {key: value for key, value in env.items() if key not in WORKER_SECRETS}


def dag_test(env: dict[str, str], conf: str | None = None, dag_id: str = DAG_ID) -> str:
    """One run of the DAG through Airflow (which holds no API key); its run id. ``airflow dags test``
    prints its task logs (the jobs' driver logs streamed into them) instead of writing them: they
    are kept under ``dag_test_logs()``."""
    done = run(airflow_env(env), AIRFLOW, "dags", "test", dag_id, *(["-c", conf] if conf else []), check=False)
    run_id = airflow_db.latest_run_id(Path(env["AIRFLOW_HOME"]), dag_id)
    folder = Path(env["AIRFLOW_HOME"]) / "dag_test_logs"
    folder.mkdir(exist_ok=True)
    (folder / f"{dag_id}--{re.sub(r'[^A-Za-z0-9_.-]+', '_', str(run_id))}.log").write_text(done.stdout + done.stderr)
    return run_id


def dag_test_logs(env: dict[str, str]) -> list[Path]:
    """The task logs of every ``dag_test`` run so far."""
    return sorted((Path(env["AIRFLOW_HOME"]) / "dag_test_logs").glob("*.log"))


def ray_jobs_of(env: dict[str, str], run_id: str, dag_id: str = DAG_ID) -> list:
    from ray.job_submission import JobSubmissionClient

    jobs = JobSubmissionClient(env["RAY_ADDRESS"]).list_jobs()
    return [j for j in jobs if j.submission_id.startswith(f"airflow-{dag_id}") and j.metadata.get("run_id") == run_id]


def chroma(settings):
    from include.backends.vector_stores import ChromaStore

    return ChromaStore(settings)._collection

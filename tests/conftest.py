"""Shared fixtures. Everything runs offline: these variables keep every library off the network."""

from __future__ import annotations

import os
import secrets
import socket
import tempfile
from pathlib import Path

import pytest

_OFFLINE = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS": "",
    "TLDEXTRACT_CACHE": os.path.join(tempfile.gettempdir(), "tldextract-tests"),
    "RAY_USAGE_STATS_ENABLED": "0",
}
os.environ.update(_OFFLINE)
# Token auth for every Ray cluster of the session, with one token: the integration stack's and the
# unit tests' local ones. Ray caches the auth mode and token per process, so a session that mixed
# modes or tokens would fail the clusters after the first.
_RAY_TOKEN = Path(tempfile.mkdtemp(prefix="ray-token-")) / "ray_auth_token"
_RAY_TOKEN.write_text(secrets.token_hex(32))
_RAY_TOKEN.chmod(0o600)
os.environ.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(_RAY_TOKEN)})
# The workers' pseudonym key (sources whose names carry PII): one per session, for every worker.
os.environ["SOURCE_PSEUDONYM_KEY"] = secrets.token_hex(32)
# Airflow (DagBag in the integrity test) keeps its files in a throwaway home.
os.environ["AIRFLOW_HOME"] = tempfile.mkdtemp(prefix="airflow-home-")
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
# Unit tests never talk to a stack someone left running in this shell.
for _name in [n for n in os.environ if n.startswith(("PIPELINE_", "STACK_"))] + ["RAY_ADDRESS"]:
    os.environ.pop(_name, None)

from include.control.settings import ControlSettings  # noqa: E402
from include.settings import PipelineSettings  # noqa: E402
from tools.sample_pdfs import SAMPLES, write_samples  # noqa: E402

SHARED_TESTDATA = Path(__file__).resolve().parents[2] / "shared" / "testdata"


@pytest.fixture(scope="session")
def sample_pdfs(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("samples")
    return {path.name: path for path in write_samples(folder)}


@pytest.fixture(scope="session")
def samples_by_name():
    return {sample.filename: sample for sample in SAMPLES}


@pytest.fixture
def settings(tmp_path) -> PipelineSettings:
    return PipelineSettings(
        work_dir=tmp_path / "work",
        inbox_uri=(tmp_path / "inbox").as_uri() + "/",
        artifacts_uri=(tmp_path / "artifacts").as_uri() + "/",
        quarantine_uri=(tmp_path / "quarantine").as_uri() + "/",
    )


@pytest.fixture
def pipeline_env(settings, monkeypatch) -> ControlSettings:
    """The ``settings`` fixture's places as ``PIPELINE_*`` variables, for code that reads
    ``get_control_settings()`` as the DAG's tasks do; its ledger upgraded, as a deploy would."""
    from include.control.ledger.store import Ledger, default_url
    from include.control.settings import get_control_settings, reload_settings

    for name in ("work_dir", "inbox_uri", "artifacts_uri", "quarantine_uri"):
        monkeypatch.setenv(f"PIPELINE_{name.upper()}", str(getattr(settings, name)))
    reload_settings()
    Ledger(default_url(get_control_settings())).upgrade()
    yield get_control_settings()
    reload_settings()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def ray_local():
    """A throwaway local Ray (not the stack's head), shipping the project like a job does."""
    import ray

    from include.control.ingest import RUNTIME_EXCLUDES
    from include.settings import PROJECT_ROOT

    temp_dir = tempfile.mkdtemp(prefix="ray-ut-", dir="/tmp")
    ray.init(
        num_cpus=2,
        # The state API: a crashed worker's log names its signal. On a port of its own, never the
        # demo stack's 8265.
        include_dashboard=True,
        dashboard_port=_free_port(),
        _temp_dir=temp_dir,
        runtime_env={"working_dir": str(PROJECT_ROOT), "excludes": RUNTIME_EXCLUDES, "env_vars": _OFFLINE},
        logging_level="WARNING",
    )
    yield ray
    ray.shutdown()


@pytest.fixture(autouse=True)
def _no_warm_workers_left(request):
    """A test on ``ray_local`` leaves no warm worker (include.stages.warm) behind: the next test
    finds the memory free and loads its own models."""
    yield
    if "ray_local" not in request.fixturenames:
        return
    import ray

    from include.stages.warm import NAMESPACE, worker_names

    for name in worker_names():
        try:
            ray.kill(ray.get_actor(name, namespace=NAMESPACE), no_restart=True)
        except ValueError:
            pass  # retired meanwhile


@pytest.fixture
def shared_testdata() -> Path:
    if not SHARED_TESTDATA.is_dir():
        pytest.skip(f"shared test data not found at {SHARED_TESTDATA} (it sits beside the repository in CI)")
    return SHARED_TESTDATA

"""docker-compose.yaml, read as Docker Compose would read it, against the Compose specification and
against the code: the names, variables and ports it sets are the ones the code reads, nothing is
published beyond this machine by default, and no secret is in the file.

No Docker engine runs here: the commands themselves run as plain processes in
tests/integration/test_compose_stack.py.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from include.backends.secrets import WORKER_SECRETS
from include.control.ledger.store import LEDGER_CONN_ID
from include.control.settings import ControlSettings
from ray_operators.hooks.ray_job import RayJobHook

ROOT = Path(__file__).resolve().parents[3]
COMPOSE = ROOT / "docker-compose.yaml"
ENV_EXAMPLE = ROOT / ".env.example"
# ${NAME}, ${NAME:-default}, ${NAME:?message}; $${NAME} is a literal "${NAME}" for the container's shell.
_VARIABLE = re.compile(r"(?<!\$)\$\{(?P<name>[A-Z0-9_]+)(?:(?P<op>:?[-?])(?P<rest>[^}]*))?\}")
# Services that run once and exit: no health to check.
ONE_SHOT = {"airflow-init"}
SECRETS = {"POSTGRES_PASSWORD", "AIRFLOW_DB_PASSWORD", "LEDGER_DB_PASSWORD", "AIRFLOW_ADMIN_PASSWORD",
           "AIRFLOW_JWT_SECRET", "AIRFLOW_API_SECRET_KEY", "AIRFLOW_FERNET_KEY", "RAY_AUTH_TOKEN",
           "S3_ACCESS_KEY", "S3_SECRET_KEY", "SOURCE_PSEUDONYM_KEY", "OPENAI_API_KEY", "PINECONE_API_KEY"}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _env(compose: dict, service: str) -> dict[str, str]:
    return {name: str(value) for name, value in compose["services"][service].get("environment", {}).items()}


def _interpolated(text: str, values: dict[str, str]) -> str:
    return _VARIABLE.sub(lambda match: values.get(match["name"]) or (match["rest"] if match["op"] == ":-" else ""),
                         text)


def test_the_file_is_valid_against_the_compose_specification():
    # The schema check-jsonschema ships (vendored from compose-spec): no network needed.
    checked = subprocess.run([str(Path(sys.executable).parent / "check-jsonschema"), "--builtin-schema",
                              "vendor.compose-spec", str(COMPOSE)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_every_published_port_listens_on_this_machine_unless_the_user_opts_out(compose):
    published = {name: service["ports"] for name, service in compose["services"].items() if "ports" in service}
    assert set(published) == {"s3", "chroma", "ray-head", "airflow-apiserver"}
    for name, ports in published.items():
        for port in ports:
            assert port.startswith("${PUBLISH_ADDRESS:-127.0.0.1}:"), (name, port)
    assert not any("postgres" in name or "worker" in name for name in published)


def test_every_long_running_service_has_a_health_check_and_waits_for_what_it_needs(compose):
    services = compose["services"]
    for name, service in services.items():
        if name not in ONE_SHOT:
            assert service.get("healthcheck", {}).get("test"), f"{name} has no health check"
        for needed, condition in service.get("depends_on", {}).items():
            expected = "service_completed_successfully" if needed in ONE_SHOT else "service_healthy"
            assert condition == {"condition": expected}, (name, needed, condition)
    for airflow in ("airflow-scheduler", "airflow-triggerer"):
        assert {"postgres", "airflow-init", "ray-head", "s3"} <= set(services[airflow]["depends_on"])
    assert set(services["ray-worker"]["depends_on"]) == {"ray-head"}


def test_no_secret_is_in_the_file_and_every_one_comes_from_the_env_file(compose):
    text = COMPOSE.read_text()
    used = {match["name"] for match in _VARIABLE.finditer(text)}
    for match in _VARIABLE.finditer(text):
        if match["name"] in SECRETS:
            assert match["op"] in (None, ":?") or (match["op"] == ":-" and match["rest"] == ""), match[0]
    example = dict(line.split("=", 1) for line in ENV_EXAMPLE.read_text().splitlines()
                   if line and not line.startswith("#"))
    # The example names every variable the file reads, and gives no secret a value.
    assert used == set(example)
    assert all(example[name] == "" for name in SECRETS)
    assert SECRETS <= used
    # What a .env holds never reaches git (nor an image: tests/unit/deploy/test_images.py).
    assert ".env" in (ROOT / ".gitignore").read_text().split()
    # Every environment value that names a password, key or token is a variable, not a literal.
    for name, service in compose["services"].items():
        for variable, value in _env(compose, name).items():
            if re.search(r"PASSWORD|SECRET|TOKEN|_KEY$", variable) and not variable.endswith("_FILE"):
                assert re.fullmatch(r"\$\{[A-Z0-9_]+(:\?[^}]*|:-)?\}", value), (name, variable, value)


def test_the_connections_and_settings_set_are_the_ones_the_code_reads(compose):
    airflow = _env(compose, "airflow-scheduler")
    connections = {name.removeprefix("AIRFLOW_CONN_").lower() for name in airflow if name.startswith("AIRFLOW_CONN_")}
    assert connections == {"aws_default", RayJobHook.default_conn_name, LEDGER_CONN_ID}
    pipeline = {name.removeprefix("PIPELINE_").lower() for name in airflow if name.startswith("PIPELINE_")}
    assert pipeline <= set(ControlSettings.model_fields), pipeline - set(ControlSettings.model_fields)
    for service in ("ray-head", "ray-worker"):
        ray = _env(compose, service)
        # The workers' secrets are the ones the workers read, and the Airflow side has none of them.
        assert set(WORKER_SECRETS) <= set(ray)
        assert not set(WORKER_SECRETS) & set(airflow)
        assert ray["RAY_AUTH_MODE"] == "token"
    # The ledger's URL and every Airflow secret stay on the Airflow side; the jobs' settings come with each
    # job from the Airflow side (a node's own would be overridden: tests/integration/test_compose_stack.py).
    for service in ("ray-head", "ray-worker"):
        assert not {name for name in _env(compose, service) if name.startswith(("AIRFLOW", "PIPELINE_"))}
    # The connections' credentials are variables of the env file too.
    for name in ("AIRFLOW_CONN_AWS_DEFAULT", "AIRFLOW_CONN_RAY_DEFAULT"):
        connection = json.loads(airflow[name])
        for field in ("login", "password"):
            assert field not in connection or _VARIABLE.fullmatch(connection[field]), (name, field)
    assert re.fullmatch(r"postgres://ledger:\$\{LEDGER_DB_PASSWORD[^}]*\}@postgres:5432/ledger",
                        airflow["AIRFLOW_CONN_PIPELINE_LEDGER"])


def test_the_ports_and_names_in_commands_agree_with_the_urls_the_code_is_given(compose):
    services = compose["services"]
    airflow = {name: _interpolated(value, {}) for name, value in _env(compose, "airflow-scheduler").items()}
    s3_url = urlsplit(airflow["PIPELINE_S3_ENDPOINT_URL"])
    assert f"-s3.port={s3_url.port}" in services["s3"]["command"].split()
    assert json.loads(airflow["AIRFLOW_CONN_AWS_DEFAULT"])["extra"]["endpoint_url"] == airflow["PIPELINE_S3_ENDPOINT_URL"]
    bucket = urlsplit(airflow["PIPELINE_INBOX_URI"]).netloc
    assert f"-bucket={bucket}" in services["s3"]["command"].split()
    assert urlsplit(airflow["PIPELINE_ARTIFACTS_URI"]).netloc == bucket
    chroma = urlsplit(airflow["PIPELINE_CHROMA_URL"])
    assert chroma.hostname == "chroma" and f"--port {chroma.port}" in services["chroma"]["command"]
    ray = json.loads(airflow["AIRFLOW_CONN_RAY_DEFAULT"])
    head = services["ray-head"]["command"].split()
    assert ray["host"] == "ray-head" and f"--dashboard-port={ray['port']}" in head
    gcs_port = next(arg.split("=")[1] for arg in head if arg.startswith("--port="))
    worker = services["ray-worker"]["command"]
    assert f"--address=ray-head:{gcs_port}" in worker.split()
    resources = json.loads(re.search(r"--resources='([^']*)'", worker)[1])
    assert set(resources) == {airflow["PIPELINE_RAY_WORKER_RESOURCE"]}
    assert "--num-cpus=0" in head  # the head takes no stage work, only the job drivers
    assert f":{ray['port']}" in services["ray-head"]["ports"][0]

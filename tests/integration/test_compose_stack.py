"""docker-compose.yaml without Docker: every service's own command, environment and health check run as
plain processes on this machine, the Compose host names mapped to 127.0.0.1; then the sample PDFs dropped
into the inbox are ingested by the run the triggerer's watcher starts, with nobody triggering it.

This proves that the commands start, that the ports, host names and variables of the file agree with what
the code reads, that each health check can pass and that the dependency order holds. What a Docker engine
adds is modelled, each in one place below, and nothing else is added:

- ``IMAGES``: what each image sets (its ENV, its working dir, how its entrypoint runs the command), mirroring
  docker/airflow/Dockerfile, docker/ray/Dockerfile and their base images.
- Paths: a container's own folders (``/opt/airflow``, ``/home/ray``, ``/tmp``) and its volumes' mount points
  are folders of a tmp dir; ``/opt/project`` (the images' copy of the code) is this checkout.
- Each service runs in a PID namespace of its own (``unshare --pid``), as in a container, and its health
  check runs inside it (``nsenter``): the ray-worker's check reads ``/proc`` and must see its own processes.
- ``DOCKER_ENV``: what Docker itself gives every container (``HOSTNAME``).
- ``one_host_flags()``: what two Ray nodes on one shared host need that two containers do not.
- ``TEST_SETTINGS``: the test's own settings, each with its reason.

The postgres service is this machine's PostgreSQL (tests/postgres.py) on compose's port, initialised as the
postgres image's entrypoint does it: docker/postgres/init-databases.sh runs against it.

Not tested here: the images (their builds, what their entrypoints do besides running the command, such as
the Airflow entrypoint's wait for its database), the programs' versions in them (busybox's wget in the
SeaweedFS image, the Airflow side's slim environment: tests/integration/test_airflow_tier.py), volumes'
ownership, restart policies, shm sizes, published ports that differ from the container's port (one host),
Docker's network and DNS, and ``--scale ray-worker=N`` above one.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from tools.stack import port_busy

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yaml"
ENV_EXAMPLE = ROOT / ".env.example"
BIN = Path(sys.executable).parent
DAG_ID = "document_ingest"
STAGES = {"extract", "chunk", "enrich", "embed", "load"}
# The names other services reach services by on the compose network: one host here.
HOSTS = ("postgres", "s3", "chroma", "ray-head", "airflow-apiserver")
# Every port compose's services listen on (some are the programs' defaults): another program on one of them
# would be reached instead (a demo stack, `python -m tools.stack up`, takes some of the same).
COMPOSE_PORTS = {
    "postgres": [5432],
    "s3": [8333, 9333, 9340, 8888, 18333, 19333, 19340, 18888],  # and SeaweedFS's gRPC ports, each + 10000
    "chroma": [8000],
    "ray-head": [6379, 8265],  # GCS, dashboard
    "airflow": [8080, 8974, 8793, 8794],  # API server, scheduler's health, log servers (executor, triggerer)
}
# What .env.example leaves empty and the stack does not need: the cloud backends' keys.
OPTIONAL_SECRETS = {"OPENAI_API_KEY", "PINECONE_API_KEY"}
# The test's own settings, for the Airflow services; every other value is compose's as it is.
TEST_SETTINGS = {
    # No sweep and no query runs: a sweep at the turn of an hour would compete with the watcher's run for the
    # drop, and two cores have no time for query runs.
    "PIPELINE_INGEST_SCHEDULE": "",
    "PIPELINE_QUERY_SCHEDULE": "",
    # Seconds, not the defaults: the watcher notices the drop sooner (5 s polls, 3 s settle), and each
    # deferred stage task learns sooner that its job ended (5 s polls, five stages one after the other).
    "PIPELINE_INBOX_WATCH_SECONDS": "1",
    "PIPELINE_INBOX_SETTLE_SECONDS": "1",
    "PIPELINE_RAY_POLL_SECONDS": "1",
}
UP_TIMEOUT = 420
RUN_TIMEOUT = 600


def one_host_flags() -> dict[str, list[str]]:
    """What the Ray nodes need on one shared host that their containers do not: flags added to the commands
    compose gives them.

    - The worker's temp dir: Ray's default (/tmp/ray) of its own container, here a folder of its own. A
      joining node takes the head's temp dir otherwise, which in containers is another /tmp and here the
      same folder, where the two nodes' runtime-env agents unpack and remove the jobs' working dirs under
      each other (a job's driver on the worker failed on a file of the head's copy that had gone).
    - Ports of their own where Ray takes defaults that both nodes would take, as would any other Ray on this
      machine (a test's ``ray.init()``): the dashboard agent's 52365, the client server's 10001.
    - Worker ports from anywhere free (0), not from the default range 10002-19999 that both raylets would hand
      out, where SeaweedFS's gRPC ports also sit.

    None of these ports is one that compose's file names."""
    anywhere = ["--min-worker-port=0", "--max-worker-port=0"]
    return {"ray-head": [f"--dashboard-agent-listen-port={_free_port()}",
                         f"--ray-client-server-port={_free_port()}", *anywhere],
            "ray-worker": ["--temp-dir=/tmp/ray", f"--dashboard-agent-listen-port={_free_port()}", *anywhere]}


def _free_port() -> int:
    # The kernel's ephemeral range (32768-60999 on Linux): no port of the project's own stacks.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# --- the images --------------------------------------------------------------------------------------------


def _airflow_entrypoint(command: list[str]) -> list[str]:
    """The official Airflow image's /entrypoint: `bash ...`, `python ...` and `airflow ...` as they are,
    anything else as Airflow's subcommand."""
    return command if command[0] in ("bash", "python", "airflow") else ["airflow", *command]


@dataclass(frozen=True)
class Image:
    env: dict[str, str]  # its ENV (container paths); PATH is this machine's, the venv first
    workdir: str
    entrypoint: Callable[[list[str]], list[str]]
    own_paths: tuple[str, ...]  # the image's folders each container has a copy of


# They mirror the Dockerfiles (docker/airflow/Dockerfile, docker/ray/Dockerfile) and their base images.
IMAGES = {
    "document-ingest/airflow": Image(
        env={"AIRFLOW_HOME": "/opt/airflow", "HOME": "/home/airflow", "LANG": "C.UTF-8",  # apache/airflow
             "AIRFLOW__CORE__DAGS_FOLDER": "/opt/project/dags",
             "AIRFLOW__CORE__PLUGINS_FOLDER": "/opt/project/plugins", "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
             "PYTHONPATH": "/opt/project:/opt/project/plugins", "RAY_USAGE_STATS_ENABLED": "0"},
        workdir="/opt/airflow", entrypoint=_airflow_entrypoint,
        own_paths=("/opt/airflow", "/home/airflow", "/tmp"),
    ),
    "document-ingest/ray": Image(
        env={"HOME": "/home/ray", "LANG": "C.UTF-8",  # rayproject/ray
             "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
             "TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS": "", "TLDEXTRACT_CACHE": "/home/ray/.cache/tldextract",
             "TOKENIZERS_PARALLELISM": "false", "RAY_USAGE_STATS_ENABLED": "0",
             "ANONYMIZED_TELEMETRY": "False"},
        workdir="/home/ray", entrypoint=lambda command: command, own_paths=("/home/ray", "/tmp"),
    ),
    # Its entrypoint runs `weed <command>` (docker/entrypoint.sh of seaweedfs/seaweedfs).
    "chrislusf/seaweedfs": Image(env={}, workdir="/", entrypoint=lambda command: ["weed", *command],
                                 own_paths=("/tmp",)),
}
# The code the Airflow image copies to /opt/project (the Ray image gets it with each job).
CODE_PATHS = {"/opt/project": ROOT}
# What Docker gives every container: HOSTNAME, the container's host name, which Airflow records as its jobs'
# host there too (`airflow jobs check --hostname "$HOSTNAME"` compares the two). Here all share this host's.
DOCKER_ENV = {"HOSTNAME": socket.gethostname()}
PATH = f"{BIN}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


# --- reading the file as Compose does ----------------------------------------------------------------------

_INTERPOLATION = re.compile(r"\$(?:(?P<escaped>\$)|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])"
                            r"(?P<arg>[^}]*))?\}|(?P<named>[A-Za-z_][A-Za-z0-9_]*))")


def interpolate(text: str, values: dict[str, str]) -> str:
    """``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``, ``${VAR:?message}``, ``${VAR?message}``, ``$VAR``
    from the .env values, ``$$`` a literal ``$``: Compose's rules (an unset plain variable is empty)."""
    def value(match: re.Match) -> str:
        if match["escaped"]:
            return "$"
        name, op = match["braced"] or match["named"], match["op"]
        unset = not values.get(name) if op and op.startswith(":") else name not in values
        if op in (":-", "-"):
            return match["arg"] if unset else values[name]
        if op in (":?", "?") and unset:
            raise ValueError(f"required variable {name} is missing a value: {match['arg']}")
        return values.get(name, "")
    return _INTERPOLATION.sub(value, text)


def _interpolated(node, values: dict[str, str]):
    if isinstance(node, dict):
        return {key: _interpolated(value, values) for key, value in node.items()}
    if isinstance(node, list):
        return [_interpolated(item, values) for item in node]
    return interpolate(node, values) if isinstance(node, str) else node


def load_compose(values: dict[str, str]) -> dict:
    return _interpolated(yaml.safe_load(COMPOSE.read_text()), values)


def env_values() -> dict[str, str]:
    """A .env made from .env.example as its comments say: every secret random, the rest as given."""
    from cryptography.fernet import Fernet

    example = dict(line.split("=", 1) for line in ENV_EXAMPLE.read_text().splitlines()
                   if line.strip() and not line.startswith("#"))
    values = {}
    for name, given in example.items():
        if given or name in OPTIONAL_SECRETS:
            values[name] = given
        elif name == "AIRFLOW_FERNET_KEY":
            values[name] = Fernet.generate_key().decode()
        else:
            values[name] = secrets.token_hex(32)
    return values


_HOST = "|".join(re.escape(host) for host in HOSTS)
# A host name where a host goes: before ":<port>" (URLs, --address=), as SeaweedFS's -ip, as a JSON "host".
_HOST_NAMES = re.compile(rf"(?<![\w.-])(?:{_HOST})(?=:\d)|(?<=-ip=)(?:{_HOST})(?![\w.-])"
                         rf"|(?<=\"host\": \")(?:{_HOST})(?=\")")


def on_this_host(text: str, paths: dict[str, Path]) -> str:
    """A command's argument or an environment value as it reads here: compose's host names and 0.0.0.0 as
    127.0.0.1, the container's paths as the folders they are here."""
    text = _HOST_NAMES.sub("127.0.0.1", text).replace("0.0.0.0", "127.0.0.1")
    if not paths:
        return text
    # One pass, the longest path first: /opt/airflow/state is a volume inside the container's /opt/airflow.
    alternatives = "|".join(re.escape(path) for path in sorted(paths, key=len, reverse=True))
    return re.sub(rf"(?<![\w./-])(?:{alternatives})(?![\w.-])", lambda match: str(paths[match[0]]), text)


def _command(value: str | list[str]) -> list[str]:
    return shlex.split(value) if isinstance(value, str) else list(value)


def _seconds(duration: str) -> float:
    """A Compose duration: ``30s``, ``1m30s``, ``500ms``."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001, "us": 1e-6}
    return sum(float(n) * units[u] for n, u in re.findall(r"([\d.]+)(ms|us|h|m|s)", str(duration)))


# --- the services as processes -----------------------------------------------------------------------------


class ServiceFailed(RuntimeError):
    pass


@dataclass
class Service:
    name: str
    spec: dict
    root: Path  # the folders of its own (its container's)
    volumes: Path
    logs: Path
    extra_flags: list[str] = field(default_factory=list)
    process: subprocess.Popen | None = None
    namespace_pid: int | None = None  # the PID namespace's first process (the container's PID 1)
    env: dict[str, str] = field(default_factory=dict)
    paths: dict[str, Path] = field(default_factory=dict)

    @property
    def image(self) -> Image:
        return IMAGES[self.spec["image"].rsplit(":", 1)[0]]

    @property
    def workdir(self) -> Path:
        """The image's working dir, where the command and the health check run (postgres: its own folder)."""
        return self.paths.get(self.image.workdir, self.root) if self.paths else self.root

    @property
    def log(self) -> Path:
        return self.logs / f"{self.name}.log"

    def prepare(self, extra_env: dict[str, str]) -> None:
        """Its folders (its own and its volumes), its environment as its container has it: mapped here."""
        image = self.image
        self.paths = dict(CODE_PATHS)
        for own in image.own_paths:
            self.paths[own] = self.root / own.strip("/").replace("/", "-")
        for volume in self.spec.get("volumes", []):
            source, target = volume.split(":")[:2]
            bind = source.startswith(".")
            self.paths[target] = (ROOT / source).resolve() if bind else self.volumes / source
        for path in self.paths.values():
            if not path.is_relative_to(ROOT):
                path.mkdir(parents=True, exist_ok=True)
        # A volume mounted inside one of the container's own folders (/opt/airflow/logs): found there too.
        for target, host in self.paths.items():
            parent = max((p for p in self.paths if target.startswith(p + "/")), key=len, default=None)
            if parent and host.is_relative_to(self.volumes):
                link = self.paths[parent] / target[len(parent) + 1:]
                link.parent.mkdir(parents=True, exist_ok=True)
                if not link.exists():
                    link.symlink_to(host)
        environment = {name: str(value) for name, value in self.spec.get("environment", {}).items()}
        env = {**image.env, **environment, **DOCKER_ENV, **extra_env}
        self.env = {name: on_this_host(value, self.paths) for name, value in env.items()}
        # The container's own /tmp (Ray's temp dir and sockets go there) and the image's programs.
        self.env.update(TMPDIR=str(self.paths["/tmp"]), PATH=PATH)

    def start(self) -> None:
        command = [on_this_host(arg, self.paths)
                   for arg in self.image.entrypoint(_command(self.spec["command"])) + self.extra_flags]
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as log:
            log.write(f"$ {shlex.join(command)}\n".encode())
            self.process = subprocess.Popen(
                # A PID namespace of its own, as in a container; gone with `unshare` (--kill-child).
                ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child", *command],
                cwd=self.workdir, env=self.env, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True)
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        deadline = time.monotonic() + 10
        while not (found := children.read_text().split() if children.exists() else []):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise ServiceFailed(f"{self.name} did not start")
            time.sleep(0.05)
        self.namespace_pid = int(found[0])

    def healthy(self) -> bool:
        """Its own health check passes, run inside its namespace with its environment, as Docker runs it."""
        check = self.spec["healthcheck"]
        test = [on_this_host(arg, self.paths) for arg in check["test"]]
        argv = test[1:] if test[0] == "CMD" else ["/bin/sh", "-c", test[1]]
        if self.namespace_pid:
            argv = ["nsenter", f"--target={self.namespace_pid}", "--pid", "--mount", "--", *argv]
        try:
            done = subprocess.run(argv, env=self.env, cwd=self.workdir, capture_output=True, check=False,
                                  timeout=_seconds(check.get("timeout", "30s")))
        except subprocess.TimeoutExpired:
            return False
        return done.returncode == 0

    def send(self, number: int) -> None:
        """A signal to its process group (Docker stops a container with SIGTERM, then SIGKILL); SIGKILL also
        to the namespace's first process, which takes every process of the namespace with it."""
        if self.process is None:
            return
        targets = [(os.killpg, self.process.pid)]
        if number == signal.SIGKILL and self.namespace_pid is not None:
            targets.append((os.kill, self.namespace_pid))
        for send, pid in targets:
            try:
                send(pid, number)
            except ProcessLookupError:
                pass

    def stopped(self) -> bool:
        return self.process is None or (self.process.poll() is not None and not _alive(self.namespace_pid))

    def tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return f"\n--- {self.log} ---\n" + "\n".join(text.splitlines()[-lines:])


def _alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class Stack:
    """The services brought up as `docker compose up` does: each once what it depends on is healthy (or, for
    a one-shot service, completed successfully), all that can start at once in parallel."""

    def __init__(self, compose: dict, values: dict[str, str], root: Path, logs: Path):
        self.compose, self.values = compose, values
        flags = one_host_flags()
        self.services = {name: Service(name, spec, root / name, root / "volumes", logs, flags.get(name, []))
                         for name, spec in compose["services"].items()}
        self.ready = {name: threading.Event() for name in self.services}
        self.failed: dict[str, str] = {}
        self._postgres_server = ExitStack()
        self._started = time.monotonic()

    def up(self, timeout: float) -> None:
        for name in self.services:
            threading.Thread(target=self._bring_up, args=(name,), daemon=True).start()
        deadline = time.monotonic() + timeout
        while not all(event.is_set() for event in self.ready.values()) and not self.failed:
            if time.monotonic() > deadline:
                self.failed["stack"] = f"not up after {timeout:.0f}s: waiting for " + ", ".join(
                    name for name, event in self.ready.items() if not event.is_set())
            time.sleep(0.2)
        if self.failed:
            raise ServiceFailed("\n".join(f"{name}: {why}" for name, why in self.failed.items())
                                + "".join(service.tail() for service in self.services.values()))

    def down(self, grace: float = 10.0) -> None:
        """Every service stopped at once, then PostgreSQL."""
        running = [service for service in self.services.values() if not service.stopped()]
        for service in running:
            service.send(signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and not all(service.stopped() for service in running):
            time.sleep(0.2)
        for service in running:
            service.send(signal.SIGKILL)
        for service in running:
            try:
                service.process.wait(10)
            except subprocess.TimeoutExpired:
                print(f"compose stack: {service.name} ({service.process.pid}) outlived SIGKILL", flush=True)
        self._postgres_server.close()

    def _bring_up(self, name: str) -> None:
        service = self.services[name]
        try:
            for needed, condition in service.spec.get("depends_on", {}).items():
                assert condition["condition"] in ("service_healthy", "service_completed_successfully")
                while not self.ready[needed].wait(0.5):
                    if self.failed:
                        return
            if name == "postgres":
                self._postgres(service)
            else:
                service.prepare(TEST_SETTINGS if service.image is IMAGES["document-ingest/airflow"] else {})
                service.start()
                if "healthcheck" in service.spec:
                    self._wait_healthy(service)
                elif (code := service.process.wait()) != 0:  # one-shot: it must complete successfully
                    raise ServiceFailed(f"exited with code {code}")
            print(f"compose stack: {name} ready at {time.monotonic() - self._started:.0f}s", flush=True)
            self.ready[name].set()
        except Exception as exc:  # noqa: BLE001 - reported by up(), with every service's log
            self.failed[name] = f"{type(exc).__name__}: {exc}"

    def _wait_healthy(self, service: Service) -> None:
        """Its check until it passes, within what Docker allows before it calls the service unhealthy."""
        check = service.spec["healthcheck"]
        interval = _seconds(check.get("interval", "30s"))
        budget = _seconds(check.get("start_period", "0s")) + interval * int(check.get("retries", 3))
        deadline = time.monotonic() + budget
        while not service.healthy():
            if service.process is not None and service.process.poll() is not None:
                raise ServiceFailed(f"exited with code {service.process.returncode} before it was healthy")
            if time.monotonic() > deadline or self.failed:
                raise ServiceFailed(f"its health check did not pass in {budget:.0f}s")
            time.sleep(min(interval, 2.0))

    def _postgres(self, service: Service) -> None:
        """PostgreSQL of this machine on compose's port, the superuser's password from .env; then the init
        script, as the postgres image's entrypoint runs /docker-entrypoint-initdb.d/*.sh on an empty data
        volume (an executable one: run, with the service's environment and the entrypoint's, psql reaching the
        server); then the service's health check."""
        from tests.postgres import postgres_server

        env = {name: str(value) for name, value in service.spec["environment"].items()}
        service.root.mkdir(parents=True)
        # Compose's port, where tests/postgres.py takes a free one: the last `port` the server is given wins.
        self._postgres_server.enter_context(
            postgres_server(service.root, password=env["POSTGRES_PASSWORD"], settings=("port=5432",)))
        script = next(volume.split(":")[0] for volume in service.spec["volumes"]
                      if ":/docker-entrypoint-initdb.d/" in volume)
        entrypoint = {"POSTGRES_USER": "postgres", "PGPASSWORD": env["POSTGRES_PASSWORD"],
                      "PGHOST": "127.0.0.1", "PGPORT": "5432"}
        service.env = {**env, **entrypoint, "PATH": os.environ["PATH"], "LANG": "C.UTF-8"}
        done = subprocess.run([str((ROOT / script).resolve())], env=service.env, capture_output=True,
                              text=True, timeout=60, check=False)
        if done.returncode != 0:
            raise ServiceFailed(f"{script} exited with code {done.returncode}: {done.stdout}{done.stderr}")
        self._wait_healthy(service)


# --- the test ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Stack]:
    for tool in ("unshare", "nsenter", "initdb", "pg_ctl", "psql", "pg_isready", "curl", "wget"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not on PATH: the stack's commands and checks need it")
    busy = {name: taken for name, ports in COMPOSE_PORTS.items() if (taken := [p for p in ports if port_busy(p)])}
    if busy:
        pytest.fail(f"compose's ports are taken on this machine ({busy}): stop what listens there "
                    "(a demo stack: `python -m tools.stack down`) and run again")
    values = env_values()
    # Ray's sockets live under each node's /tmp: their paths must stay short (~107 bytes).
    root = Path(tempfile.mkdtemp(prefix="cmp-", dir="/tmp"))
    with ExitStack() as stopped_at_exit:
        stopped_at_exit.callback(shutil.rmtree, root, ignore_errors=True)
        stack = Stack(load_compose(values), values, root, tmp_path_factory.mktemp("compose-logs"))
        stopped_at_exit.callback(stack.down)
        stack.up(UP_TIMEOUT)
        yield stack


def _published(stack: Stack, service: str, port: int) -> str:
    """Where the user reaches a service's port: its published address and port (the same port here)."""
    for mapping in stack.compose["services"][service]["ports"]:
        address, published, target = mapping.rsplit(":", 2)
        if int(target) == port:
            assert int(published) == port, f"{service}: one host cannot publish {port} as {published}"
            return f"http://{address}:{published}"
    raise AssertionError(f"{service} does not publish {port}")


def _json(url: str, *, token: str | None = None, body: dict | None = None):
    request = urllib.request.Request(url, data=None if body is None else json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json",
                                              **({"Authorization": f"Bearer {token}"} if token else {})})
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.load(answer)


@pytest.fixture(scope="module")
def watched_run(stack) -> dict:
    """The sample PDFs dropped into the inbox once the stack is up and the DAG parsed, nothing triggered: the
    run the triggerer's watcher starts, followed through Airflow's REST API as the admin of .env."""
    import boto3

    from tools.sample_pdfs import write_samples

    api = _published(stack, "airflow-apiserver", 8080)
    admin = {"username": "admin", "password": stack.values["AIRFLOW_ADMIN_PASSWORD"]}
    token = _json(f"{api}/auth/token", body=admin)["access_token"]
    deadline = time.monotonic() + 180
    while True:  # parsed: the triggerer runs the DAG's inbox watcher
        try:
            _json(f"{api}/api/v2/dags/{DAG_ID}", token=token)
            break
        except urllib.error.HTTPError as error:
            assert error.code == 404 and time.monotonic() < deadline, f"{DAG_ID} never appeared: {error}"
            time.sleep(1)
    scheduler = stack.services["airflow-scheduler"]
    s3 = boto3.client("s3", endpoint_url=_published(stack, "s3", 8333), region_name="us-east-1",
                      aws_access_key_id=stack.values["S3_ACCESS_KEY"],
                      aws_secret_access_key=stack.values["S3_SECRET_KEY"])
    bucket, _, prefix = scheduler.env["PIPELINE_INBOX_URI"].removeprefix("s3://").partition("/")
    samples = write_samples(scheduler.root / "samples")
    for path in samples:
        s3.upload_file(str(path), bucket, f"{prefix}{path.name}")
    dropped = time.monotonic()
    while True:
        runs = _json(f"{api}/api/v2/dags/{DAG_ID}/dagRuns", token=token)["dag_runs"]
        watched = [run for run in runs if run["run_type"] == "asset_triggered"]
        if watched and watched[0]["state"] in ("success", "failed"):
            break
        assert time.monotonic() < dropped + RUN_TIMEOUT, f"no run ended {RUN_TIMEOUT}s after the drop: {runs}"
        time.sleep(2)
    run = watched[0]
    print(f"compose stack: the watcher's run ended {run['state']} {time.monotonic() - dropped:.0f}s after "
          "the drop", flush=True)
    tasks = _json(f"{api}/api/v2/dags/{DAG_ID}/dagRuns/{run['dag_run_id']}/taskInstances?limit=200",
                  token=token)["task_instances"]
    states = {(task["task_id"], task["map_index"]): task["state"] for task in tasks}
    assert run["state"] == "success", (states, "".join(s.tail(60) for s in stack.services.values()))
    assert [run["run_type"] for run in runs] == ["asset_triggered"], runs
    return {"run": run, "samples": [path.name for path in samples]}


def _table_rows(text: str) -> list[dict[str, str]]:
    """The rows of a table the ledger's CLI prints (a header, a rule of dashes per column, the rows)."""
    header, rule, *lines = text.splitlines()
    starts = [match.start() for match in re.finditer(r"-+", rule)]
    ends = [*starts[1:], None]
    names = [header[start:end].strip() for start, end in zip(starts, ends, strict=True)]
    return [{name: line[start:end].strip() for name, start, end in zip(names, starts, ends, strict=True)}
            for line in lines if line]


def test_the_watchers_run_ingests_every_dropped_pdf_into_the_ledger_and_the_chroma_server(stack, watched_run):
    import chromadb

    from include.control.ledger.schema import Status
    from include.control.ledger.store import Ledger, sqlalchemy_url

    scheduler = stack.services["airflow-scheduler"]
    inbox = scheduler.env["PIPELINE_INBOX_URI"]
    # The ledger's CLI as `docker compose exec airflow-scheduler python -m include.control.ledger documents`.
    listing = subprocess.run(["python", "-m", "include.control.ledger", "documents"], env=scheduler.env,
                             cwd=scheduler.paths["/opt/airflow"], capture_output=True, text=True, timeout=120,
                             check=False)
    assert listing.returncode == 0, listing.stderr
    rows = {row["key"]: row for row in _table_rows(listing.stdout)}
    assert set(rows) == set(watched_run["samples"]), listing.stdout
    assert all(row["status"] == "ingested" and int(row["vectors"]) for row in rows.values()), listing.stdout
    # The same rows through the URL of the pipeline_ledger connection the Airflow side is given.
    entries = Ledger(sqlalchemy_url(scheduler.env["AIRFLOW_CONN_PIPELINE_LEDGER"])).entries(under=inbox)
    assert {uri.removeprefix(inbox) for uri in entries} == set(watched_run["samples"])
    assert {entry.status for entry in entries.values()} == {Status.INGESTED}, entries
    assert {entry.last_run_id for entry in entries.values()} == {watched_run["run"]["dag_run_id"]}
    # Each document's vectors, all of them, in the Chroma server.
    host, port = _published(stack, "chroma", 8000).removeprefix("http://").split(":")
    client = chromadb.HttpClient(host=host, port=int(port),
                                 settings=chromadb.config.Settings(anonymized_telemetry=False))
    collection = client.get_collection("documents")
    for uri, entry in entries.items():
        stored = collection.get(where={"doc_id": entry.indexed_doc_id or entry.doc_id}, include=[])["ids"]
        assert entry.vectors and len(stored) == entry.vectors, (uri, entry.vectors, len(stored))


def test_the_stage_jobs_ran_on_the_ray_worker_node_with_the_airflow_sides_settings(stack, watched_run):
    """The head offers no CPU and not the worker resource: every job's driver and every actor of the run's
    jobs was placed on the ray-worker node. The jobs read the settings the Airflow side sent with them."""
    from include.settings import is_job_setting

    ray, token = _published(stack, "ray-head", 8265), stack.values["RAY_AUTH_TOKEN"]
    nodes = _json(f"{ray}/api/v0/nodes?limit=100&detail=1", token=token)["data"]["result"]["result"]
    alive = [node for node in nodes if node["state"] == "ALIVE"]
    assert len(alive) == 2, alive
    [head] = [node for node in alive if node["is_head_node"]]
    [worker] = [node for node in alive if not node["is_head_node"]]
    assert head["resources_total"].get("CPU", 0) == 0 and "pipeline_worker" not in head["resources_total"]
    assert worker["resources_total"]["pipeline_worker"] == 1000 and worker["resources_total"]["CPU"] >= 1
    run_id = watched_run["run"]["dag_run_id"]
    jobs = [job for job in _json(f"{ray}/api/jobs/", token=token)
            if (job["metadata"] or {}).get("run_id") == run_id]
    assert STAGES <= {job["entrypoint"].split()[3] for job in jobs}, [job["entrypoint"] for job in jobs]
    assert {job["status"] for job in jobs} == {"SUCCEEDED"}, [
        (job["submission_id"], job["status"], job["message"]) for job in jobs if job["status"] != "SUCCEEDED"]
    assert {job["driver_node_id"] for job in jobs} == {worker["node_id"]}, jobs
    settings = {name: value for name, value in stack.services["airflow-scheduler"].env.items()
                if is_job_setting(name)}
    for job in jobs:  # and the operator's own: the job's id and where it writes its result
        sent = job["runtime_env"]["env_vars"]
        assert {name: value for name, value in sent.items() if name.startswith("PIPELINE_")} == settings, sent
        assert set(sent) - set(settings) <= {"JOB_SUBMISSION_ID", "JOB_RESULT_URI"}, sent
    job_ids = {job["job_id"] for job in jobs}
    actors = [actor for actor in _json(f"{ray}/api/v0/actors?limit=10000&detail=1", token=token)["data"]
              ["result"]["result"] if actor["job_id"] in job_ids]
    placed = {actor["node_id"] for actor in actors if actor.get("node_id")}
    assert actors and placed == {worker["node_id"]}, actors

"""The embedded local stack: a real SeaweedFS S3 server, a real Chroma server, a real Ray
head, Airflow's DB.

    python -m tools.stack up       # start what is not running, health-check all, upgrade the ledger
    python -m tools.stack status
    python -m tools.stack down     # stop by PID (``down s3``: only the S3 server)
    python -m tools.stack env      # print the environment as shell exports

Each server runs as a child process in its own session; its PID is kept in
``<work_dir>/pids``. ``up`` is idempotent: a healthy server is left alone. A port
taken by something else stops ``up`` with a message naming the port and the
setting that moves it. Everything lives under ``PIPELINE_WORK_DIR`` (default
``.work/``): S3 data, Chroma's data, Ray's temp dir, Airflow's home and database.
The stages reach Chroma over HTTP (``PIPELINE_CHROMA_URL``), as every worker of a
cluster would, never through its data folder.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from include.backends.secrets import PSEUDONYM_KEY
from include.settings import PROJECT_ROOT, LocalStackSettings, PipelineSettings, is_job_setting

BIN = Path(sys.executable).parent
# Ray puts Unix sockets under its temp dir; their paths must stay under ~107 bytes.
_MAX_RAY_TEMP_LEN = 40


class StackError(RuntimeError):
    pass


@dataclass(frozen=True)
class Service:
    name: str
    ports: dict[int, str]  # port -> the setting that moves it

    def pid_file(self, work: Path) -> Path:
        return work / "pids" / f"{self.name}.pid"

    def log_file(self, work: Path) -> Path:
        return work / "logs" / f"{self.name}.log"


def _settings() -> tuple[PipelineSettings, LocalStackSettings]:
    return PipelineSettings(), LocalStackSettings()


def s3_ports(stack: LocalStackSettings) -> dict[str, int]:
    base = stack.s3_port
    return {"s3": base, "master": base + 1, "volume": base + 2, "filer": base + 3,
            "iceberg": base + 4, "lance": base + 5, "admin": base + 6}


def ray_ports(stack: LocalStackSettings) -> dict[str, int]:
    """Every fixed port of the Ray head, so two stacks (demo and tests) can run side by side."""
    base = stack.ray_dashboard_port
    return {"dashboard": base, "ray-client-server": base + 1, "dashboard-agent-listen": base + 2,
            "metrics-export": base + 3, "dashboard-agent-grpc": base + 4, "runtime-env-agent": base + 5}


def ray_node_ports(stack: LocalStackSettings, number: int) -> dict[str, int]:
    """The fixed ports of worker node ``number`` (from 1): four after the head's, then four more per node."""
    base = stack.ray_dashboard_port + 6 + 4 * (number - 1)
    return {"dashboard-agent-listen": base, "metrics-export": base + 1, "dashboard-agent-grpc": base + 2,
            "runtime-env-agent": base + 3}


def ray_node_names(stack: LocalStackSettings) -> list[str]:
    return [f"ray-node-{number}" for number in range(1, stack.ray_worker_nodes + 1)]


def services(stack: LocalStackSettings) -> list[Service]:
    s3 = {port: "STACK_S3_PORT" for port in s3_ports(stack).values()}
    s3.update({port + 10000: "STACK_S3_PORT" for port in list(s3) if port != stack.s3_port})
    nodes = [Service(name, {port: "STACK_RAY_DASHBOARD_PORT" for port in ray_node_ports(stack, number).values()})
             for number, name in enumerate(ray_node_names(stack), 1)]
    return [
        Service("s3", s3),
        Service("chroma", {stack.chroma_port: "STACK_CHROMA_PORT"}),
        Service("ray", {**{port: "STACK_RAY_DASHBOARD_PORT" for port in ray_ports(stack).values()},
                        stack.ray_gcs_port: "STACK_RAY_GCS_PORT"}),
        *nodes,  # after the head, which they join
    ]


def ray_auth_token(work: Path) -> Path:
    """The local cluster's token file (``RAY_AUTH_MODE=token``): the one ``RAY_AUTH_TOKEN_PATH`` names if
    it exists (a token of the user's own), else one made once per work dir, readable only by its
    owner. Every node and client of the stack reads it; Airflow sends it as the ``ray_default``
    connection's password."""
    given = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if given and Path(given).is_file():
        return Path(given)
    return _secret_file(work, "ray_auth_token")


def _secret_file(work: Path, name: str) -> Path:
    """A random secret made once per work dir, readable only by its owner."""
    path = work / "secrets" / name
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(secrets.token_hex(32))
    return path


def ray_temp_dir(work: Path, name: str = "ray") -> Path:
    candidate = work / name
    if len(str(candidate)) <= _MAX_RAY_TEMP_LEN:
        return candidate
    digest = hashlib.sha256(str(work).encode()).hexdigest()[:8]
    return Path(tempfile.gettempdir()) / f"{name}-{digest}"


def stack_env() -> dict[str, str]:
    """The variables every process of the local stack (and the tests) runs with."""
    pipeline, stack = _settings()
    work = pipeline.work_dir.resolve()
    endpoint = f"http://127.0.0.1:{stack.s3_port}"
    aws_conn = {
        "conn_type": "aws",
        "login": stack.access_key,
        "password": stack.secret_key,
        "extra": {"endpoint_url": endpoint, "region_name": pipeline.aws_region},
    }
    token_path = ray_auth_token(work)
    ray_conn = {"conn_type": "ray", "host": "127.0.0.1", "port": stack.ray_dashboard_port, "schema": "http",
                "password": token_path.read_text()}
    env = {
        "PYTHONPATH": os.pathsep.join([str(PROJECT_ROOT), str(PROJECT_ROOT / "plugins")]),
        # Ray jobs run `python -m include.stages`: the project's interpreter must come first.
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "PIPELINE_WORK_DIR": str(work),
        "PIPELINE_S3_ENDPOINT_URL": endpoint,
        "PIPELINE_CHROMA_URL": f"http://127.0.0.1:{stack.chroma_port}",
        "PIPELINE_INBOX_URI": f"s3://{stack.bucket}/inbox/",
        "PIPELINE_ARTIFACTS_URI": f"s3://{stack.bucket}/artifacts/",
        "AWS_ACCESS_KEY_ID": stack.access_key,
        "AWS_SECRET_ACCESS_KEY": stack.secret_key,
        "AWS_DEFAULT_REGION": pipeline.aws_region,
        "AIRFLOW_HOME": str(work / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT_ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "AIRFLOW_CONN_AWS_DEFAULT": json.dumps(aws_conn),
        "AIRFLOW_CONN_RAY_DEFAULT": json.dumps(ray_conn),
        # Token auth: the Job API runs code for whoever reaches it, so only the token's holders may.
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token_path),
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_ADDRESS": f"http://127.0.0.1:{stack.ray_dashboard_port}",
        # No network: models load from site-packages, tldextract uses its bundled list.
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS": "",
        "TLDEXTRACT_CACHE": str(work / "cache" / "tldextract"),
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "ANONYMIZED_TELEMETRY": "False",  # Chroma server and clients
    }
    # Anything the user set explicitly wins over the defaults above.
    return {**env, **{k: v for k, v in os.environ.items() if k.startswith("PIPELINE_")}}


def server_env() -> dict[str, str]:
    """What the stack's servers start with: the Ray nodes (and so every job's workers) get the jobs'
    settings, never the Airflow side's own (the ledger's URL and its password), as on a cluster of
    its own."""
    every = {**os.environ, **stack_env()}
    servers = {k: v for k, v in every.items() if not k.startswith("PIPELINE_") or is_job_setting(k)}
    # The workers' own secret (names that carry PII are stored under a pseudonym it keys): the
    # user's, else one made once per work dir. The Airflow side never gets it.
    servers.setdefault(PSEUDONYM_KEY, _secret_file(_settings()[0].work_dir.resolve(), "source_pseudonym_key").read_text())
    return servers


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_pid(service: Service, work: Path) -> int | None:
    path = service.pid_file(work)
    if not path.exists():
        return None
    pid = int(path.read_text().strip() or 0)
    return pid if pid and _pid_alive(pid) else None


def port_busy(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def _ray_request(stack: LocalStackSettings, path: str) -> urllib.request.Request:
    """A request to the head's dashboard, with the cluster's token."""
    token = ray_auth_token(PipelineSettings().work_dir.resolve()).read_text()
    return urllib.request.Request(f"http://127.0.0.1:{stack.ray_dashboard_port}{path}",
                                  headers={"Authorization": f"Bearer {token}"})


def _http_ok(url: str | urllib.request.Request) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status < 500
    except Exception:
        return False


def healthy(name: str, stack: LocalStackSettings) -> bool:
    if name == "s3":
        # Any HTTP answer from the S3 API (even 403 without credentials) means it serves.
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{stack.s3_port}/", timeout=2)
        except urllib.error.HTTPError:
            return True
        except Exception:
            return False
        return True
    if name == "chroma":
        return _http_ok(f"http://127.0.0.1:{stack.chroma_port}/api/v2/heartbeat")
    if name == "ray":
        return _http_ok(_ray_request(stack, "/api/jobs/"))
    return name in alive_ray_nodes(stack)


def alive_ray_nodes(stack: LocalStackSettings) -> set[str]:
    """Names of the nodes the head counts alive (its state API)."""
    try:
        with urllib.request.urlopen(_ray_request(stack, "/api/v0/nodes?limit=100"), timeout=5) as answer:
            nodes = json.load(answer)["data"]["result"]["result"]
    except Exception:
        return set()
    return {node.get("node_name") for node in nodes if node.get("state") == "ALIVE"}


def _command(name: str, pipeline: PipelineSettings, stack: LocalStackSettings) -> list[str]:
    work = pipeline.work_dir.resolve()
    if name in ray_node_names(stack):
        return _ray_node_command(name, pipeline, stack)
    if name == "s3":
        ports = s3_ports(stack)
        return [
            str(BIN / "weed"), "mini", f"-dir={work / 's3'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-s3.port={ports['s3']}", f"-master.port={ports['master']}",
            f"-volume.port={ports['volume']}", f"-filer.port={ports['filer']}",
            f"-s3.port.iceberg={ports['iceberg']}", f"-s3.port.lance={ports['lance']}",
            f"-admin.port={ports['admin']}", "-webdav=false", "-admin.ui=false",
            f"-bucket={stack.bucket}",
        ]
    if name == "chroma":
        return [str(BIN / "chroma"), "run", "--path", str(work / "chroma"),
                "--host", "127.0.0.1", "--port", str(stack.chroma_port)]
    return [
        str(BIN / "ray"), "start", "--head", "--block",
        "--node-ip-address=127.0.0.1", f"--port={stack.ray_gcs_port}", "--dashboard-host=127.0.0.1",
        *(f"--{name}-port={port}" for name, port in ray_ports(stack).items()),
        # Worker ports away from Ray's default 10002-19999, where SeaweedFS's gRPC ports sit.
        "--min-worker-port=21000", "--max-worker-port=22999",
        f"--num-cpus={stack.ray_num_cpus}", f"--temp-dir={ray_temp_dir(work)}",
        "--include-dashboard=true", "--disable-usage-stats",
    ]


def _ray_node_command(name: str, pipeline: PipelineSettings, stack: LocalStackSettings) -> list[str]:
    """A worker node joining the head: its own temp dir and ports, and the resource the heavy work asks for."""
    work, number = pipeline.work_dir.resolve(), ray_node_names(stack).index(name) + 1
    resources = {pipeline.ray_worker_resource: 1000} if pipeline.ray_worker_resource else {}
    first_worker_port = 23000 + 500 * (number - 1)
    return [
        str(BIN / "ray"), "start", f"--address=127.0.0.1:{stack.ray_gcs_port}", "--block",
        "--node-ip-address=127.0.0.1", f"--node-name={name}",
        *(f"--{port_name}-port={port}" for port_name, port in ray_node_ports(stack, number).items()),
        f"--min-worker-port={first_worker_port}", f"--max-worker-port={first_worker_port + 499}",
        f"--num-cpus={stack.ray_num_cpus}", f"--temp-dir={ray_temp_dir(work, name)}",
        f"--resources={json.dumps(resources)}", "--disable-usage-stats",
    ]


def _start(service: Service, pipeline: PipelineSettings, stack: LocalStackSettings, timeout: float) -> None:
    work = pipeline.work_dir.resolve()
    for port, setting in sorted(service.ports.items()):
        if port_busy(port):
            raise StackError(
                f"{service.name}: port {port} on 127.0.0.1 is already in use by another program. "
                f"Stop it, or move this server with {setting}=<free port>."
            )
    for folder in ("pids", "logs", "s3", "chroma", "cache/tldextract"):
        (work / folder).mkdir(parents=True, exist_ok=True)
    is_node = service.name in ray_node_names(stack)
    ray_temp_dir(work, service.name if is_node else "ray").mkdir(parents=True, exist_ok=True)
    # A worker node works in a folder of its own, as it would on its own machine.
    cwd = work / service.name if is_node else work
    cwd.mkdir(exist_ok=True)
    log = service.log_file(work).open("ab")
    process = subprocess.Popen(
        _command(service.name, pipeline, stack),
        cwd=cwd,
        env=server_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: stopped as one
    )
    service.pid_file(work).write_text(str(process.pid))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise StackError(
                f"{service.name} exited with code {process.returncode} while starting; "
                f"see {service.log_file(work)}"
            )
        if healthy(service.name, stack):
            print(f"{service.name}: started (pid {process.pid})", flush=True)
            return
        time.sleep(0.5)
    raise StackError(f"{service.name} did not become healthy in {timeout:.0f}s; see {service.log_file(work)}")


def up(timeout: float = 90.0) -> None:
    pipeline, stack = _settings()
    work = pipeline.work_dir.resolve()
    for service in services(stack):
        pid = _read_pid(service, work)
        if pid and healthy(service.name, stack):
            print(f"{service.name}: already running (pid {pid})", flush=True)
            continue
        if pid:  # alive but not answering: give it a moment, else restart it
            time.sleep(3)
            if healthy(service.name, stack):
                print(f"{service.name}: already running (pid {pid})", flush=True)
                continue
            _stop(service, work)
        _start(service, pipeline, stack, timeout)
    upgrade_ledger()


def upgrade_ledger() -> None:
    """The ledger's schema to this code's revision: the deploy step tasks expect done."""
    from include.control.ledger.store import Ledger, default_url
    from include.control.settings import ControlSettings

    ledger = Ledger(default_url(ControlSettings()))
    print(f"ledger: {ledger.location} at revision {ledger.upgrade()}", flush=True)


def stop_session(process: subprocess.Popen, grace: float = 60.0) -> None:
    """Stop a process started in a session of its own (``start_new_session``) and all of its group:
    SIGTERM, up to ``grace`` seconds for it to end, then SIGKILL to whatever of the group is left. A
    child may outlive its leader: ``airflow standalone``'s triggerer, stopping its triggers, went on
    watching the inbox of the next stack a bench started on the same ports."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def _stop(service: Service, work: Path, grace: float = 20.0) -> None:
    pid = _read_pid(service, work)
    if pid is None:
        service.pid_file(work).unlink(missing_ok=True)
        return
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and _pid_alive(pid):
        time.sleep(0.3)
    try:
        os.killpg(pid, signal.SIGKILL)  # whatever of the group is left
    except ProcessLookupError:
        pass
    service.pid_file(work).unlink(missing_ok=True)
    print(f"{service.name}: stopped (pid {pid})", flush=True)


def down(names: list[str] | None = None) -> None:
    """Stop every service, or only those named (``down s3`` takes the S3 server away)."""
    pipeline, stack = _settings()
    work = pipeline.work_dir.resolve()
    if names and "ray" in names:
        names = [*names, *ray_node_names(stack)]  # nodes without their head are of no use
    for service in reversed(services(stack)):
        if not names or service.name in names:
            _stop(service, work)
    ray_stopped = not names or "ray" in names
    if ray_stopped and (still_busy := [p for p in (stack.ray_gcs_port, stack.ray_dashboard_port) if port_busy(p)]):
        print(f"warning: ports {still_busy} still busy after stopping Ray", flush=True)


def status() -> bool:
    pipeline, stack = _settings()
    work = pipeline.work_dir.resolve()
    all_ok = True
    for service in services(stack):
        pid = _read_pid(service, work)
        ok = bool(pid) and healthy(service.name, stack)
        all_ok &= ok
        print(f"{service.name}: {'healthy' if ok else 'running, not answering' if pid else 'stopped'}"
              + (f" (pid {pid})" if pid else ""))
    return all_ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.stack")
    parser.add_argument("command", choices=["up", "down", "status", "env"])
    parser.add_argument("services", nargs="*",
                        help="down: only these of s3, chroma, ray, ray-node-<n> (default: all)")
    args = parser.parse_args(argv)
    names = [service.name for service in services(LocalStackSettings())]
    if unknown := set(args.services) - set(names):
        parser.error(f"unknown services {sorted(unknown)}: choose from {', '.join(names)}")
    try:
        if args.command == "up":
            up()
        elif args.command == "down":
            down(args.services)
        elif args.command == "status":
            return 0 if status() else 1
        else:
            for key, value in sorted(stack_env().items()):
                print(f"export {key}={json.dumps(value)}")
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

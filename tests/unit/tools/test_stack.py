"""The launcher's own checks, without starting anything."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from tools import stack


@pytest.fixture
def busy_port():
    """A port on 127.0.0.1 that another program holds."""
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        yield blocker.getsockname()[1]


def test_a_busy_port_stops_up_with_the_port_and_the_setting_that_moves_it(monkeypatch, tmp_path, busy_port):
    port = busy_port
    monkeypatch.setenv("PIPELINE_WORK_DIR", str(tmp_path / "work"))
    monkeypatch.setenv("STACK_S3_PORT", str(port))
    with pytest.raises(stack.StackError, match=rf"port {port} .*STACK_S3_PORT=<free port>"):
        stack.up(timeout=5)
    assert not (tmp_path / "work" / "pids" / "s3.pid").exists()


def test_chroma_starts_between_s3_and_ray_and_its_busy_port_names_stack_chroma_port(monkeypatch, tmp_path, busy_port):
    port = busy_port
    monkeypatch.setenv("PIPELINE_WORK_DIR", str(tmp_path / "work"))
    monkeypatch.setenv("STACK_CHROMA_PORT", str(port))
    pipeline, settings = stack._settings()
    by_name = {service.name: service for service in stack.services(settings)}
    assert list(by_name) == ["s3", "chroma", "ray"]  # `down` stops them in reverse
    assert by_name["chroma"].ports == {port: "STACK_CHROMA_PORT"}
    # Straight to chroma's start: going through `up` would first start a real SeaweedFS.
    with pytest.raises(stack.StackError, match=rf"chroma: port {port} .*STACK_CHROMA_PORT=<free port>"):
        stack._start(by_name["chroma"], pipeline, settings, timeout=5)
    assert not (tmp_path / "work" / "pids" / "chroma.pid").exists()


def test_ray_temp_dir_is_in_the_work_dir_unless_unix_socket_paths_would_get_too_long(tmp_path):
    from pathlib import Path

    assert stack.ray_temp_dir(Path("/srv/app/.work")) == Path("/srv/app/.work/ray")
    deep = tmp_path / ("x" * 80)
    assert stack.ray_temp_dir(deep) == stack.ray_temp_dir(deep)  # stable across calls
    assert len(str(stack.ray_temp_dir(deep))) <= 40


def test_the_stack_environment_points_every_client_at_the_local_servers(monkeypatch, tmp_path):
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH")  # no token of the user's own: the stack makes one
    monkeypatch.setenv("PIPELINE_WORK_DIR", str(tmp_path))
    monkeypatch.setenv("STACK_S3_PORT", "28444")
    monkeypatch.setenv("STACK_CHROMA_PORT", "28001")
    env = stack.stack_env()
    assert env["PIPELINE_S3_ENDPOINT_URL"] == "http://127.0.0.1:28444"
    assert env["PIPELINE_CHROMA_URL"] == "http://127.0.0.1:28001"
    assert env["ANONYMIZED_TELEMETRY"] == "False"
    assert '"endpoint_url": "http://127.0.0.1:28444"' in env["AIRFLOW_CONN_AWS_DEFAULT"]
    assert env["RAY_AUTH_MODE"] == "token"
    token = Path(env["RAY_AUTH_TOKEN_PATH"])
    assert token.is_relative_to(tmp_path) and token.stat().st_mode & 0o777 == 0o600
    assert json.loads(env["AIRFLOW_CONN_RAY_DEFAULT"])["password"] == token.read_text()
    assert stack.stack_env()["RAY_AUTH_TOKEN_PATH"] == str(token)  # made once, then kept
    assert env["AIRFLOW_HOME"].startswith(str(tmp_path))


def test_a_token_of_the_users_own_is_the_stacks(monkeypatch, tmp_path):
    mine = tmp_path / "my-token"
    mine.write_text("a-token-the-team-shares")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(mine))
    monkeypatch.setenv("PIPELINE_WORK_DIR", str(tmp_path / "work"))
    env = stack.stack_env()
    assert env["RAY_AUTH_TOKEN_PATH"] == str(mine)
    assert json.loads(env["AIRFLOW_CONN_RAY_DEFAULT"])["password"] == "a-token-the-team-shares"

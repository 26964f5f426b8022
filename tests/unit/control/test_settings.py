"""Settings split by tier: a Ray job gets the settings jobs read (``PipelineSettings``), never the
Airflow side's own (``ControlSettings``: the ledger's URL and its password, the sensors, the schedules)."""

from __future__ import annotations

from include.control.ingest import runtime_env
from include.control.ledger.store import default_url
from include.control.settings import ControlSettings
from include.settings import PipelineSettings

LEDGER_URL = "postgresql+pg8000://pipeline:s3cret-ledger-pw@db:5432/ledger"


def test_a_job_gets_the_settings_it_reads_and_not_the_ledger_url_or_its_password(monkeypatch):
    monkeypatch.setenv("PIPELINE_LEDGER_URL", LEDGER_URL)
    monkeypatch.setenv("PIPELINE_SENSOR_POKE_SECONDS", "7")
    monkeypatch.setenv("PIPELINE_EMBED_BATCH_SIZE", "8")
    monkeypatch.setenv("PIPELINE_EMBED_POOL__MAX_ACTORS", "3")
    env_vars = runtime_env()["env_vars"]
    assert env_vars["PIPELINE_EMBED_BATCH_SIZE"] == "8" and env_vars["PIPELINE_EMBED_POOL__MAX_ACTORS"] == "3"
    assert "PIPELINE_LEDGER_URL" not in env_vars and "PIPELINE_SENSOR_POKE_SECONDS" not in env_vars
    assert "s3cret-ledger-pw" not in repr(runtime_env())


def test_a_job_is_sent_every_setting_it_reads_and_none_of_the_airflow_sides(monkeypatch):
    """Derived from the two classes, not kept by hand: a new setting goes where its class says."""
    for name in ControlSettings.model_fields:
        monkeypatch.setenv(f"PIPELINE_{name.upper()}", "planted")
    sent = {name.removeprefix("PIPELINE_").lower() for name in runtime_env()["env_vars"]}
    airflow_only = set(ControlSettings.model_fields) - set(PipelineSettings.model_fields)
    assert sent == set(PipelineSettings.model_fields) and "ledger_url" in airflow_only


def test_the_ledger_url_is_secret_in_the_settings_yet_reaches_the_ledger(monkeypatch):
    monkeypatch.setenv("PIPELINE_LEDGER_URL", LEDGER_URL)
    settings = ControlSettings()
    assert "s3cret-ledger-pw" not in repr(settings) and "s3cret-ledger-pw" not in str(settings.model_dump())
    assert default_url(settings) == LEDGER_URL


def test_the_jobs_settings_know_nothing_of_the_airflow_sides(monkeypatch):
    monkeypatch.setenv("PIPELINE_LEDGER_URL", LEDGER_URL)
    assert not hasattr(PipelineSettings(), "ledger_url")
    assert ControlSettings().work_dir == PipelineSettings().work_dir  # one environment, read by both


def test_inside_airflow_the_ledger_password_is_masked_wherever_airflow_logs_or_renders(monkeypatch):
    from airflow.sdk.log import redact

    monkeypatch.setenv("PIPELINE_LEDGER_URL", LEDGER_URL)
    default_url(ControlSettings())  # what opening the ledger in a task does
    shown = redact(f"could not reach the ledger (password s3cret-ledger-pw) at {LEDGER_URL}")
    assert "s3cret-ledger-pw" not in shown and "***" in shown

"""What of the Airflow worker's settings a Ray job gets: the settings jobs read, never the Airflow side's
own (the ledger's URL and its password, the sensors, the schedules)."""

from __future__ import annotations

from include.control.ingest import runtime_env
from include.control.ledger.store import default_url
from include.settings import AIRFLOW_ONLY_SETTINGS, PipelineSettings

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


def test_the_ledger_url_is_secret_in_the_settings_yet_reaches_the_ledger(monkeypatch):
    monkeypatch.setenv("PIPELINE_LEDGER_URL", LEDGER_URL)
    settings = PipelineSettings()
    assert "s3cret-ledger-pw" not in repr(settings) and "s3cret-ledger-pw" not in str(settings.model_dump())
    assert default_url(settings) == LEDGER_URL


def test_every_airflow_only_setting_is_a_setting():
    assert AIRFLOW_ONLY_SETTINGS <= set(PipelineSettings.model_fields)

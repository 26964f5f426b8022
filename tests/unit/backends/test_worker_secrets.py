"""Workers read their API keys from AWS Secrets Manager (a local fake, through the real boto3) when
their environment does not hold them; once per process, and never into a log."""

from __future__ import annotations

import json
import logging

import pytest

from include.backends import secrets
from include.backends.embedders import OpenAIEmbedder
from include.settings import PipelineSettings
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.secretsmanager_server import FakeSecretsManager

KEY = "sk-from-secrets-manager-31c8"


@pytest.fixture
def worker_without_keys(monkeypatch):
    for name in secrets.WORKER_SECRETS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")  # boto3 signs its requests; the fake does not check
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setattr(secrets, "_loaded", set())


def test_a_worker_without_keys_reads_them_once_from_the_named_secret(worker_without_keys, caplog):
    caplog.set_level(logging.DEBUG)
    with FakeSecretsManager({"pipeline/api-keys": json.dumps({"OPENAI_API_KEY": KEY})}) as manager, \
            FakeOpenAI(api_key=KEY) as api:
        settings = PipelineSettings(embedder="openai", openai_base_url=api.base_url,
                                    secrets_manager_secret="pipeline/api-keys",
                                    secrets_manager_endpoint_url=manager.endpoint_url)
        for _ in range(2):
            assert OpenAIEmbedder(settings).embed(["dose"]).vectors.shape == (1, 1536)
        assert manager.reads["pipeline/api-keys"] == 1 and api.count("embeddings", status=200) == 2
    assert KEY not in caplog.text


def test_a_missing_secret_is_a_clear_error(worker_without_keys):
    with FakeSecretsManager({}) as manager:
        settings = PipelineSettings(secrets_manager_secret="no/such/secret",
                                    secrets_manager_endpoint_url=manager.endpoint_url)
        with pytest.raises(Exception, match="ResourceNotFoundException"):
            secrets.load_worker_secrets(settings)

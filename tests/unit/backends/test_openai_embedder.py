"""The OpenAI embedder against a local fake of the API, through the real SDK: requests within the
API's limits, long texts embedded whole, retries counted, tokens and cost adding up."""

from __future__ import annotations

import numpy as np
import pytest

from include.backends.embedders import (
    MAX_INPUTS_PER_REQUEST,
    MAX_TOKENS_PER_REQUEST,
    OpenAIEmbedder,
    embedder_info,
    request_bounds,
)
from include.settings import PipelineSettings
from tests.fakes.openai_server import FakeOpenAI, RateLimited, ServerError


@pytest.fixture
def fake(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    with FakeOpenAI() as fake:
        yield fake


def _settings(fake: FakeOpenAI, **options) -> PipelineSettings:
    return PipelineSettings(embedder="openai", openai_base_url=fake.base_url, **options)


def test_requests_are_cut_at_2048_inputs_and_300k_tokens():
    assert request_bounds([10] * 5000) == [(0, 2048), (2048, 4096), (4096, 5000)]
    assert request_bounds([8000] * 80) == [(0, 37), (37, 74), (74, 80)]
    for start, stop in request_bounds([7000, 1, 8192] * 200):
        assert stop - start <= MAX_INPUTS_PER_REQUEST
        assert sum(([7000, 1, 8192] * 200)[start:stop]) <= MAX_TOKENS_PER_REQUEST


def test_a_large_part_goes_out_in_requests_the_api_accepts_and_costs_its_tokens(fake):
    texts = [f"Chunk {n}: metformin dosing, week {n % 4}, visit at the clinic." for n in range(3000)]
    batch = OpenAIEmbedder(_settings(fake)).embed(texts)
    assert batch.vectors.shape == (3000, 1536)
    assert np.allclose(np.linalg.norm(batch.vectors, axis=1), 1.0, atol=1e-5)
    assert fake.count("embeddings", status=200) == 2 and fake.count("embeddings", status=400) == 0
    prompt_tokens, _ = fake.tokens("embeddings")
    assert batch.usage.requests == 2 and batch.usage.prompt_tokens == prompt_tokens == sum(batch.tokens)
    assert batch.usage.cost_usd == pytest.approx(prompt_tokens * 0.02 / 1e6)


def test_a_text_longer_than_the_model_reads_is_embedded_whole_in_windows(fake):
    long_text = "Lactic acidosis is rare but serious. " * 1500  # ~10,000 tokens
    batch = OpenAIEmbedder(_settings(fake)).embed([long_text, "Shipments leave on Mondays."])
    assert batch.windows == [2, 1] and batch.tokens[0] > 8192
    assert fake.count("embeddings", status=400) == 0


def test_rate_limits_and_server_errors_are_retried_by_the_sdk_and_counted(fake):
    fake.script("embeddings", [RateLimited(retry_after=0.05), ServerError(503)])
    batch = OpenAIEmbedder(_settings(fake)).embed(["What is the dose?"])
    assert batch.usage.retries == 2 and batch.usage.requests == 1
    assert fake.count("embeddings", status=429) == fake.count("embeddings", status=503) == 1


def test_shorter_vectors_by_setting_and_the_store_records_which_model_made_them(fake):
    settings = _settings(fake, embed_dimensions=256)
    embedder = OpenAIEmbedder(settings)
    assert embedder.dimension == 256 and embedder.embed(["dose"]).vectors.shape == (1, 256)
    assert embedder_info(settings, embedder.dimension).name == "openai:text-embedding-3-small"

"""The OpenAI enricher against a local fake of the API, through the real SDK: a strict JSON-schema
reply, the local safety net after it, a bad reply asked again then handed to the local enricher,
retries counted, tokens and cost adding up, order kept under concurrency."""

from __future__ import annotations

import pytest

from include.backends.enrichers import OpenAIEnricher
from include.pii_shapes import find_pii
from include.settings import PipelineSettings
from tests.fakes.openai_server import FakeOpenAI, Malformed, NotRedacting, RateLimited, Reply

PII_TEXT = "Questions go to dr.alvarez@example.com or (212) 555-0142; the first record lists SSN 219-09-9999."


@pytest.fixture
def fake(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture
def enricher(fake):
    return OpenAIEnricher(PipelineSettings(enricher="openai", openai_base_url=fake.base_url))


def test_one_call_per_chunk_with_a_strict_schema_and_its_tokens_and_cost(fake, enricher):
    result = enricher.enrich_many([PII_TEXT])[0]
    assert find_pii(result.text) == [] and "[REDACTED:EMAIL]" in result.text
    request = fake.requests[-1]
    assert request.body["model"] == "gpt-4o-mini"
    assert request.body["response_format"]["json_schema"]["strict"] is True
    prompt, completion = fake.tokens("chat")
    assert (result.usage.requests, result.usage.prompt_tokens, result.usage.completion_tokens) == (1, prompt, completion)
    assert result.usage.cost_usd == pytest.approx((prompt * 0.15 + completion * 0.60) / 1e6)
    assert not result.fallback


def test_pii_the_model_leaves_in_is_caught_by_the_safety_net_and_counted(fake, enricher):
    fake.script("chat", [NotRedacting()])
    result = enricher.enrich_many([PII_TEXT])[0]
    assert find_pii(result.text) == []
    assert result.redactions["SAFETY_NET"] == 3 and {"EMAIL", "PHONE", "SSN"} <= set(result.redactions)
    assert not any(find_pii(item) for item in result.key_phrases + sum(result.entities.values(), []))


def test_a_reply_that_breaks_the_schema_is_asked_again_and_no_chunk_is_lost(fake, enricher):
    fake.script("chat", [Reply('{"redacted_text": "half an answer"}')])
    result = enricher.enrich_many([PII_TEXT])[0]
    assert result.usage.requests == 2 and not result.fallback and find_pii(result.text) == []


def test_two_bad_replies_hand_the_chunk_to_the_local_enricher_counted(fake, enricher, monkeypatch):
    monkeypatch.setenv("TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS", "")
    fake.script("chat", [Reply("{}"), Malformed()])
    result = enricher.enrich_many([PII_TEXT])[0]
    assert result.fallback and result.usage.requests == 2
    assert find_pii(result.text) == [] and result.redactions["SSN"] == 1


def test_rate_limits_are_retried_by_the_sdk_and_counted(fake, enricher):
    fake.script("chat", [RateLimited(retry_after=0.05)])
    result = enricher.enrich_many([PII_TEXT])[0]
    assert result.usage.retries == 1 and fake.count("chat", status=429) == 1


def test_concurrent_calls_keep_each_result_with_its_chunk(fake, enricher):
    texts = [f"Chunk {n} mentions visit {n} at the Northwind clinic." for n in range(24)]
    results = enricher.enrich_many(texts)
    assert [r.text for r in results] == texts and fake.count("chat", status=200) == 24

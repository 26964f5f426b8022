"""The cloud backends together, as the DAG's tasks run them (in this process): the OpenAI enricher
and embedder and Pinecone, against local fakes of both services through the real SDKs. The run
report's cost must add up to the tokens the fake API counted, and no PII may reach Pinecone."""

from __future__ import annotations

import pytest

from include.control.settings import get_control_settings, reload_settings
from include.pii_shapes import find_pii
from include.storage import Storage, join_uri
from tests.fakes.openai_server import FakeOpenAI, NotRedacting
from tests.fakes.pinecone_server import FakePinecone
from tests.helpers import ingest_like_the_dag


@pytest.fixture
def cloud(pipeline_env, monkeypatch, sample_pdfs):
    with FakeOpenAI() as openai_fake, FakePinecone() as pinecone_fake:
        for name, value in {"PIPELINE_ENRICHER": "openai", "PIPELINE_EMBEDDER": "openai",
                            "PIPELINE_VECTOR_STORE": "pinecone", "PIPELINE_OPENAI_BASE_URL": openai_fake.base_url,
                            "PIPELINE_PINECONE_HOST": pinecone_fake.control_host,
                            "OPENAI_API_KEY": "test-key", "PINECONE_API_KEY": "test-key"}.items():
            monkeypatch.setenv(name, value)
        reload_settings()
        settings = get_control_settings()
        storage = Storage(settings)
        for name, path in sample_pdfs.items():
            storage.write_bytes(join_uri(settings.inbox_uri, name), path.read_bytes())
        yield settings, openai_fake, pinecone_fake
    reload_settings()


def test_a_run_on_the_cloud_backends_reports_what_it_cost_and_stores_no_pii(cloud):
    settings, openai_fake, pinecone_fake = cloud
    openai_fake.script("chat", [NotRedacting()] * 100)  # the model "forgets" to redact: the safety net must not
    summary = ingest_like_the_dag("cloud-run-1")
    assert summary["succeeded"] == 3 and summary["failed"] == []

    chat_in, chat_out = openai_fake.tokens("chat")
    embed_in, _ = openai_fake.tokens("embeddings")
    spent = summary["cost"]
    assert spent["cost_usd"] == pytest.approx((chat_in * 0.15 + chat_out * 0.60 + embed_in * 0.02) / 1e6, abs=1e-5)
    assert spent["requests"] == openai_fake.count("chat", status=200) + openai_fake.count("embeddings", status=200)
    assert spent["per_document_usd"] == pytest.approx(spent["cost_usd"] / 3, abs=1e-6)
    assert spent["per_1000_pages_usd"] == pytest.approx(spent["cost_usd"] * 1000 / 4, abs=1e-3)
    # The samples' emails and phones, and the protocol's SSN: all left in by the model, all caught.
    assert summary["stages"]["enrich"]["redactions_safety_net"] == 5
    report = Storage(settings).read_text(summary["report_uri"].removesuffix(".json") + ".md")
    assert f"Cost: ${spent['cost_usd']:.4f}" in report

    stored = pinecone_fake.vectors("documents")
    assert len(stored) == summary["stages"]["load"]["vectors"]
    for _values, metadata in stored.values():
        assert not find_pii(metadata["text"]) and not find_pii(metadata["heading"]), metadata


def test_a_run_that_reuses_enriched_and_embedded_chunks_spends_nothing(cloud, monkeypatch):
    _settings, openai_fake, pinecone_fake = cloud
    ingest_like_the_dag("cloud-run-2")
    requests = openai_fake.count("chat") + openai_fake.count("embeddings")
    # Another namespace: every document is stale for the load stage only; the paid stages reuse.
    monkeypatch.setenv("PIPELINE_PINECONE_NAMESPACE", "v2")
    reload_settings()
    again = ingest_like_the_dag("cloud-run-3")
    assert again["counts"]["stale"] == 3 and again["succeeded"] == 3
    assert again["cost"]["cost_usd"] == 0.0 and again["cost"]["requests"] == 0
    assert openai_fake.count("chat") + openai_fake.count("embeddings") == requests
    assert len(pinecone_fake.vectors("documents", "v2")) == again["stages"]["load"]["vectors"]


def test_retrieval_over_pinecone_finds_the_passage_that_answers(cloud):
    from include.retrieval import search

    settings, _openai_fake, _pinecone_fake = cloud
    ingest_like_the_dag("cloud-run-4")
    best = search("What is the maximum daily dose of metformin in the trial?", settings)
    assert best and best[0].source_uri.endswith("metformin_trial_protocol.pdf") and best[0].page_start == 2


def test_a_run_past_its_budget_postpones_the_rest_without_failing_or_charging_an_attempt(cloud, monkeypatch):
    from include.control.ledger import Ledger, Status

    settings, openai_fake, _pinecone_fake = cloud
    monkeypatch.setenv("PIPELINE_MAX_USD_PER_RUN", "0.000001")  # less than one document's enrichment
    reload_settings()
    summary = ingest_like_the_dag("cloud-budget-1")
    # enrich got through its first document, then its share was spent: the other two wait at enrich,
    # and the first at embed, which had nothing left.
    assert summary["failed"] == [] and summary["succeeded"] == 0
    assert summary["counts"]["postponed"] == 3 and len(summary["postponed"]) == 3
    stopped_at = sorted(row["stage"] for row in summary["touched"])
    assert stopped_at == ["embed", "enrich", "enrich"]
    assert summary["cost"]["by_stage_usd"].keys() == {"enrich"} and openai_fake.count("embeddings") == 0
    report = Storage(settings).read_text(summary["report_uri"].removesuffix(".json") + ".md")
    assert "## Postponed: the budget for paid calls is spent" in report
    entries = Ledger.open(get_control_settings()).entries()
    assert {entry.status for entry in entries.values()} == {Status.POSTPONED}
    assert {entry.attempts for entry in entries.values()} == {0}

    monkeypatch.setenv("PIPELINE_MAX_USD_PER_RUN", "null")  # no limit
    reload_settings()
    again = ingest_like_the_dag("cloud-budget-2")
    assert again["succeeded"] == 3 and again["counts"]["retried"] == 3 and again["postponed"] == []
    assert again["stages"]["enrich"]["reused"] == 1  # the document enriched before cost nothing again

from __future__ import annotations

import pytest

from include.backends.enrichers import LocalEnricher
from include.settings import PipelineSettings
from include.storage import Storage
from tests.helpers import drop, run_until


@pytest.fixture(scope="module")
def enricher() -> LocalEnricher:
    return LocalEnricher(PipelineSettings())


def test_pii_is_replaced_by_typed_markers(enricher):
    text = (
        "Write to jane.roe@example.org or call (646) 555-0187. "
        "Her SSN is 219-09-9999 and the card on file is 4111 1111 1111 1111."
    )
    result = enricher.enrich(text)
    for secret in ("jane.roe@example.org", "555-0187", "219-09-9999", "4111 1111 1111 1111"):
        assert secret not in result.text
    for marker in ("[REDACTED:EMAIL]", "[REDACTED:PHONE]", "[REDACTED:SSN]", "[REDACTED:CREDIT_CARD]"):
        assert marker in result.text
    assert result.redactions == {"EMAIL": 1, "PHONE": 1, "SSN": 1, "CREDIT_CARD": 1}


def test_ssn_shapes_presidio_calls_invalid_are_still_redacted(enricher):
    result = enricher.enrich("Test record with SSN 123-45-6789 on it.")
    assert "123-45-6789" not in result.text and result.redactions == {"SSN": 1}


def test_entities_and_key_phrases_come_from_the_redacted_text(enricher):
    result = enricher.enrich(
        "The trial is sponsored by Pfizer Inc. and run at the Mayo Clinic. "
        "Dr. Maria Alvarez prescribed metformin and aspirin. "
        "Contact maria.alvarez@example.com about the metformin dosing schedule."
    )
    assert "Maria Alvarez" in result.entities["people"]
    assert {"Pfizer Inc.", "the Mayo Clinic"} <= set(result.entities["organizations"])
    assert {"Metformin", "Aspirin"} <= set(result.entities["medications"])
    assert result.key_phrases and all("REDACTED" not in p.upper() for p in result.key_phrases)
    assert all("@" not in name for names in result.entities.values() for name in names)


def test_enrich_stage_counts_redactions_and_stores_only_redacted_text(settings, sample_pdfs, samples_by_name):
    sample = samples_by_name["metformin_trial_protocol.pdf"]
    doc = drop(settings, sample_pdfs[sample.filename])
    manifests = run_until(settings, doc, "enrich")
    metrics = manifests["enrich"].metrics
    assert metrics["redactions_email"] == metrics["redactions_phone"] == metrics["redactions_ssn"] == 1
    stored = Storage(settings).read_text(manifests["enrich"].outputs["chunks"])
    for secret in sample.pii.values():
        assert secret not in stored

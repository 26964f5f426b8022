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


@pytest.mark.parametrize(
    "text",
    [
        "| Study coordinator | Lukas Farouk | l.farouk@site-7.example.net | +33 1 99 00 55 13 | 14:15 |",
        "Unblinding line, 24/7: +44 20 7946 0911 3. Radiology scheduling: 0044 20 7946 0958",
        "The fax header read +49 30 4884108 2025-12-11 14:00 and page 1 carried (212) 555-0142 x12.",
        "| Subject | SSN | Consented |\n| --- | --- | --- |\n| 931-4746 | 725964264 | April 28, 2026 |",
        "Payment line copied from the ledger: 423-3111 123 45 6789 4111 4708 2276 5445 USD 133.00",
    ],
)
def test_pii_in_tables_abroad_and_beside_other_numbers_is_redacted(enricher, text):
    from include.audit import find_shapes

    redacted = enricher.enrich(text).text
    assert list(find_shapes(redacted)) == []
    for secret in ("55 13", "7946 0911", "7946 0958", "4884108", "555-0142", "725964264", "6789", "5445"):
        assert secret not in redacted


def test_numbers_that_are_not_pii_survive(enricher):
    text = ("Subject 163-3123 visited on 2026-03-14 at 08:30 (Week 24, Day 169); accession 9202955359, "
            "sample S-20260314-0042, kit 0012345678, lot L2025-7941C, NCT05430680, ZIP 10027-1234, "
            "2000 mg/day, +4 °C, HbA1c 7.2%, BP 120/80 mmHg, EUR 132.00, Page 3 of 7, v2.1.")
    result = enricher.enrich(text)
    assert result.text == text and result.redactions == {}


def test_the_safety_net_redacts_what_is_left_and_counts_it():
    from include.backends.enrichers import redact_shapes

    text, counts = redact_shapes("Reach me at +44 (0)20 7946 0958 or x@example.org.")
    assert text == "Reach me at [REDACTED:PHONE] or [REDACTED:EMAIL]."
    assert counts == {"PHONE": 1, "EMAIL": 1, "SAFETY_NET": 2}


def test_names_are_kept_as_entities_unless_people_are_redacted_too():
    text = "Dr. Maria Alvarez prescribed metformin to the participant."
    kept = LocalEnricher(PipelineSettings()).enrich(text)
    assert "Maria Alvarez" in kept.text and kept.entities["people"] == ["Maria Alvarez"]
    redacted = LocalEnricher(PipelineSettings(redact_people=True)).enrich(text)
    assert "Alvarez" not in redacted.text and "[REDACTED:PERSON]" in redacted.text
    assert redacted.entities["people"] == [] and redacted.redactions.get("PERSON") == 1


def test_a_heading_with_pii_is_redacted_before_it_travels_as_metadata(settings, tmp_path):
    from tools.sample_pdfs import SamplePdf, Section, render_pdf

    body = "Call the hotline for any question about the visit schedule or the dosing of the study."
    sample = SamplePdf(filename="hotline.pdf", title="Hotline +44 20 7946 0958",
                       pages=((Section("Contacts", (body, body)),),))
    path = render_pdf(sample, tmp_path / sample.filename)
    manifests = run_until(settings, drop(settings, path), "enrich")
    rows = Storage(settings).read_jsonl(manifests["enrich"].outputs["chunks"])
    assert rows and all("7946" not in row["text"] for row in rows)
    # The title heads every chunk's heading path: redacted there, and in the path the embedder reads.
    assert [row["headings"] for row in rows] == [["Hotline [REDACTED:PHONE]", "Contacts"]] * len(rows)
    assert [row["heading"] for row in rows] == ["Hotline [REDACTED:PHONE] > Contacts"] * len(rows)

"""The leak audit finds labelled values however they are spaced or wrapped, finds PII by shape,
and does not cry wolf at the numbers clinical documents are full of."""

from __future__ import annotations

import pytest

from include.audit import Leak, TruthMatcher, audit, find_shapes, mask
from include.pii_shapes import luhn_valid

TRUTH = [
    {"kind": "PHONE", "value": "+44 (0)20 7946 0958"},
    {"kind": "PHONE", "value": "212-555-0142 ext. 12"},
    {"kind": "SSN", "value": "219-09-9999"},
    {"kind": "CREDIT_CARD", "value": "4111 1111 1111 1111"},
    {"kind": "EMAIL", "value": "J.Doe+trial@Sub.Example.org"},
]


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("call 212-555-\n0142 today", "PHONE"),  # hyphenated at a line end
        ("| 212.555.0142 |", "PHONE"),
        ("subscriber 7946 0958 only", "PHONE"),  # the country and area code redacted, the number not
        ("ssn 219 09 9999", "SSN"),
        ("card 4111-1111-1111-1111", "CREDIT_CARD"),
        ("mail j.doe+trial@sub.example.ORG", "EMAIL"),
    ],
)
def test_labelled_values_are_found_whatever_their_spacing(text, kind):
    assert kind in {found for found, _ in TruthMatcher(TRUTH).find(text)}


def test_labelled_values_are_not_found_where_they_are_not():
    assert list(TruthMatcher(TRUTH).find("[REDACTED:PHONE] and [REDACTED:EMAIL], visit on 2026-03-14")) == []


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("write to a.b@example.com", "EMAIL"),
        ("SSN 078-05-1120", "SSN"),
        ("card 3782 822463 10005", "CREDIT_CARD"),
        ("hotline (212) 555-0142", "PHONE"),
        ("UK office +44 20 7946 0958", "PHONE"),
        ("from abroad 0044 20 7946 0958", "PHONE"),
        ("Berlin +49 30 1234567", "PHONE"),
    ],
)
def test_pii_is_found_by_its_shape(text, kind):
    assert kind in {found for found, _ in find_shapes(text)}


@pytest.mark.parametrize(
    "text",
    ["Visit on 2026-03-14 at 08:30", "Dose 2000 mg/day, 0.5 mL", "Protocol MET-204, NCT01234567",
     "Sample S-20260314-0042, lot 7731", "Page 3 of 7", "HbA1c 7.2% at week 24, version v2.1"],
)
def test_numbers_that_are_not_pii_are_not_reported(text):
    assert list(find_shapes(text)) == []


def test_the_audit_reports_each_leak_where_it_was_found_and_masked():
    texts = [("s3://a/enriched/d/chunks.jsonl#0", "text", "call +44 20 7946 0958"),
             ("store/d#1", "heading", "Contacts"), ("store/d#1", "text", "[REDACTED:PHONE]")]
    leaks, read = audit(texts, TruthMatcher(TRUTH))
    assert read == 3
    assert {(leak.kind, leak.where, leak.field) for leak in leaks} == {("PHONE", "s3://a/enriched/d/chunks.jsonl#0", "text")}
    assert all("7946" not in leak.found for leak in leaks)


def test_helpers():
    assert luhn_valid("4111111111111111") and not luhn_valid("4111111111111112")
    assert mask("212-555-0142") == "21********42"
    assert Leak("SSN", "x", "text", "**").line().startswith("SSN")

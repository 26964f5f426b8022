"""Each stage's quality suite against crafted outputs: every expectation fails on the bad output it
is there for, named with what was observed, and clean outputs pass every suite."""

from __future__ import annotations

import json
import math

import pytest

from include.quality.expectations import failures, validate, validate_together
from include.quality.suites import RETRIEVED_METADATA, chunk_checks, embed_checks, enrich_checks, load_checks
from include.settings import PipelineSettings, QualitySettings

SETTINGS = PipelineSettings(quality=QualitySettings(max_chunks_per_page=3))
NO_ENTITIES = {"people": [], "organizations": [], "medications": []}


def _failed(checks) -> list[str]:
    result = validate(checks)
    assert result["success"] == (not failures(result))
    json.dumps(result)  # kept as JSON for the Data Docs
    return failures(result)


def _chunks(count: int = 3) -> list[dict]:
    return [{"chunk_id": f"doc#{n}", "text": f"Passage {n} about dosing.", "tokens": 12, "page_start": 1,
             "page_end": 2} for n in range(count)]


def test_clean_chunks_pass():
    assert _failed(chunk_checks(_chunks(), doc_id="doc", token_limit=254, pages=2, settings=SETTINGS)) == []


@pytest.mark.parametrize(("change", "expected"), [
    ({"tokens": 301}, "expect_column_values_to_be_between(column=tokens, min_value=1.0, max_value=254.0): "
                      "1 of 3 unexpected (doc#1: tokens=301)"),
    ({"chunk_id": "doc#0"}, "expect_column_values_to_be_unique(column=chunk_id): 2 of 3 unexpected (doc#0, doc#0)"),
    ({"text": " \n "}, "expect_column_values_to_be_between(column=text_characters, min_value=1.0): "
                       "1 of 3 unexpected (doc#1: text_characters=0)"),
    ({"page_end": 7}, "expect_column_values_to_be_null(column=page_span_problem): 1 of 3 unexpected "
                      "(doc#1: page_span_problem=ends at page 7 of 2)"),
    ({"page_start": 0}, "expect_column_values_to_be_null(column=page_span_problem): 1 of 3 unexpected "
                        "(doc#1: page_span_problem=starts at page 0)"),
    ({"page_start": 2, "page_end": 1}, "expect_column_values_to_be_null(column=page_span_problem): 1 of 3 "
                                       "unexpected (doc#1: page_span_problem=ends at page 1, before it starts)"),
])
def test_a_bad_chunk_fails_the_chunk_suite_named_with_what_was_observed(change, expected):
    rows = _chunks()
    rows[1].update(change)
    [failure] = _failed(chunk_checks(rows, doc_id="doc", token_limit=254, pages=2, settings=SETTINGS))
    assert failure.startswith(expected)


def test_a_document_shredded_into_more_chunks_per_page_than_the_bound_fails():
    rows = _chunks(7)  # 3 per page at most, over 2 pages
    [failure] = _failed(chunk_checks(rows, doc_id="doc", token_limit=254, pages=2, settings=SETTINGS))
    assert failure.startswith("expect_column_values_to_be_between(column=chunks_per_page, min_value=0.0, "
                              "max_value=3.0, strict_min=True): 7 of 7 unexpected (doc#0: chunks_per_page=3.5")
    # No chunk at all (nothing of it would be searchable): one row with none, failing the count alone.
    [failure] = _failed(chunk_checks([], doc_id="doc", token_limit=254, pages=2, settings=SETTINGS))
    assert failure == "expect_column_values_to_be_between(column=chunks_per_page, min_value=0.0, max_value=3.0, " \
                      "strict_min=True): 1 of 1 unexpected (chunks_per_page=0)"


def test_documents_validated_together_are_each_judged_by_their_own_rows_in_one_validation():
    """A job's documents are one frame, one GX validation: each document's result is its own rows'."""
    bad, long = ([dict(row, chunk_id=f"{doc}#{n}") for n, row in enumerate(_chunks(count))]
                 for doc, count in (("bad", 4), ("long", 5)))
    bad[2]["tokens"] = 301
    documents = [("doc", chunk_checks(_chunks(), doc_id="doc", token_limit=254, pages=2, settings=SETTINGS)),
                 ("bad", chunk_checks(bad, doc_id="bad", token_limit=254, pages=2, settings=SETTINGS)),
                 ("empty", chunk_checks([], doc_id="empty", token_limit=254, pages=1, settings=SETTINGS)),
                 ("long", chunk_checks(long, doc_id="long", token_limit=254, pages=2, settings=SETTINGS))]
    validated = []

    def counted(checks):
        validated.append(checks.rows)
        return validate(checks)

    clean, spoiled, empty, longer = validate_together(documents, counted)
    assert validated == [3 + 4 + 1 + 5]
    assert failures(clean) == failures(longer) == [] and clean["success"] and longer["success"]
    assert failures(spoiled) == ["expect_column_values_to_be_between(column=tokens, min_value=1.0, "
                                 "max_value=254.0): 1 of 4 unexpected (bad#2: tokens=301)"]
    assert failures(empty) == ["expect_column_values_to_be_between(column=chunks_per_page, min_value=0.0, "
                               "max_value=3.0, strict_min=True): 1 of 1 unexpected (chunks_per_page=0)"]
    assert [clean["statistics"]["successful_expectations"], spoiled["statistics"]["unsuccessful_expectations"],
            spoiled["meta"]["documents_validated_together"]] == [5, 1, 4]
    json.dumps([clean, spoiled, empty, longer])  # kept as JSON for the Data Docs


def _enriched() -> list[dict]:
    return [{"chunk_id": f"doc#{n}", "text": f"Call the [REDACTED:PHONE] desk about dose {n} of 500 mg.",
             "heading": "Contacts", "entities": dict(NO_ENTITIES, medications=["metformin"]),
             "key_phrases": ["dose", "desk"]} for n in range(3)]


def test_clean_enriched_chunks_pass():
    assert _failed(enrich_checks(_enriched(), doc_id="doc", settings=SETTINGS)) == []


@pytest.mark.parametrize(("field", "value", "kind"), [
    ("text", "Call the desk at 212-555-0142 about it.", "PHONE"),
    ("text", "Write to jane.doe@example.org.", "EMAIL"),
    ("heading", "Subject SSN 536-22-8471", "SSN"),
    ("key_phrases", ["card 4111 1111 1111 1111"], "CREDIT_CARD"),
])
def test_a_pii_shape_left_anywhere_downstream_fails_the_enrich_suite_naming_its_kind_not_its_value(
        field, value, kind):
    rows = _enriched()
    rows[2][field] = value
    [failure] = _failed(enrich_checks(rows, doc_id="doc", settings=SETTINGS))
    assert failure == f"expect_column_values_to_be_null(column=pii_shape_left): 1 of 3 unexpected " \
                      f"(doc#2: pii_shape_left={kind})"


def test_malformed_entities_or_key_phrases_fail_the_enrich_suite():
    rows = _enriched()
    rows[0]["entities"] = {"people": [""], "organizations": [], "medications": []}
    rows[1]["key_phrases"] = ["a"] * (SETTINGS.key_phrases_per_chunk + 1)
    failed = _failed(enrich_checks(rows, doc_id="doc", settings=SETTINGS))
    assert failed == [
        "expect_column_values_to_be_null(column=entities_not_matching_schema): 1 of 3 unexpected "
        "(doc#0: entities_not_matching_schema=people/0: '' should be non-empty)",
        "expect_column_values_to_be_null(column=key_phrases_not_matching_schema): 1 of 3 unexpected "
        f"(doc#1: key_phrases_not_matching_schema=value: {['a'] * 9} is too long)",
    ]


def _unit(*values: float) -> list[float]:
    length = math.sqrt(sum(v * v for v in values))
    return [v / length for v in values]


def _embedded() -> list[dict]:
    return [{"chunk_id": "doc#0", "text": "a", "vector": _unit(1, 2, 3)},
            {"chunk_id": "doc#1", "text": "b", "vector": _unit(3, 2, 1)},
            # The same text again gives the same vector: not a collision.
            {"chunk_id": "doc#2", "text": "a", "vector": _unit(1, 2, 3)}]


def test_clean_vectors_pass_and_a_repeated_text_with_its_vector_is_no_collision():
    assert _failed(embed_checks(_embedded(), doc_id="doc", dimension=3, settings=SETTINGS)) == []


def test_two_documents_of_the_same_text_validated_together_are_no_collision():
    """Two copies of a form, redacted alike, embed alike: within a document the check still holds."""
    copies = [(doc, embed_checks([dict(row, chunk_id=f"{doc}#{n}") for n, row in enumerate(_embedded())],
                                 doc_id=doc, dimension=3, settings=SETTINGS)) for doc in ("w9-a", "w9-b")]
    assert [failures(result) for result in validate_together(copies)] == [[], []]
    digests = copies[1][1].columns["vector_digest"]
    digests[1] = digests[0]
    assert [len(failures(result)) for result in validate_together(copies)] == [0, 1]


@pytest.mark.parametrize(("vector", "expected"), [
    ([math.nan, 0.0, 1.0], "expect_column_values_to_be_between(column=non_finite_values, max_value=0.0): "
                           "1 of 3 unexpected (doc#1: non_finite_values=1)"),
    ([0.0, 0.0, 0.0], "expect_column_values_to_be_between(column=norm, min_value=0.999, max_value=1.001): "
                      "1 of 3 unexpected (doc#1: norm=0)"),
    (_unit(1, 1), "expect_column_values_to_be_between(column=dimension, min_value=3.0, max_value=3.0): "
                  "1 of 3 unexpected (doc#1: dimension=2)"),
    (_unit(1, 2, 3), "expect_column_values_to_be_unique(column=vector_digest): 2 of 3 unexpected"),
])
def test_a_bad_vector_fails_the_embed_suite(vector, expected):
    rows = _embedded()
    rows[1]["vector"] = vector
    [failure] = _failed(embed_checks(rows, doc_id="doc", dimension=3, settings=SETTINGS))
    assert failure.startswith(expected)


def _stored(ids: list[str]) -> dict[str, dict]:
    return {i: {"doc_id": "doc", "source_uri": "s3://documents/inbox/a.pdf#x", "document": "a.pdf",
                "page_start": 1, "page_end": 1, "text": "passage"} for i in ids}


def test_a_store_holding_exactly_what_was_written_passes():
    assert _failed(load_checks(_stored(["doc#0", "doc#1"]), written={"doc#0", "doc#1"}, doc_id="doc")) == []


def test_a_store_missing_a_vector_or_holding_one_too_many_fails_the_load_suite():
    [missing] = _failed(load_checks(_stored(["doc#0"]), written={"doc#0", "doc#1"}, doc_id="doc"))
    assert missing == "expect_column_values_to_be_null(column=record_problem): 1 of 2 unexpected " \
                      "(doc#1: record_problem=not in the store)"
    [extra] = _failed(load_checks(_stored(["doc#0", "doc#7"]), written={"doc#0"}, doc_id="doc"))
    assert extra == "expect_column_values_to_be_null(column=record_problem): 1 of 2 unexpected " \
                    "(doc#7: record_problem=in the store, not written by this load)"


@pytest.mark.parametrize("name", RETRIEVED_METADATA)
def test_a_stored_vector_without_the_metadata_the_retriever_reads_fails_the_load_suite(name):
    stored = _stored(["doc#0", "doc#1"])
    del stored["doc#1"][name]
    [failure] = _failed(load_checks(stored, written={"doc#0", "doc#1"}, doc_id="doc"))
    assert failure == f"expect_column_values_to_be_null(column=record_problem): 1 of 2 unexpected " \
                      f"(doc#1: record_problem=no {name})"


def test_a_stored_vector_of_another_document_with_no_text_or_pages_backwards_fails_the_load_suite():
    stored = _stored(["doc#0"])
    stored["doc#0"].update(doc_id="other", text=" ", page_start=3, page_end=2)
    [failure] = _failed(load_checks(stored, written={"doc#0"}, doc_id="doc"))
    assert failure.endswith("(doc#0: record_problem=no text, doc_id other, pages 3-2)")


def test_building_a_gates_checks_imports_no_gx():
    """A stage job builds its checks and has the warm validator run them: GX (about 3 s to import)
    stays out of the job's process."""
    import subprocess
    import sys

    code = ("import sys, include.quality.suites, include.quality.gates, include.stages.warm; "
            "print('great_expectations' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"

"""Great Expectations as the pipeline runs it, and how a failed validation reads.

One ephemeral context per process: no project folder to deploy, no analytics call home (this
runs where there may be no network), no progress bar in the job logs. A suite is built in code for
each document, over columns of that document's rows, each row naming its document: what bounds
a row depends on its document (its pages) is a column, so the documents a stage job finishes
about the same time are validated together, in one frame (``validate_together``): a validation costs GX
about 8 ms plus 4 to 15 ms per expectation whatever its rows, more than a two-page document's
chunking. Each document's part of the result (``for_document``) is what decides its fate and is
kept as GX's JSON, which the Data Docs are rendered from.

A suite names its expectations (``expect``) without importing GX, which takes about 3 s: the
process that builds the checks need not be the one that validates them (a stage job sends them to
its warm validator, ``include.stages.warm``, which has GX loaded).
"""

from __future__ import annotations

import gc
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache, cached_property
from typing import Any

# Rows are named by their chunk id in a result, so an error says which chunk failed, and by their
# document, so a validation of many documents' rows says whose they are.
ID_COLUMN = "chunk_id"
DOC_COLUMN = "doc_id"
# Values shown per failed expectation, in a result and an error message.
SHOWN_VALUES = 5


@dataclass(frozen=True)
class Expectation:
    """One of GX's expectations, by its class name in ``great_expectations.expectations``, and its
    arguments."""

    kind: str
    arguments: dict[str, Any]


def expect(kind: str, **arguments: Any) -> Expectation:
    return Expectation(kind, arguments)


@dataclass(frozen=True)
class Checks:
    """What one suite reads of one document (or of several, ``validate_together``): columns of safe
    values, one per row (numbers, ids, the kinds of a PII shape found: never a chunk's text, so a
    result can show unexpected values), and what they must hold. They are kept as lists: the
    documents validated together make one DataFrame, not one each (about 0.3 ms a frame)."""

    suite: str
    columns: dict[str, list[Any]]
    expectations: list[Expectation]

    @property
    def rows(self) -> int:
        return len(next(iter(self.columns.values()), []))

    @cached_property
    def frame(self) -> Any:
        """The columns as the pandas DataFrame GX validates."""
        import pandas as pd

        return pd.DataFrame(self.columns)


@cache
def context() -> Any:
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    config = DataContextConfig(store_backend_defaults=InMemoryStoreBackendDefaults(), analytics_enabled=False,
                               progress_bars=ProgressBarsConfig(globally=False))
    made = gx.get_context(mode="ephemeral", project_config=config)
    # GX's imports leave millions of long-lived objects, which every full collection walks again:
    # one took 180 to 300 ms in the middle of a validation of 20 to 40 ms. Frozen, they are not walked.
    gc.collect()
    gc.freeze()
    return made


@cache
def _source() -> Any:
    return context().data_sources.add_pandas("pipeline")


@cache
def _batch_definition(suite: str) -> Any:
    """A whole-DataFrame batch definition per suite: the frame is handed over at each validation."""
    return _source().add_dataframe_asset(suite).add_batch_definition_whole_dataframe("document")


def validate(checks: Checks) -> dict[str, Any]:
    """The frame validated against the expectations: GX's result, as JSON. When one fails, every
    unexpected row is listed, by its chunk and its document, so each document's part can be told
    (``for_document``). A passed validation has nothing unexpected to list, so it is validated for
    success alone first: GX's counts and lists of unexpected rows are about half its time."""
    import great_expectations as gx
    import great_expectations.expectations as gxe

    suite = gx.ExpectationSuite(name=checks.suite, expectations=[
        getattr(gxe, expectation.kind)(**expectation.arguments) for expectation in checks.expectations])
    batch = _batch_definition(checks.suite).get_batch(batch_parameters={"dataframe": checks.frame})
    result = batch.validate(suite, result_format="BOOLEAN_ONLY")
    if result.success:
        return result.to_json_dict()
    result_format: dict[str, Any] = {"result_format": "COMPLETE", "return_unexpected_index_query": False}
    if index := [name for name in (ID_COLUMN, DOC_COLUMN) if name in checks.columns]:
        result_format["unexpected_index_column_names"] = index
    return batch.validate(suite, result_format=result_format).to_json_dict()


def validate_together(documents: list[tuple[str, Checks]],
                      validate_with: Callable[[Checks], dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Each document's result (``for_document``), in order, of as few validations as there are
    different suites and expectations among ``documents`` (doc_id, its checks): a stage's documents
    share them (what bounds a row by its document is a column), so they are one frame, one
    validation. ``validate_with`` validates elsewhere (a warm validator); by default, here."""
    groups: dict[str, list[int]] = {}
    for n, (_doc_id, checks) in enumerate(documents):
        groups.setdefault(f"{checks.suite}{checks.expectations!r}", []).append(n)
    results: list[dict[str, Any]] = [{}] * len(documents)
    for members in groups.values():
        first = documents[members[0]][1]
        columns = {name: [value for n in members for value in documents[n][1].columns[name]]
                   for name in first.columns}
        result = (validate_with or validate)(Checks(first.suite, columns, first.expectations))
        for n in members:
            doc_id, checks = documents[n]
            results[n] = for_document(result, doc_id, checks.rows, len(members))
    return results


def for_document(result: dict[str, Any], doc_id: str, rows: int, documents: int) -> dict[str, Any]:
    """One document's part of a validation of many documents' rows (``rows`` of them its own), as
    GX reports a validation in its SUMMARY form: each expectation fails for it only on its own rows
    (or when it could not be checked at all), counted against its rows."""
    results = [_document_item(item, doc_id, rows) for item in result["results"]]
    passed = sum(item["success"] for item in results)
    statistics = {"evaluated_expectations": len(results), "successful_expectations": passed,
                  "unsuccessful_expectations": len(results) - passed,
                  "success_percent": 100.0 * passed / len(results) if results else 100.0}
    meta = {**result.get("meta", {}), "documents_validated_together": documents}
    return {**result, "success": passed == len(results), "results": results, "statistics": statistics,
            "meta": meta}


def _document_item(item: dict[str, Any], doc_id: str, rows: int) -> dict[str, Any]:
    observed = item.get("result") or {}
    if "unexpected_index_list" not in observed:  # an exception, or an aggregate: the same for every document
        return item
    # GX lists the unexpected values and their rows in the same order.
    mine = [(row, value) for row, value in zip(observed["unexpected_index_list"], observed["unexpected_list"])
            if row.get(DOC_COLUMN) == doc_id]
    values = [value for _row, value in mine]
    counts = Counter(json.dumps(value, sort_keys=True, default=str) for value in values)
    summary = {
        "element_count": rows, "unexpected_count": len(mine),
        "unexpected_percent": 100.0 * len(mine) / rows if rows else 0.0,
        "unexpected_index_column_names": observed.get("unexpected_index_column_names"),
        "partial_unexpected_list": values[:SHOWN_VALUES],
        "partial_unexpected_index_list": [row for row, _value in mine[:SHOWN_VALUES]],
        "partial_unexpected_counts": [{"value": json.loads(value), "count": count}
                                      for value, count in counts.most_common(SHOWN_VALUES)],
    }
    return {**item, "success": not mine, "result": summary}


def failures(result: dict[str, Any]) -> list[str]:
    """Each failed expectation of a result, named with what was observed: what an error says."""
    return [_describe(item) for item in result["results"] if not item["success"]]


def _describe(item: dict[str, Any]) -> str:
    config, observed = item["expectation_config"], item.get("result") or {}
    name = f"{config['type']}({', '.join(_arguments(config['kwargs']))})"
    if item.get("exception_info", {}).get("raised_exception"):
        return f"{name}: could not be checked: {item['exception_info']['exception_message']}"
    if "observed_value" in observed:
        return f"{name}: observed {observed['observed_value']}"
    shown = [_row(entry) for entry in observed.get("partial_unexpected_index_list") or []]
    shown = shown or [repr(value) for value in observed.get("partial_unexpected_list") or []]
    return (f"{name}: {observed.get('unexpected_count', '?')} of {observed.get('element_count', '?')} unexpected"
            + (f" ({', '.join(shown[:SHOWN_VALUES])})" if shown else ""))


def _arguments(kwargs: dict[str, Any]) -> list[str]:
    """An expectation's arguments, short: a long one (a JSON schema) is elided, a row condition told as
    its filter."""
    shown = []
    for key, value in kwargs.items():
        if key in ("batch_id", "condition_parser", "ignore_row_if") or value is None:
            continue
        if key == "row_condition":
            shown.append(f"where {value.get('pass_through_filter', value) if isinstance(value, dict) else value}")
            continue
        text = str(value)
        shown.append(f"{key}={text if len(text) <= 60 else '…'}")
    return shown


def _row(entry: Any) -> str:
    """An unexpected row as GX lists it: the id column and the unexpected value."""
    if not isinstance(entry, dict):
        return str(entry)
    row_id = entry.get(ID_COLUMN)
    values = [f"{key}={_number(value)}" for key, value in entry.items() if key not in (ID_COLUMN, DOC_COLUMN)]
    if row_id is None or not values:  # the id is the unexpected value itself (a duplicate id)
        return ", ".join(values) or str(row_id)
    return f"{row_id}: {', '.join(values)}"


def _number(value: Any) -> Any:
    """A whole number as one: a column of counts with a missing value (a document with no chunk among
    those validated together) is floats to pandas."""
    return int(value) if isinstance(value, float) and value.is_integer() else value

"""Great Expectations as the pipeline runs it, and how a failed validation reads.

One ephemeral context per process: no project folder to deploy, no analytics call home (this
runs where there may be no network), no progress bar in the job logs. A suite is built in code for
each document (its bounds depend on the document: its pages, the embedder's window) and validated
against a DataFrame of that document's rows; the result is kept as GX's JSON, which the Data Docs
are rendered from.

A suite names its expectations (``expect``) without importing GX, which takes about 3 s: the
process that builds the checks need not be the one that validates them (a stage job sends them to
its warm validator, ``include.stages.warm``, which has GX loaded).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

# Rows are named by their chunk id in a result, so an error says which chunk failed.
ID_COLUMN = "chunk_id"
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
    """What one suite reads of one document: a frame of safe columns (numbers, ids, the kinds of
    a PII shape found: never a chunk's text, so a result can show unexpected values), and what the
    frame must hold."""

    suite: str
    frame: Any  # pandas.DataFrame
    expectations: list[Expectation]


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
    return gx.get_context(mode="ephemeral", project_config=config)


@cache
def _source() -> Any:
    return context().data_sources.add_pandas("pipeline")


@cache
def _batch_definition(suite: str) -> Any:
    """A whole-DataFrame batch definition per suite: the frame is handed over at each validation."""
    return _source().add_dataframe_asset(suite).add_batch_definition_whole_dataframe("document")


def validate(checks: Checks) -> dict[str, Any]:
    """The frame validated against the expectations: GX's result, as JSON."""
    import great_expectations as gx
    import great_expectations.expectations as gxe

    result_format: dict[str, Any] = {"result_format": "SUMMARY", "partial_unexpected_count": SHOWN_VALUES}
    if ID_COLUMN in checks.frame.columns:
        result_format["unexpected_index_column_names"] = [ID_COLUMN]
    suite = gx.ExpectationSuite(name=checks.suite, expectations=[
        getattr(gxe, expectation.kind)(**expectation.arguments) for expectation in checks.expectations])
    batch = _batch_definition(checks.suite).get_batch(batch_parameters={"dataframe": checks.frame})
    return batch.validate(suite, result_format=result_format).to_json_dict()


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
        if key in ("batch_id", "condition_parser") or value is None:
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
    values = [f"{key}={value}" for key, value in entry.items() if key != ID_COLUMN]
    if row_id is None or not values:  # the id is the unexpected value itself (a duplicate id)
        return ", ".join(values) or str(row_id)
    return f"{row_id}: {', '.join(values)}"

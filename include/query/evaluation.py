"""How good the answers are, on questions whose answer we know.

A question set is plain data (JSON lines, or columns of a questions Parquet): ``prompt``,
``expected_source`` (the document's file name), ``expected_page`` (a page that answers it)
and optionally ``expected_phrase`` (text a right answer contains). Retrieval is scored on
the rank of the first passage from that document whose page span holds that page:
hit@1, hit@5 and MRR (mean of 1/rank, 0 when no passage is right). Answers are scored
on the share that contain the expected phrase (case-insensitive).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa

from include.storage import object_name

QUESTION_SETS = Path(__file__).parent / "questions"
EXPECTED = ("expected_source", "expected_page")


def load_question_set(path: Path) -> pa.Table:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return pa.Table.from_pylist(rows)


def has_expectations(names: list[str]) -> bool:
    return all(name in names for name in EXPECTED)


def expected_rank(passages: list[dict[str, Any]], source: str, page: int) -> int:
    """1-based rank of the first passage from ``source`` covering ``page``; 0 when there is none."""
    for passage in passages:
        if object_name(passage["source_uri"]) == source and passage["page_start"] <= page <= passage["page_end"]:
            return int(passage["rank"])
    return 0


def contains_phrase(answer: str, phrase: str | None) -> bool | None:
    if not phrase:
        return None
    return phrase.casefold() in (answer or "").casefold()


def score_batch(table: pa.Table) -> pa.Table:
    """Add ``expected_rank`` (0: no right passage) and ``answer_has_phrase`` to a batch of answers
    with expectations."""
    phrases = (table.column("expected_phrase").to_pylist() if "expected_phrase" in table.column_names
               else [None] * table.num_rows)
    ranks, found = [], []
    for passages, source, page, answer, phrase in zip(
        table.column("passages").to_pylist(), table.column("expected_source").to_pylist(),
        table.column("expected_page").to_pylist(), table.column("answer").to_pylist(), phrases,
    ):
        # A question without expectations (mixed into a scored file) is left unscored: null.
        scored = source is not None and page is not None
        ranks.append(expected_rank(passages, source, int(page)) if scored else None)
        found.append(contains_phrase(answer, phrase) if scored else None)
    table = table.append_column("expected_rank", pa.array(ranks, type=pa.int32()))
    return table.append_column("answer_has_phrase", pa.array(found, type=pa.bool_()))


def retrieval_metrics(ranks: list[int | None], phrases_found: list[bool | None]) -> dict[str, float]:
    ranks = [rank for rank in ranks if rank is not None]
    count = len(ranks)
    if not count:
        return {}
    judged = [found for found in phrases_found if found is not None]
    metrics = {
        "eval_questions": float(count),
        "hit@1": sum(1 for r in ranks if r == 1) / count,
        "hit@5": sum(1 for r in ranks if 1 <= r <= 5) / count,
        "mrr": sum(1 / r for r in ranks if r > 0) / count,
    }
    if judged:
        metrics["answers_with_phrase"] = sum(judged) / len(judged)
    return {name: round(value, 4) for name, value in metrics.items()}


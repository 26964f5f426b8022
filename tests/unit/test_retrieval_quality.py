"""Retrieval quality on real manuals: two public PDFs that Debian's documentation packages install
(``tools/manuals.py``), ingested here in one process, asked the question sets of
``include/query/questions/`` (each question with the page that answers it)."""

from __future__ import annotations

import re

import pytest

from include.query.evaluation import QUESTION_SETS, expected_rank, load_question_set, retrieval_metrics
from include.retrieval import Searcher
from include.stages.local import run_stages
from include.storage import Storage
from tests.helpers import drop
from tools.manuals import ManualMissing, write_manuals

MANUALS = ("libtasn1.pdf", "bzip2-manual.pdf")
SETS = ("libtasn1.jsonl", "bzip2.jsonl")
# A question that names an identifier: a function or constant (underscores), an option (-s, --small).
_IDENTIFIER = re.compile(r"(?<![\w-])(?:--?[a-z][\w-]*|\w*_\w+)")


@pytest.fixture(scope="module")
def ingested(tmp_path_factory):
    from include.settings import PipelineSettings

    root = tmp_path_factory.mktemp("manuals")
    try:
        paths = write_manuals(root / "pdf", MANUALS)
    except ManualMissing as exc:
        pytest.skip(str(exc))
    settings = PipelineSettings(work_dir=root / "work", inbox_uri=(root / "inbox").as_uri() + "/",
                                artifacts_uri=(root / "artifacts").as_uri() + "/")
    results = run_stages(settings, [drop(settings, path) for path in paths], "load")
    assert len(results["load"].succeeded) == len(MANUALS)
    return settings, results


def _ranks(settings, mode: str) -> dict[str, int]:
    search = Searcher(settings.model_copy(update={"retrieval_mode": mode}))
    ranks = {}
    for name in SETS:
        for row in load_question_set(QUESTION_SETS / name).to_pylist():
            passages = [p.as_row() for p in search(row["prompt"])]
            ranks[row["id"]] = expected_rank(passages, row["expected_source"], row["expected_page"])
    return ranks


def test_every_chunk_of_the_manuals_fits_the_embedder(ingested):
    settings, results = ingested
    storage = Storage(settings)
    for outcome in results["chunk"].succeeded:
        assert outcome.metrics["chunks_over_limit"] == 0 and outcome.metrics["max_chunk_tokens"] <= 254
        rows = storage.read_jsonl(storage.read_json(outcome.manifest_uri)["outputs"]["chunks"])
        assert all(row["headings"] for row in rows[5:])  # past the front matter, every chunk has its section
    for outcome in results["embed"].succeeded:
        assert outcome.metrics["windowed_chunks"] == 0


def test_hybrid_search_finds_the_answering_page_and_beats_dense_search(ingested):
    settings, _ = ingested
    dense, hybrid = _ranks(settings, "dense"), _ranks(settings, "hybrid")
    dense_metrics = retrieval_metrics(list(dense.values()), [None] * len(dense))
    hybrid_metrics = retrieval_metrics(list(hybrid.values()), [None] * len(hybrid))
    print(f"\ndense {dense_metrics}\nhybrid {hybrid_metrics}")
    assert hybrid_metrics["hit@5"] >= 0.9 and hybrid_metrics["mrr"] >= 0.8
    assert hybrid_metrics["mrr"] > dense_metrics["mrr"]


def test_hybrid_search_ranks_the_passage_with_the_exact_term_first(ingested):
    """Questions naming an identifier (a function, a constant, an option): BM25 knows the exact term."""
    settings, _ = ingested
    hybrid = _ranks(settings, "hybrid")
    exact = [row["id"] for name in SETS for row in load_question_set(QUESTION_SETS / name).to_pylist()
             if _IDENTIFIER.search(row["prompt"])]
    assert len(exact) >= 8
    first = [question for question in exact if hybrid[question] == 1]
    assert len(first) >= 0.85 * len(exact), {question: hybrid[question] for question in exact}

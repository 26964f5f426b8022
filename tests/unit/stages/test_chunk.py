"""Chunking the DoclingDocument with docling-core's HybridChunker, bounded by the embedder's own tokenizer."""

from __future__ import annotations

import re

import pytest

from include.contract import StageManifest
from include.stages.chunk import embedding_text
from include.stages.local import run_stages
from include.storage import Storage
from tests.helpers import drop, run_until

HEADER = ("Week", "Dose", "Site", "Notes")


def _long_pdf(path, table_rows=80):
    """Two sections over several pages: long paragraphs, then a table far too long for one chunk."""
    from fpdf import FPDF

    pdf = FPDF(format="A4")
    pdf.add_page()
    pdf.set_font("Helvetica", "B", 16)
    pdf.cell(0, 10, "1. Background", new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("Helvetica", size=11)
    for n in range(12):
        pdf.multi_cell(0, 6, f"Paragraph {n} of the background. " + "The cohort was followed for safety. " * 12)
        pdf.ln(3)
    pdf.set_font("Helvetica", "B", 16)
    pdf.cell(0, 10, "2. Schedule", new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("Helvetica", size=11)
    for row in [HEADER, *[(f"{n}", f"{250 * (n % 8 + 1)} mg", f"Clinic {n % 5}", f"visit {n}") for n in range(table_rows)]]:
        for cell in row:
            pdf.cell(45, 7, cell)
        pdf.ln(7)
    pdf.output(str(path))
    return path


def _chunks(settings, doc):
    manifests = run_until(settings, doc, "chunk")
    return Storage(settings).read_jsonl(manifests["chunk"].outputs["chunks"]), manifests


@pytest.fixture(scope="module")
def minilm_tokenizer():
    from transformers import AutoTokenizer

    from include.backends.embedders import PACKAGED_MINILM, resolve_model_location

    return AutoTokenizer.from_pretrained(resolve_model_location(PACKAGED_MINILM))


def test_every_chunk_fits_in_one_window_of_the_embedder(settings, sample_pdfs, tmp_path, minilm_tokenizer):
    """The bound holds for every chunk, recounted here as the model sees it: with [CLS] and [SEP]."""
    documents = [drop(settings, path) for path in sample_pdfs.values()] + [drop(settings, _long_pdf(tmp_path / "l.pdf"))]
    results = run_stages(settings, documents, "chunk")["chunk"]
    storage = Storage(settings)
    counted = 0
    for outcome in results.documents:
        manifest = StageManifest.model_validate(storage.read_json(outcome.manifest_uri))
        assert manifest.metrics["chunks_over_limit"] == 0 and manifest.metrics["token_limit"] == 254
        for row in storage.read_jsonl(manifest.outputs["chunks"]):
            assert len(minilm_tokenizer(embedding_text(row))["input_ids"]) <= 256, row["chunk_id"]
            counted += 1
    assert counted >= 15


def test_a_table_too_long_for_one_chunk_is_split_by_rows_with_its_header_repeated(settings, tmp_path):
    rows, _ = _chunks(settings, drop(settings, _long_pdf(tmp_path / "table.pdf")))
    table_chunks = [row for row in rows if "| visit " in row["text"]]
    assert len(table_chunks) >= 3
    header = re.compile(r"^\| Week \| Dose \| Site \| Notes \|\n\|( - \|){4}$", re.MULTILINE)
    for row in table_chunks:
        assert header.search(row["text"]), row["text"][:200]
        assert row["headings"][-1] == "2. Schedule"
    # Every row of the table is in exactly one chunk.
    for n in range(80):
        assert sum(f"| visit {n} " in row["text"] for row in table_chunks) == 1, n


def test_chunks_carry_their_heading_path_page_span_and_ids(settings, sample_pdfs, samples_by_name, tmp_path):
    sample = samples_by_name["metformin_trial_protocol.pdf"]
    doc = drop(settings, sample_pdfs[sample.filename])
    rows, manifests = _chunks(settings, doc)
    assert [r["chunk_id"] for r in rows] == [f"{doc.doc_id}#{i}" for i in range(len(rows))]
    assert manifests["chunk"].metrics["chunks"] == len(rows) >= 2
    dosing = next(r for r in rows if "2000 mg" in r["text"])
    assert dosing["headings"] == [sample.title, "3. Dosing Schedule"]
    assert dosing["heading"] == f"{sample.title} > 3. Dosing Schedule"
    assert dosing["page_start"] == dosing["page_end"] == 2
    assert "| 4 | 2000 mg | Clinic |" in dosing["text"]
    assert all(r["source_uri"] == doc.source_uri for r in rows)
    assert embedding_text(dosing) == f"{sample.title}\n3. Dosing Schedule\n{dosing['text']}"

    long_rows, _ = _chunks(settings, drop(settings, _long_pdf(tmp_path / "long.pdf")))
    assert any(r["page_start"] < r["page_end"] for r in long_rows)  # a chunk may run over a page break
    assert [r["page_start"] for r in long_rows] == sorted(r["page_start"] for r in long_rows)


def test_an_openai_embedder_bounds_chunks_with_its_own_encoding(settings, tmp_path):
    from include.backends.openai_api import token_encoding

    openai = settings.model_copy(update={"embedder": "openai"})
    rows, manifests = _chunks(openai, drop(openai, _long_pdf(tmp_path / "long.pdf")))
    encoding = token_encoding(openai.openai_embed_model)
    assert manifests["chunk"].metrics["token_limit"] == 400
    assert max(len(encoding.encode(embedding_text(row))) for row in rows) <= 400
    # Bigger chunks than MiniLM's for the same document.
    minilm_rows, _ = _chunks(settings, drop(settings, _long_pdf(tmp_path / "long.pdf")))
    assert len(rows) < len(minilm_rows)


def _reused(settings, doc, last="chunk", **options) -> dict[str, bool]:
    return {stage: result.documents[0].reused for stage, result in run_stages(settings, [doc], last, **options).items()}


def test_rechunking_reuses_the_extraction_and_a_rerun_reuses_the_chunks(settings, sample_pdfs, monkeypatch):
    from include import fingerprints

    doc = drop(settings, sample_pdfs["adverse_event_guide.pdf"])
    assert _reused(settings, doc) == {"extract": False, "chunk": False}
    assert _reused(settings, doc) == {"extract": True, "chunk": True}

    smaller = settings.model_copy(update={"chunk_max_tokens": 64})
    assert _reused(smaller, doc) == {"extract": True, "chunk": False}  # no PDF converted again
    assert _reused(settings.model_copy(update={"embedder": "openai"}), doc) == {"extract": True, "chunk": False}

    fingerprints.code_fingerprint.cache_clear()
    monkeypatch.setattr(fingerprints, "_code", lambda module: f"changed code of {module}")
    try:
        assert not _reused(settings, doc)["chunk"]
    finally:
        fingerprints.code_fingerprint.cache_clear()


def test_recompute_redoes_a_stage_and_downstream_reuse_follows_the_upstream_output(settings, sample_pdfs):
    doc = drop(settings, sample_pdfs["adverse_event_guide.pdf"])
    first = run_stages(settings, [doc], "chunk")
    forced = run_stages(settings, [doc], "chunk", recompute=True)
    assert not any(result.documents[0].reused for result in forced.values())
    # The same document out of a recomputed extract: the chunks made from it stay valid.
    again = run_stages(settings, [doc], "chunk")
    assert again["chunk"].documents[0].reused
    assert again["chunk"].documents[0].manifest_uri == first["chunk"].documents[0].manifest_uri

    # Another document out of extract (here: its digest edited by hand): its chunks are made again.
    storage = Storage(settings)
    extract = StageManifest.model_validate(storage.read_json(first["extract"].documents[0].manifest_uri))
    edited = extract.model_copy(update={"output_digest": "something-else"})
    storage.write_json(first["extract"].documents[0].manifest_uri, edited.model_dump(mode="json"))
    assert not run_stages(settings, [doc], "chunk")["chunk"].documents[0].reused

from __future__ import annotations

from include.stages.base import StageManifest
from include.stages.chunk import build_chunks, parse_blocks
from include.stages.extract import render
from include.stages.local import run_stages
from include.storage import Storage
from tests.helpers import drop, run_until

TABLE = "| a | b |\n| --- | --- |\n" + "\n".join(f"| row {i} | value {i} |" for i in range(40))


def _pages() -> list[str]:
    return [
        "## Introduction\n\n" + "\n\n".join(f"Paragraph {i} " + "word " * 60 for i in range(4)),
        "## Results\n\n" + TABLE + "\n\nClosing remarks " + "word " * 20,
    ]


def test_blocks_know_their_page_and_nearest_heading():
    blocks = parse_blocks(render(_pages()))
    assert [b.page for b in blocks[:2]] == [1, 1]
    assert blocks[1].heading == "Introduction"
    table = next(b for b in blocks if b.text.startswith("| a |"))
    assert table.page == 2 and table.heading == "Results"


def test_chunks_hold_whole_blocks_near_the_target_and_never_split_a_table():
    blocks = parse_blocks(render(_pages()))
    chunks = build_chunks(blocks, target_chars=700)
    texts = [c.text for c in chunks]
    # Every paragraph and the table appear whole in exactly one chunk.
    for block in blocks:
        assert sum(block.text in t for t in texts) == 1
    assert sum(TABLE in t for t in texts) == 1
    # Only a chunk made of one oversize block may pass the target.
    for chunk in chunks:
        assert chunk.size <= 700 or len(chunk.blocks) == 1
    # A new heading on a new page starts a new chunk.
    assert any(c.blocks[0].text == "## Results" for c in chunks)


def test_small_pieces_merge_across_a_page_break_instead_of_standing_alone():
    blocks = parse_blocks(render(["## A\n\nshort one", "short two", "short three"]))
    chunks = build_chunks(blocks, target_chars=1500)
    assert len(chunks) == 1
    assert (chunks[0].blocks[0].page, chunks[0].blocks[-1].page) == (1, 3)


def test_chunk_stage_records_ids_pages_and_headings(settings, sample_pdfs):
    doc = drop(settings, sample_pdfs["metformin_trial_protocol.pdf"])
    manifests = run_until(settings, doc, "chunk")
    rows = Storage(settings).read_jsonl(manifests["chunk"].outputs["chunks"])
    assert [r["chunk_id"] for r in rows] == [f"{doc.doc_id}#{i}" for i in range(len(rows))]
    assert manifests["chunk"].metrics["chunks"] == len(rows) >= 2
    dosing = next(r for r in rows if "2000 mg" in r["text"])
    assert dosing["page_start"] == 2 and dosing["heading"] == "3. Dosing Schedule"
    assert "| 4 | 2000 mg | Clinic |" in dosing["text"]
    assert all(r["source_uri"] == doc.source_uri for r in rows)


def _reused(settings, doc, last="chunk", **options) -> bool:
    return run_stages(settings, [doc], last, **options)[last].documents[0].reused


def test_a_rerun_reuses_chunks_but_not_after_the_settings_or_the_code_change(settings, sample_pdfs, monkeypatch):
    from include.stages import base as stage_base

    doc = drop(settings, sample_pdfs["adverse_event_guide.pdf"])
    assert not _reused(settings, doc)
    assert _reused(settings, doc)

    smaller = settings.model_copy(update={"chunk_target_chars": 300})
    assert not _reused(smaller, doc)

    stage_base.code_fingerprint.cache_clear()
    monkeypatch.setattr(stage_base.inspect, "getsource", lambda module: "changed code")
    try:
        assert not _reused(settings, doc)
    finally:
        stage_base.code_fingerprint.cache_clear()


def test_recompute_redoes_a_stage_and_downstream_reuse_follows_the_upstream_output(settings, sample_pdfs):
    doc = drop(settings, sample_pdfs["adverse_event_guide.pdf"])
    first = run_stages(settings, [doc], "chunk")
    forced = run_stages(settings, [doc], "chunk", recompute=True)
    assert not any(result.documents[0].reused for result in forced.values())
    # Same bytes out of a recomputed extract: the chunks made from them stay valid.
    again = run_stages(settings, [doc], "chunk")
    assert again["chunk"].documents[0].reused
    assert again["chunk"].documents[0].manifest_uri == first["chunk"].documents[0].manifest_uri

    # Other Markdown out of extract (here: edited by hand): its chunks are made again.
    storage = Storage(settings)
    extract = StageManifest.model_validate(storage.read_json(first["extract"].documents[0].manifest_uri))
    edited = extract.model_copy(update={"output_digest": "something-else"})
    storage.write_json(first["extract"].documents[0].manifest_uri, edited.model_dump(mode="json"))
    assert not run_stages(settings, [doc], "chunk")["chunk"].documents[0].reused

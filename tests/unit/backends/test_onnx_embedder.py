"""The ONNX Runtime embedder, and torch in bfloat16, against the torch one in float32, on the same
texts: the vectors agree (the issue's bar: mean cosine at least 0.999, none below 0.995), long texts
are windowed alike, and a missing export, or bfloat16 asked of a CPU without it, is a clear error."""

from __future__ import annotations

import random

import numpy as np
import pytest

from include.backends import embedders
from include.backends.embedders import (
    MiniLMEmbedder,
    MissingOnnxExport,
    NoNativeBfloat16,
    OnnxMiniLMEmbedder,
    build_embedder,
    has_native_bfloat16,
)
from include.backends.minilm_export import is_current
from include.settings import PipelineSettings, default_onnx_dir

_WORDS = ("metformin dose twice daily trial cohort week table results 2.5 mg/kg e-mail ISBN 978-0-387 the of "
          "and libtasn1 DER-encoded thread-safe p<0.05 Größe naïve 血压").split()


def _texts(n: int, most_words: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(1, most_words))) for _ in range(n)]


@pytest.fixture(scope="module")
def both() -> tuple[MiniLMEmbedder, OnnxMiniLMEmbedder]:
    torch_embedder = build_embedder(PipelineSettings(embed_runtime="torch"))
    onnx_embedder = build_embedder(PipelineSettings(embed_runtime="onnx"))
    assert isinstance(torch_embedder, MiniLMEmbedder) and isinstance(onnx_embedder, OnnxMiniLMEmbedder)
    return torch_embedder, onnx_embedder


def test_the_install_made_a_current_export_of_the_packaged_model():
    assert is_current(default_onnx_dir(), PipelineSettings().embed_model)


def test_onnx_vectors_agree_with_torch_on_chunk_sized_texts(both):
    torch_embedder, onnx_embedder = both
    texts = ["", "x", *_texts(60, 120, seed=1)]  # chunks hold at most one window (the chunker sees to it)
    expected, got = torch_embedder.embed(texts), onnx_embedder.embed(texts)
    assert got.vectors.shape == expected.vectors.shape == (len(texts), 384)
    assert np.allclose(np.linalg.norm(got.vectors, axis=1), 1.0, atol=1e-5)
    cosines = np.sum(expected.vectors * got.vectors, axis=1)
    assert cosines.mean() >= 0.999 and cosines.min() >= 0.995, (cosines.mean(), cosines.min())
    assert got.tokens == expected.tokens and got.windows == expected.windows == [1] * len(texts)


def test_a_long_text_is_read_whole_in_the_same_windows(both):
    torch_embedder, onnx_embedder = both
    texts = _texts(4, 900, seed=2)
    expected, got = torch_embedder.embed(texts), onnx_embedder.embed(texts)
    assert got.tokens == expected.tokens and got.windows == expected.windows and max(got.windows) > 1
    # Same windows; the torch path reads each window back from decoded text, so a few word pieces
    # can differ at the seams: close, not equal.
    assert np.sum(expected.vectors * got.vectors, axis=1).min() >= 0.95


def test_without_an_export_the_embedder_says_how_to_make_one(tmp_path):
    with pytest.raises(MissingOnnxExport, match="python -m include.backends.minilm_export"):
        build_embedder(PipelineSettings(embed_onnx_dir=tmp_path / "nothing-here"))


@pytest.mark.skipif(not has_native_bfloat16(), reason="this CPU has no native bfloat16: torch-bf16 refuses it")
def test_bfloat16_vectors_agree_with_float32_and_are_of_unit_length(both):
    torch_embedder, _onnx = both
    bf16 = build_embedder(PipelineSettings(embed_runtime="torch-bf16"))
    texts = ["", "x", *_texts(60, 120, seed=3), *_texts(2, 900, seed=4)]
    expected, got = torch_embedder.embed(texts), bf16.embed(texts)
    assert got.vectors.dtype == np.float32 and got.vectors.shape == expected.vectors.shape
    assert np.allclose(np.linalg.norm(got.vectors, axis=1), 1.0, atol=1e-5)  # what the embed gate holds it to
    cosines = np.sum(expected.vectors * got.vectors, axis=1)
    assert cosines.mean() >= 0.999 and cosines.min() >= 0.995, (cosines.mean(), cosines.min())
    assert got.windows == expected.windows and max(got.windows) > 1


def test_bfloat16_on_a_cpu_without_it_is_refused_with_the_way_out(monkeypatch):
    monkeypatch.setattr(embedders, "has_native_bfloat16", lambda: False)
    with pytest.raises(NoNativeBfloat16, match="use onnx"):
        build_embedder(PipelineSettings(embed_runtime="torch-bf16"))

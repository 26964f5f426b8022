"""The local embedder's model exported to ONNX, once, at install time (no download).

    python -m include.backends.minilm_export            # the packaged all-MiniLM-L6-v2
    python -m include.backends.minilm_export --model /models/other-sentence-transformer --out DIR

``scripts/bootstrap.sh`` runs it after installing the worker tier (the Ray image does the same at
build time). The graph holds the whole sentence-transformers model, transformer, mean pooling and
normalisation, so ONNX Runtime returns the sentence vector itself. The graph is traced with eager
attention and then fused by ONNX Runtime's transformer optimizer (one ``Attention``,
``SkipLayerNormalization`` and ``BiasGelu`` kernel per layer, exact: no approximated GELU): the
SDPA trace hides the attention pattern from the fusion, and the fused graph runs about 1.25x
faster than the plain one here. The folder also gets the model's
``tokenizer.json`` and an ``export.json`` saying what was exported from what. The export is
checked against the torch model before it is kept (cosine of every sample at least
``REQUIRED_COSINE``) and written through a temporary folder, so a half-written export never exists.

Full precision only: int8 dynamic quantization runs the model about 2.2x faster here, but its
vectors agree with torch's at a mean cosine of 0.994 (min 0.985), below what a drop-in replacement
must hold (``benchmarks/bench_stages.py`` prints both).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

from include.backends.embedders import PACKAGED_MINILM, OnnxMiniLMEmbedder, resolve_model_location
from include.settings import default_onnx_dir

EXPORT_FORMAT = 2  # 2: eager attention, fused
REQUIRED_COSINE = 0.9999
_SAMPLES = (
    "Metformin 500 mg twice daily, taken with meals.",
    "The libtasn1 functions are thread safe: no global variables are used.",
    "Table 3: adverse events by cohort, week 12.",
    "x",
)


def source_id(model: str) -> str:
    """What an export records as its source: the model setting and a digest of its weights, so a
    changed model folder is never served by an old export."""
    location = Path(resolve_model_location(model))
    digest = hashlib.sha256()
    for weights in sorted(location.glob("*.safetensors")) or sorted(location.glob("*.bin")):
        with weights.open("rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
    return f"{model}@sha256:{digest.hexdigest()[:16]}"


def export(model: str = PACKAGED_MINILM, out: Path | None = None) -> Path:
    import numpy as np
    import torch
    from onnxruntime.transformers import optimizer
    from sentence_transformers import SentenceTransformer

    out = out or default_onnx_dir()
    location = resolve_model_location(model)
    if os.path.isdir(location):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    st = SentenceTransformer(location, device="cpu", model_kwargs={"attn_implementation": "eager"})
    pooling = st[1].get_config_dict() if len(st) > 1 else {}
    if pooling.get("pooling_mode", "mean") != "mean" or pooling.get("pooling_mode_mean_tokens") is False:
        raise SystemExit(f"{model}: only mean pooling is exported; this model pools with {pooling}")
    transformer = st[0].auto_model.eval()
    config = transformer.config
    normalize = any(type(module).__name__ == "Normalize" for module in st)

    class SentenceVector(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.transformer = transformer

        def forward(self, input_ids, attention_mask, token_type_ids):
            hidden = self.transformer(input_ids=input_ids, attention_mask=attention_mask,
                                      token_type_ids=token_type_ids).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2, dim=1) if normalize else pooled

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    staging.chmod(0o755)  # read by the Ray workers, whichever user runs them
    try:
        sample = torch.ones(2, 8, dtype=torch.long)
        axes = {name: {0: "batch", 1: "tokens"} for name in ("input_ids", "attention_mask", "token_type_ids")}
        # The TorchScript exporter: the newer one needs onnxscript, which nothing else here uses. Its
        # deprecation and tracing warnings are about control flow this graph does not take: the
        # cosine check below is what says the export is right.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(SentenceVector(), (sample, sample, torch.zeros_like(sample)), str(staging / "traced.onnx"),
                              input_names=list(axes), output_names=["sentence_embedding"],
                              dynamic_axes={**axes, "sentence_embedding": {0: "batch"}}, opset_version=17,
                              dynamo=False)
        fused = optimizer.optimize_model(str(staging / "traced.onnx"), model_type="bert",
                                         num_heads=config.num_attention_heads, hidden_size=config.hidden_size)
        fused.save_model_to_file(str(staging / "model.onnx"))
        (staging / "traced.onnx").unlink()
        shutil.copy(Path(location) / "tokenizer.json", staging / "tokenizer.json")
        tokenizer = st.tokenizer
        meta = {
            "format": EXPORT_FORMAT,
            "source": source_id(model),
            "dimension": int(st.get_embedding_dimension()),
            "max_seq_length": int(st.max_seq_length),
            "cls_id": tokenizer.cls_token_id,
            "sep_id": tokenizer.sep_token_id,
            "pad_id": tokenizer.pad_token_id,
            "normalized": normalize,
            "torch": torch.__version__,
        }
        (staging / "export.json").write_text(json.dumps(meta, indent=2))
        exported = OnnxMiniLMEmbedder.from_folder(staging, model=model, batch_size=len(_SAMPLES), threads=1)
        cosines = np.sum(exported.embed(list(_SAMPLES)).vectors
                         * st.encode(list(_SAMPLES), normalize_embeddings=True), axis=1)
        if cosines.min() < REQUIRED_COSINE:
            raise SystemExit(f"the ONNX export of {model} disagrees with torch (cosines {cosines.round(5)}): not kept")
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def is_current(folder: Path, model: str) -> bool:
    try:
        meta = json.loads((folder / "export.json").read_text())
    except (OSError, ValueError):
        return False
    return meta.get("format") == EXPORT_FORMAT and meta.get("source") == source_id(model) \
        and (folder / "model.onnx").is_file()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m include.backends.minilm_export",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=PACKAGED_MINILM, help="the embed_model setting to export")
    parser.add_argument("--out", type=Path, default=None, help=f"folder to write (default {default_onnx_dir()})")
    parser.add_argument("--force", action="store_true", help="export even when the folder is current")
    args = parser.parse_args(argv)
    out = args.out or default_onnx_dir()
    if not args.force and is_current(out, args.model):
        print(f"{out}: current export of {args.model}")
        return 0
    print(f"exported {args.model} to {export(args.model, out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

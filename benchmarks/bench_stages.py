"""Benchmark: each stage inside Ray against the same stage in one plain process, on one large PDF,
with the CPU each keeps busy; then the embedder's runtimes side by side.

Both paths run the same stage code on the same generated document in the same invocation:

- **plain**: ``include.stages.local.run_stages`` with ``run_inline``: every worker built once in one
  process, the floor any orchestration is measured against;
- **ray**: the same call with ``run_on_ray``, the executor of every stage job, on a local Ray of
  this machine's CPUs (the stage jobs' own code path without Airflow: ``bench_ingest`` times the
  whole DAG).

It prints per stage: seconds of each path, their ratio (Ray / plain: 1.0 or less means Ray costs
nothing) and the CPU each path kept busy, as a share of the machine (the Ray workers' processes
for the Ray path, the one process for the plain path); the peak memory of each. Then the local
embedder on a sample of the document's chunks: chunks per second of torch (sentence-transformers)
and of ONNX Runtime (the default) with the machine's threads, and their cosine agreement; of an
int8 dynamically quantized export, which is not used (see ``include.backends.minilm_export``); and
of torch in bfloat16 (``PIPELINE_EMBED_RUNTIME=torch-bf16``) where the CPU computes it natively.

    .venv/bin/python -m benchmarks.bench_stages                  # a 600-page document
    .venv/bin/python -m benchmarks.bench_stages --pages 2415     # as large as the issue's manual
    .venv/bin/python -m benchmarks.bench_stages --runtime torch  # the stages with the torch embedder
    .venv/bin/python -m benchmarks.bench_stages --setting PIPELINE_EMBED_POOL__ACTOR_CPUS=2  # other settings
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.bench_ingest import synthetic_pdf
from benchmarks.sampling import ProcessSampler, cmdline

ROOT = Path(__file__).resolve().parents[1]
OFFLINE = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS": ""}


def run_child(mode: str, pdf: Path, work: Path, passes: int) -> dict:
    """One path over the document, ``passes`` times, in a child process of the benchmark (its memory its
    own). Each pass starts with no artifacts, so every stage runs again; the Ray path's warm workers
    (``include.stages.warm``) stay up between passes, as they do between the jobs of a deployment, and the
    plain path builds its workers again, as every run of a plain process would."""
    os.environ.update(OFFLINE)
    from include.documents import discover
    from include.settings import PipelineSettings
    from include.stages.execution import run_inline, run_on_ray
    from include.stages.local import run_stages
    from include.storage import Storage

    settings = PipelineSettings(work_dir=work, inbox_uri=pdf.parent.resolve().as_uri() + "/",
                                artifacts_uri=(work / "artifacts").as_uri() + "/")
    executor = run_inline
    if mode == "ray":
        import ray

        from include.control.ingest import RUNTIME_EXCLUDES
        from include.settings import PROJECT_ROOT

        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="WARNING",
                 _temp_dir=tempfile.mkdtemp(prefix="ray-bench-", dir="/tmp"),
                 runtime_env={"working_dir": str(PROJECT_ROOT), "excludes": RUNTIME_EXCLUDES,
                              "env_vars": {**OFFLINE, **{k: v for k, v in os.environ.items()
                                                         if k.startswith("PIPELINE_")}}})
        executor = run_on_ray
    documents, _ = discover(Storage(settings), settings.inbox_uri)
    timings = []
    for number in range(passes):
        shutil.rmtree(work / "artifacts", ignore_errors=True)
        results = run_stages(settings, documents, "load", executor=executor)
        failed = {stage: [o.error for o in r.failed] for stage, r in results.items() if r.failed}
        if failed:
            raise SystemExit(f"the {mode} path failed documents in pass {number + 1}: {failed}")
        timings.append({stage: [result.started_at.timestamp(), result.finished_at.timestamp()]
                        for stage, result in results.items()})
    return {"passes": timings, "chunks": results["load"].metrics.get("vectors", 0),
            "embeddings": results["embed"].succeeded[0].manifest_uri}


def measured(mode: str, pdf: Path, scratch: Path, runtime: str, passes: int,
             settings: dict[str, str]) -> tuple[dict, ProcessSampler]:
    work = scratch / f"work-{mode}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIPELINE_", "STACK_", "RAY_"))}
    env.update(settings, PIPELINE_EMBED_RUNTIME=runtime)
    child = subprocess.Popen([sys.executable, "-m", "benchmarks.bench_stages", "--child", mode, str(pdf),
                              str(work), "--passes", str(passes)],
                             cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if mode == "plain":
        def picks(process) -> str | None:
            return mode if process.pid == child.pid else None
    else:
        def picks(process) -> str | None:
            return mode if cmdline(process).startswith("ray::") else None
    with ProcessSampler(picks) as sampler:
        out, err = child.communicate()
    if child.returncode != 0:
        raise RuntimeError(f"the {mode} path failed:\n{err[-4000:]}")
    return json.loads(out.strip().splitlines()[-1]), sampler


def embedder_runtimes(embeddings_manifest: str, sample: int) -> list[tuple[str, float, float, float]]:
    """(runtime, chunks/s, mean cosine to torch, min cosine to torch) on the document's own chunks,
    each runtime with the machine's threads."""
    import numpy as np
    import pyarrow.parquet as pq

    from include.backends.embedders import MiniLMEmbedder, OnnxMiniLMEmbedder, has_native_bfloat16
    from include.backends.minilm_export import is_current
    from include.contract import StageManifest
    from include.settings import PipelineSettings, default_onnx_dir
    from include.storage import Storage

    os.environ.update(OFFLINE)
    settings = PipelineSettings()
    storage = Storage(settings)
    manifest = StageManifest.model_validate(storage.read_json(embeddings_manifest))
    table = pq.read_table(io.BytesIO(storage.read_bytes(manifest.outputs["embeddings"])), columns=["text"])
    from include.stages.chunk import embedding_text

    texts = [embedding_text(row) for row in table.to_pylist()][:sample]
    threads = os.cpu_count() or 1
    folder = settings.embed_onnx_dir or default_onnx_dir()
    assert is_current(folder, settings.embed_model), f"no current ONNX export in {folder}"
    runtimes = {
        "torch": MiniLMEmbedder(settings),
        "onnx": OnnxMiniLMEmbedder.from_folder(folder, model=settings.embed_model,
                                               batch_size=settings.embed_batch_size, threads=threads),
        "onnx-int8": OnnxMiniLMEmbedder.from_folder(_quantized(folder), model=settings.embed_model,
                                                    batch_size=settings.embed_batch_size, threads=threads),
    }
    if has_native_bfloat16():
        runtimes["torch-bf16"] = MiniLMEmbedder(settings.model_copy(update={"embed_runtime": "torch-bf16"}))
    rows, reference = [], None
    for name, embedder in runtimes.items():
        embedder.embed(texts[:8])  # warm: the first call allocates
        clock = time.perf_counter()
        vectors = embedder.embed(texts).vectors
        rate = len(texts) / (time.perf_counter() - clock)
        reference = vectors if reference is None else reference
        cosines = np.sum(vectors * reference, axis=1)
        rows.append((name, rate, float(cosines.mean()), float(cosines.min())))
    return rows


def _quantized(folder: Path) -> Path:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out = Path(tempfile.mkdtemp(prefix="minilm-int8-", dir="/tmp"))
    for name in ("tokenizer.json", "export.json"):
        shutil.copy(folder / name, out / name)
    quantize_dynamic(str(folder / "model.onnx"), str(out / "model.onnx"), weight_type=QuantType.QInt8,
                     per_channel=True,
                     # The fused graph's kernels (com.microsoft) have no inferred output types.
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    return out


def print_pass(plain: dict, ray: dict, plain_cpu: ProcessSampler, ray_cpu: ProcessSampler) -> None:
    header = f"{'stage':<9}{'plain s':>9}{'Ray s':>8}{'Ray/plain':>10}{'plain CPU':>10}{'Ray CPU':>9}"
    print(header + "\n" + "-" * len(header))
    for stage, (p_start, p_end) in plain.items():
        r_start, r_end = ray[stage]
        print(f"{stage:<9}{p_end - p_start:>9.1f}{r_end - r_start:>8.1f}"
              f"{(r_end - r_start) / (p_end - p_start):>10.2f}"
              f"{plain_cpu.busy(p_start, p_end):>10.0%}{ray_cpu.busy(r_start, r_end):>9.0%}")
    p_all = [min(s for s, _ in plain.values()), max(e for _, e in plain.values())]
    r_all = [min(s for s, _ in ray.values()), max(e for _, e in ray.values())]
    print(f"{'all':<9}{p_all[1] - p_all[0]:>9.1f}{r_all[1] - r_all[0]:>8.1f}"
          f"{(r_all[1] - r_all[0]) / (p_all[1] - p_all[0]):>10.2f}"
          f"{plain_cpu.busy(*p_all):>10.0%}{ray_cpu.busy(*r_all):>9.0%}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_stages", description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=600)
    parser.add_argument("--sample", type=int, default=1024, help="chunks embedded by each runtime")
    parser.add_argument("--runtime", choices=["onnx", "torch", "torch-bf16"], default="onnx",
                        help="the stages' embedder")
    parser.add_argument("--passes", type=int, default=2,
                        help="runs of each path; from the second on, the Ray path's workers are warm")
    parser.add_argument("--setting", action="append", default=[], metavar="PIPELINE_NAME=VALUE",
                        help="a setting for both paths (repeatable), e.g. PIPELINE_EMBED_POOL__ACTOR_CPUS=2")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        mode, pdf, work = args.child
        print(json.dumps(run_child(mode, Path(pdf), Path(work), args.passes)))
        return 0

    scratch = Path(tempfile.mkdtemp(prefix="bench-stages-", dir="/tmp"))
    try:
        (scratch / "inbox").mkdir()
        pdf = synthetic_pdf(scratch / "inbox" / "manual.pdf", args.pages, seed=2415)
        print(f"==> one {args.pages}-page PDF, {os.cpu_count()} CPUs, embedder runtime {args.runtime}"
              + "".join(f", {setting}" for setting in args.setting), flush=True)
        results = {}
        for mode in ("plain", "ray"):
            results[mode] = measured(mode, pdf, scratch, args.runtime, args.passes,
                                     dict(setting.split("=", 1) for setting in args.setting))
            print(f"    {mode}: done, {results[mode][0]['chunks']} chunks", flush=True)
        (plain, plain_cpu), (ray, ray_cpu) = results["plain"], results["ray"]
        for number, (plain_pass, ray_pass) in enumerate(zip(plain["passes"], ray["passes"])):
            warmth = ("a cold cluster (Ray's pools start, every model loads)" if number == 0
                      else "Ray's workers warm from the pass before")
            print(f"\npass {number + 1}: {warmth}")
            print_pass(plain_pass, ray_pass, plain_cpu, ray_cpu)
        print(f"peak memory: plain process {plain_cpu.peak_mb['plain']:.0f} MB, largest Ray worker "
              f"{ray_cpu.peak_mb['ray']:.0f} MB")

        print(f"\n{'embedder':<12}{'chunks/s':>9}{'x torch':>8}{'cos mean':>10}{'cos min':>9}")
        rows = embedder_runtimes(plain["embeddings"], args.sample)
        for name, rate, mean, least in rows:
            print(f"{name:<12}{rate:>9.1f}{rate / rows[0][1]:>8.2f}{mean:>10.5f}{least:>9.5f}")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

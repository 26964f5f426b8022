"""Benchmark: the document_ingest DAG (Airflow + Ray jobs) against the same five steps in one plain process.

Both run on the same corpus in the same invocation:

- **plain**: one Python process, every stage's worker (Docling converter, enricher,
  embedder, vector store) built once, documents one after the other, local files and
  an embedded Chroma (``run_inline``): the floor any orchestration is measured against;
- **dag**: the real local stack (SeaweedFS, Chroma server, Ray head) on its own ports
  and work dir, the corpus dropped into the S3 inbox, ``airflow dags test document_ingest``.

It prints, per corpus: wall seconds of each, their ratio (plain / dag: 1.0 would mean
orchestration costs nothing), Ray jobs the run submitted, pages per second, and the
peak resident memory of the plain process and of the largest Ray worker (sampled); per stage,
seconds in the plain process and in the stage's Ray jobs, and the cores the stage's workers, Ray's
daemons, Airflow and the storage servers kept busy while those jobs ran.
Then the DAG runs a second time over the unchanged inbox, naming its files as a person
triggering it would: the seconds and Ray jobs of that run are what an unchanged inbox costs.
Last, one more document is dropped and run: its seconds, seconds inside Ray jobs and model
loads are what a small drop costs with the models loaded (warm workers); ``--cold-too`` runs the
DAG again with warm workers off, the baseline.

    .venv/bin/python -m benchmarks.bench_ingest                 # demo corpus and 50 mixed documents
    .venv/bin/python -m benchmarks.bench_ingest --corpus demo   # only the three demo PDFs
    .venv/bin/python -m benchmarks.bench_ingest --corpus demo --cold-too  # and warm workers off

Corpora: ``demo`` is the three sample PDFs of ``make demo``; ``mixed`` is generated:
``--documents`` PDFs of 1 to 40 pages, one of ``--big-pages`` pages, one corrupt file
and one that is not a PDF (they must fail alone and cost next to nothing).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.sampling import ProcessSampler, cmdline

ROOT = Path(__file__).resolve().parents[1]
# SeaweedFS's gRPC ports (its ports + 10000) stay below the ephemeral range (32768 and up).
BENCH_PORTS = {"STACK_S3_PORT": "22333", "STACK_RAY_DASHBOARD_PORT": "38265", "STACK_RAY_GCS_PORT": "36379",
               "STACK_CHROMA_PORT": "38000"}
DAG_ID = "document_ingest"
_WORDS = ("trial dose metformin site visit protocol safety endpoint patient cohort analysis sample blood "
          "monitoring report adverse event investigator schedule placebo baseline week clinic review").split()


def synthetic_pdf(path: Path, pages: int, seed: int) -> Path:
    from fpdf import FPDF

    rng = random.Random(seed)
    pdf = FPDF(format="A4")
    for page in range(pages):
        pdf.add_page()
        pdf.set_font("Helvetica", "B", 16)
        pdf.cell(0, 10, f"Section {page + 1}: {' '.join(rng.sample(_WORDS, 3)).title()}", new_x="LMARGIN", new_y="NEXT")
        pdf.set_font("Helvetica", size=11)
        for _ in range(4):
            text = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(40, 90))).capitalize() + "."
            pdf.multi_cell(0, 6, text)
            pdf.ln(3)
        if page % 3 == 0:
            for row in range(5):
                pdf.cell(40, 7, f"Week {row}")
                pdf.cell(40, 7, f"{500 * (row + 1)} mg")
                pdf.cell(40, 7, rng.choice(["Clinic", "Phone", "Home"]), new_x="LMARGIN", new_y="NEXT")
    pdf.output(str(path))
    return path


def make_corpus(name: str, folder: Path, documents: int, big_pages: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    if name == "demo":
        from tools.sample_pdfs import write_samples

        return list(write_samples(folder))
    rng = random.Random(7)
    paths = [synthetic_pdf(folder / f"report-{n:03d}.pdf", rng.choice([1, 1, 2, 3, 5, 8, 13, 20, 40]), n)
             for n in range(documents - 3)]
    paths.append(synthetic_pdf(folder / "big-manual.pdf", big_pages, 999))
    (folder / "corrupt.pdf").write_bytes(b"%PDF-1.7\n1 0 obj << broken")
    (folder / "notes.txt").write_text("not a PDF at all")
    return [*paths, folder / "corrupt.pdf", folder / "notes.txt"]


def pages_of(paths: list[Path]) -> int:
    import pypdfium2

    total = 0
    for path in paths:
        try:
            total += len(pypdfium2.PdfDocument(path.read_bytes()))
        except pypdfium2.PdfiumError:
            pass
    return total


# --- plain: the five steps in one process ------------------------------------------


def run_plain(corpus: Path) -> dict:
    """Runs in a child process of the benchmark (so its peak memory is its own)."""
    os.environ.update({"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                       "TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS": ""})
    from include.documents import discover
    from include.settings import PipelineSettings
    from include.stages.local import run_stages
    from include.storage import Storage

    work = Path(tempfile.mkdtemp(prefix="bench-plain-"))
    settings = PipelineSettings(work_dir=work, inbox_uri=corpus.resolve().as_uri() + "/",
                                artifacts_uri=(work / "artifacts").as_uri() + "/")
    clock = time.perf_counter()
    documents, _ = discover(Storage(settings), settings.inbox_uri)
    results = run_stages(settings, documents, "load")
    seconds = time.perf_counter() - clock
    shutil.rmtree(work, ignore_errors=True)
    stages = {stage: (r.finished_at - r.started_at).total_seconds() for stage, r in results.items()}
    return {"seconds": seconds, "vectors": results["load"].metrics.get("vectors", 0),
            "failed": len(results["extract"].failed), "stages": stages}


def plain(corpus: Path) -> tuple[dict, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    # The plain run knows nothing of a stack: no PIPELINE_*/STACK_* variable reaches it.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIPELINE_", "STACK_"))}
    out = subprocess.run([sys.executable, "-m", "benchmarks.bench_ingest", "--plain-child", str(corpus)],
                         cwd=ROOT, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"the plain run failed:\n{out.stderr[-4000:]}")
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return result, max(peak_kb, before) / 1024


# --- dag: Airflow + Ray jobs on the local stack -------------------------------------


def _dag_run(airflow: str, env: dict[str, str], project: Path, log: Path, conf: dict | None = None) -> tuple[str, float]:
    """One ``airflow dags test`` run: its run id and wall seconds."""
    from tools import airflow_db

    clock = time.perf_counter()
    with log.open("w") as out:
        subprocess.run([airflow, "dags", "test", DAG_ID, *(["-c", json.dumps(conf)] if conf else [])],
                       env=env, cwd=project, stdout=out, stderr=subprocess.STDOUT)
    return airflow_db.latest_run_id(Path(env["AIRFLOW_HOME"]), DAG_ID), time.perf_counter() - clock


def dag(corpus: list[Path], work: Path, project: Path = ROOT, overrides: dict[str, str] | None = None) -> dict:
    """The DAG of ``project`` (this checkout, or an older one for a before/after comparison), with
    ``overrides`` (``PIPELINE_*`` variables) on top of this process's environment."""
    base = {**os.environ, **BENCH_PORTS, "PIPELINE_WORK_DIR": str(work), "PIPELINE_INGEST_SCHEDULE": "",
            **(overrides or {})}
    stack_vars = subprocess.run(
        [sys.executable, "-c", "import json; from tools.stack import stack_env; print(json.dumps(stack_env()))"],
        env=base, cwd=project, capture_output=True, text=True, check=True,
    ).stdout
    env = {**base, **json.loads(stack_vars)}
    airflow = str(Path(sys.executable).parent / "airflow")
    subprocess.run([sys.executable, "-m", "tools.stack", "up"], env=env, cwd=project, check=True, capture_output=True)
    subprocess.run([airflow, "db", "migrate"], env=env, cwd=project, check=True, capture_output=True)
    saved = dict(os.environ)
    try:
        # The job client below authenticates as the stack does (RAY_AUTH_MODE, RAY_AUTH_TOKEN_PATH).
        os.environ.update({k: v for k, v in env.items() if k.startswith(("PIPELINE_", "AWS_", "RAY_"))})
        from include.control.settings import get_control_settings, reload_settings
        from include.storage import Storage, join_uri

        reload_settings()
        settings = get_control_settings()
        storage = Storage(settings)
        for path in corpus:
            storage.write_bytes(join_uri(settings.inbox_uri, path.name), path.read_bytes())
        with ProcessSampler(stack_group) as sampler:
            started = time.time()
            run_id, seconds = _dag_run(airflow, env, project, work / "dags-test.log")
        from ray.job_submission import JobSubmissionClient

        from tools import airflow_db

        client = JobSubmissionClient(env["RAY_ADDRESS"])
        jobs = [j for j in client.list_jobs() if j.metadata.get("run_id") == run_id]
        # Seconds inside Ray jobs per stage (summed over batches), and when the first job started.
        stages: dict[str, float] = {}
        cpu: dict[str, dict[str, float]] = {}
        for job in jobs:
            stage = job.entrypoint.split()[3]
            stages[stage] = stages.get(stage, 0.0) + (job.end_time - job.start_time) / 1000
            for group in STACK_GROUPS:
                used = sampler.cpu_seconds(job.start_time / 1000, job.end_time / 1000, group)
                cpu.setdefault(stage, {}).setdefault(group, 0.0)
                cpu[stage][group] += used
        first_job = min((j.start_time / 1000 - started for j in jobs), default=0.0)
        summary = airflow_db.xcoms(Path(env["AIRFLOW_HOME"]), DAG_ID, run_id, key="summary").get(("summarize", -1))
        # The same inbox again (bad files may have left it for quarantine), every file named.
        keys = [uri.removeprefix(settings.inbox_uri) for uri in storage.list(settings.inbox_uri)]
        rerun_id, rerun_seconds = _dag_run(airflow, env, project, work / "dags-test-rerun.log", {"keys": keys})
        rerun_jobs = [j for j in client.list_jobs() if j.metadata.get("run_id") == rerun_id]
        # One more document dropped after the run: what a small drop costs once the models are loaded
        # (warm workers) or loaded again by each job (PIPELINE_WARM_IDLE_SECONDS=0).
        storage.write_bytes(join_uri(settings.inbox_uri, "later/one-more.pdf"), corpus[0].read_bytes())
        drop_id, drop_seconds = _dag_run(airflow, env, project, work / "dags-test-drop.log",
                                         {"keys": ["later/one-more.pdf"]})
        drop_jobs = [j for j in client.list_jobs() if j.metadata.get("run_id") == drop_id]
        drop_loads = sum(value["metrics"].get("model_loads", 0)
                         for (task, _), value in airflow_db.xcoms(Path(env["AIRFLOW_HOME"]), DAG_ID, drop_id).items()
                         if task.startswith("ingest_batch.") and isinstance(value, dict))
    finally:
        subprocess.run([sys.executable, "-m", "tools.stack", "down"], env=env, cwd=project, capture_output=True)
        os.environ.clear()
        os.environ.update(saved)
    return {"seconds": seconds, "jobs": len(jobs), "peak_worker_mb": sampler.peak_mb["stage workers"],
            "stages": stages, "cpu": cpu, "run_cpu": {g: sampler.cpu_seconds(started, started + seconds, g)
                                                      for g in STACK_GROUPS},
            "rerun_seconds": rerun_seconds, "rerun_jobs": len(rerun_jobs),
            "first_job_after": first_job,
            "drop_seconds": drop_seconds, "drop_jobs": len(drop_jobs), "drop_loads": int(drop_loads),
            "drop_job_seconds": sum((j.end_time - j.start_time) / 1000 for j in drop_jobs),
            "batches": summary.get("batches", 0) if summary else 0,
            "succeeded": summary["succeeded"] if summary else 0,
            "failed": len(summary["failed"]) if summary else -1}


# Who used the machine's CPUs during the DAG's run, by the part of the stack they belong to.
STACK_GROUPS = ("stage workers", "ray daemons", "airflow", "storage")


def stack_group(process) -> str | None:
    line = cmdline(process)
    if line.startswith("ray::") or "include.stages" in line:
        return "stage workers"  # the stages' actors and tasks, and the jobs' drivers
    if any(part in line for part in ("raylet", "gcs_server", "/ray/dashboard", "/ray/_private", "ray/autoscaler")):
        return "ray daemons"
    if "airflow" in line:
        return "airflow"
    if "weed" in line or "chroma" in line:
        return "storage"
    return None


def print_cpu(plain_result: dict, dag_result: dict) -> None:
    """Per stage: plain seconds, seconds in its Ray jobs, and the cores each part of the stack kept
    busy while they ran (cores: CPU seconds per second of the jobs)."""
    groups = "".join(f"{group:>15}" for group in STACK_GROUPS)
    print(f"    {'stage':<8}{'plain s':>9}{'Ray jobs s':>11}{'Ray/plain':>10}   cores used in its jobs by:{groups}")
    for stage, plain_seconds in plain_result["stages"].items():
        ray_seconds = dag_result["stages"].get(stage, 0.0)
        used = dag_result["cpu"].get(stage, {})
        cores = "".join(f"{used.get(group, 0.0) / max(ray_seconds, 1e-9):>15.2f}" for group in STACK_GROUPS)
        print(f"    {stage:<8}{plain_seconds:>9.1f}{ray_seconds:>11.1f}{ray_seconds / plain_seconds:>10.2f}"
              f"   {'':<26}{cores}", flush=True)
    whole = "".join(f"{dag_result['run_cpu'][group] / dag_result['seconds']:>15.2f}" for group in STACK_GROUPS)
    between = dag_result["seconds"] - sum(dag_result["stages"].values())
    print(f"    the whole run: {between:.1f}s of it outside Ray jobs; cores used by:{whole}", flush=True)


def _print_drop(workers: str, result: dict) -> None:
    print(f"    one more drop ({workers} workers): {result['drop_seconds']:.1f}s, {result['drop_jobs']} Ray jobs "
          f"({result['drop_job_seconds']:.1f}s in them), {result['drop_loads']} model loads", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_ingest", description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", choices=["demo", "mixed", "both"], default="both")
    parser.add_argument("--documents", type=int, default=50)
    parser.add_argument("--big-pages", type=int, default=320)
    parser.add_argument("--project", type=Path, default=ROOT,
                        help="run the DAG of this checkout instead (e.g. a git worktree of an older commit): "
                        "the before of a before/after comparison")
    parser.add_argument("--cold-too", action="store_true",
                        help="run the DAG a second time with warm workers off (PIPELINE_WARM_IDLE_SECONDS=0): "
                        "the baseline of what warm workers save")
    parser.add_argument("--plain-child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.plain_child:
        print(json.dumps(run_plain(args.plain_child)))
        return 0

    # One Ray token for every stack the bench starts: Ray's job client keeps the first token it read for
    # the whole process, and a second stack with a token of its own refused it.
    if not os.environ.get("RAY_AUTH_TOKEN_PATH"):
        token = Path(tempfile.mkdtemp(prefix="bench-ray-token-")) / "ray_auth_token"
        token.write_text(secrets.token_hex(32))
        token.chmod(0o600)
        os.environ["RAY_AUTH_TOKEN_PATH"] = str(token)
    rows = []
    for name in (["demo", "mixed"] if args.corpus == "both" else [args.corpus]):
        scratch = Path(tempfile.mkdtemp(prefix=f"bench-{name}-", dir="/tmp"))
        corpus = make_corpus(name, scratch / "corpus", args.documents, args.big_pages)
        pages = pages_of(corpus)
        print(f"==> {name}: {len(corpus)} files, {pages} pages", flush=True)
        plain_result, plain_mb = plain(scratch / "corpus")
        print(f"    plain: {plain_result['seconds']:.1f}s", flush=True)
        dag_result = dag(corpus, scratch / "w", args.project.resolve())
        print(f"    dag:   {dag_result['seconds']:.1f}s, {dag_result['jobs']} Ray jobs, the first "
              f"{dag_result['first_job_after']:.0f}s after the run started", flush=True)
        print(f"    again, unchanged: {dag_result['rerun_seconds']:.1f}s, {dag_result['rerun_jobs']} Ray jobs", flush=True)
        print_cpu(plain_result, dag_result)
        _print_drop("warm", dag_result)
        if args.cold_too:
            cold = dag(corpus, scratch / "w-cold", args.project.resolve(), {"PIPELINE_WARM_IDLE_SECONDS": "0"})
            print(f"    dag, warm workers off: {cold['seconds']:.1f}s ({dag_result['seconds'] / cold['seconds']:.2f}x "
                  "the cold run's time with them on)", flush=True)
            _print_drop("cold", cold)
            print(f"    one more drop, warm / cold: {dag_result['drop_seconds'] / cold['drop_seconds']:.2f}x the run's "
                  f"seconds, {dag_result['drop_job_seconds'] / cold['drop_job_seconds']:.2f}x the seconds in Ray jobs",
                  flush=True)
        rows.append((name, len(corpus), pages, plain_result, plain_mb, dag_result))
        shutil.rmtree(scratch, ignore_errors=True)

    header = (f"{'corpus':<7}{'files':>6}{'pages':>7}{'plain s':>9}{'dag s':>8}{'plain/dag':>10}{'batches':>8}"
              f"{'Ray jobs':>9}{'pages/s plain':>14}{'pages/s dag':>12}{'plain MB':>9}{'worker MB':>10}{'failed':>7}"
              f"{'again s':>8}{'again jobs':>11}")
    print("\n" + header + "\n" + "-" * len(header))
    for name, files, pages, p, p_mb, d in rows:
        print(f"{name:<7}{files:>6}{pages:>7}{p['seconds']:>9.1f}{d['seconds']:>8.1f}{p['seconds'] / d['seconds']:>10.2f}"
              f"{d['batches']:>8}{d['jobs']:>9}{pages / p['seconds']:>14.2f}{pages / d['seconds']:>12.2f}"
              f"{p_mb:>9.0f}{d['peak_worker_mb']:>10.0f}{d['failed']:>7}{d['rerun_seconds']:>8.1f}{d['rerun_jobs']:>11}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The Airflow tier on its own: the ``airflow`` extra installed alone into a second, small
environment, as an Airflow deployment (MWAA, Astro, a Helm chart) would install it, without
the data plane. The DAGs must import there with no error, and so must every module the
Airflow side runs; none of the data plane's libraries may even be installed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
# Distributions the Airflow side must do without (Ray Data needs pyarrow, which is absent too).
DATA_PLANE = ("docling", "torch", "transformers", "presidio_analyzer", "spacy", "chromadb", "pinecone",
              "llama_cpp", "sentence_transformers", "pyarrow")
# What runs in Airflow besides the DAG files: operators, sensors' checks, planning, ledger, report.
AIRFLOW_SIDE = ("include.control.ingest", "include.control.operators", "include.control.dag_parts",
                "include.control.query_planning", "include.control.ledger", "include.control.report",
                "include.control.quarantine", "include.control.settings", "include.control.inbox_events",
                "include.query.report", "include.control.quality", "include.quality.docs",
                "ray_operators.operators.ray_job", "ray_operators.hooks.ray_job", "ray_operators.triggers.ray_job",
                "ray_operators.links.ray_job", "ray_operators.get_provider_info")


@pytest.fixture(scope="module")
def airflow_tier(tmp_path_factory) -> dict[str, str]:
    venv = tmp_path_factory.mktemp("airflow-tier") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    install = subprocess.run(
        [python, "-m", "pip", "install", "--quiet", "-c", str(ROOT / "constraints.txt"), "-e", f"{ROOT}[airflow]"],
        capture_output=True, text=True, timeout=1800)
    assert install.returncode == 0, install.stderr[-4000:]
    home = venv.parent / "airflow"
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("PIPELINE_", "AIRFLOW", "PYTHON", "VIRTUAL_ENV"))}
    env.update({"AIRFLOW_HOME": str(home), "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
                "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "PIPELINE_WORK_DIR": str(venv.parent / "work"), "PATH": f"{venv / 'bin'}:{env.get('PATH', '')}"})
    migrate = subprocess.run([str(venv / "bin" / "airflow"), "db", "migrate"], env=env, capture_output=True,
                             text=True, timeout=600)
    assert migrate.returncode == 0, migrate.stderr[-4000:]
    return {"python": python, "airflow": str(venv / "bin" / "airflow"), **{"env": json.dumps(env)}}


def test_the_airflow_extra_installs_none_of_the_data_plane(airflow_tier):
    script = f"import importlib.util as u; print([m for m in {DATA_PLANE!r} if u.find_spec(m)])"
    found = subprocess.run([airflow_tier["python"], "-c", script], env=json.loads(airflow_tier["env"]),
                           capture_output=True, text=True, check=True)
    assert found.stdout.strip() == "[]"


def test_every_dag_imports_without_error_where_only_the_airflow_side_is_installed(airflow_tier):
    listed = subprocess.run([airflow_tier["airflow"], "dags", "list-import-errors", "--local", "-o", "json"],
                            env=json.loads(airflow_tier["env"]), capture_output=True, text=True, timeout=600)
    assert listed.returncode == 0, listed.stderr[-4000:]
    # Airflow logs its warnings to stdout before the JSON, which is the last line.
    assert json.loads(listed.stdout.strip().splitlines()[-1]) == []
    dags = subprocess.run([airflow_tier["airflow"], "dags", "list", "--local", "-o", "json"],
                          env=json.loads(airflow_tier["env"]), capture_output=True, text=True, timeout=600)
    assert {dag["dag_id"] for dag in json.loads(dags.stdout.strip().splitlines()[-1])} >= {
        "document_ingest", "document_ingest_interval", "rag_batch_query"}


def test_every_module_the_airflow_side_runs_imports_there(airflow_tier):
    script = textwrap.dedent(f"""
        import importlib
        for name in {AIRFLOW_SIDE!r}:
            importlib.import_module(name)
        print("ok")
    """)
    ran = subprocess.run([airflow_tier["python"], "-c", script], env=json.loads(airflow_tier["env"]),
                         capture_output=True, text=True, cwd="/")
    assert ran.returncode == 0 and ran.stdout.strip() == "ok", ran.stderr[-4000:]


def test_the_run_checks_run_and_render_their_data_docs_where_only_the_airflow_side_is_installed(airflow_tier, tmp_path):
    """The summary task checks the run with GX and renders the Data Docs: GX is part of the Airflow side."""
    script = textwrap.dedent(f"""
        from include.control.quality import run_checks
        from include.quality.docs import publish
        from include.quality.expectations import validate
        from include.settings import PipelineSettings
        from include.storage import Storage
        rows = [{{"doc_id": "a", "source_uri": "s3://documents/inbox/a.pdf", "status": "ingested", "chunks": 3,
                 "vectors": 3}}]
        result = validate(run_checks(rows, claimed=set()))
        record = {{"suite": "run", "doc_id": None, "success": result["success"], "result": result}}
        out = publish(Storage(PipelineSettings()), "{tmp_path.as_uri()}/run", [record], run_name="r")
        print(result["success"], out["rendered"])
    """)
    ran = subprocess.run([airflow_tier["python"], "-c", script], env=json.loads(airflow_tier["env"]),
                         capture_output=True, text=True, cwd="/")
    assert ran.returncode == 0 and ran.stdout.strip().splitlines()[-1] == "True 1", ran.stderr[-4000:]
    assert (tmp_path / "run" / "data_docs" / "index.html").exists()


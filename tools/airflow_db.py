"""Read-only look into the embedded Airflow's SQLite database: runs, task states, XComs.

For the demo's report and the integration tests, which run the DAG through the
``airflow`` CLI and then inspect what Airflow recorded.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any


def _connect(airflow_home: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{airflow_home / 'airflow.db'}?mode=ro", uri=True)


def latest_run_id(airflow_home: Path, dag_id: str) -> str | None:
    with _connect(airflow_home) as db:
        row = db.execute(
            "SELECT run_id FROM dag_run WHERE dag_id = ? ORDER BY id DESC LIMIT 1", (dag_id,)
        ).fetchone()
    return row[0] if row else None


def run_ids(airflow_home: Path, dag_id: str) -> list[str]:
    """Every run of the DAG, oldest first."""
    with _connect(airflow_home) as db:
        rows = db.execute("SELECT run_id FROM dag_run WHERE dag_id = ? ORDER BY id", (dag_id,)).fetchall()
    return [row[0] for row in rows]


def runs(airflow_home: Path, dag_id: str) -> list[dict[str, Any]]:
    """Every run of the DAG, oldest first: its id, type (manual, scheduled, asset_triggered,
    backfill), state, when it was queued and started, and its data interval."""
    with _connect(airflow_home) as db:
        db.row_factory = sqlite3.Row
        rows = db.execute(
            "SELECT run_id, run_type, state, queued_at, start_date, end_date, data_interval_start, data_interval_end "
            "FROM dag_run WHERE dag_id = ? ORDER BY id", (dag_id,)).fetchall()
    return [dict(row) for row in rows]


def task_states(airflow_home: Path, dag_id: str, run_id: str) -> dict[tuple[str, int], str]:
    with _connect(airflow_home) as db:
        rows = db.execute(
            "SELECT task_id, map_index, state FROM task_instance WHERE dag_id = ? AND run_id = ?",
            (dag_id, run_id),
        ).fetchall()
    return {(task_id, map_index): state for task_id, map_index, state in rows}


def xcoms(airflow_home: Path, dag_id: str, run_id: str, key: str = "return_value") -> dict[tuple[str, int], Any]:
    with _connect(airflow_home) as db:
        rows = db.execute(
            "SELECT task_id, map_index, value FROM xcom WHERE dag_id = ? AND run_id = ? AND key = ?",
            (dag_id, run_id, key),
        ).fetchall()
    return {(task_id, map_index): json.loads(value) if isinstance(value, (str, bytes)) else value
            for task_id, map_index, value in rows}


def rendered_fields(airflow_home: Path, dag_id: str, run_id: str) -> dict[tuple[str, int], Any]:
    """Each task's rendered template fields, as the UI's "Rendered Template" view shows them."""
    with _connect(airflow_home) as db:
        rows = db.execute(
            "SELECT task_id, map_index, rendered_fields FROM rendered_task_instance_fields "
            "WHERE dag_id = ? AND run_id = ?", (dag_id, run_id),
        ).fetchall()
    return {(task_id, map_index): json.loads(value) if isinstance(value, (str, bytes)) else value
            for task_id, map_index, value in rows}


def all_xcoms(airflow_home: Path, dag_id: str, run_id: str) -> dict[tuple[str, int, str], Any]:
    """Every XCom of the run, whatever its key."""
    with _connect(airflow_home) as db:
        rows = db.execute(
            "SELECT task_id, map_index, key, value FROM xcom WHERE dag_id = ? AND run_id = ?", (dag_id, run_id),
        ).fetchall()
    return {(task_id, map_index, key): json.loads(value) if isinstance(value, (str, bytes)) else value
            for task_id, map_index, key, value in rows}

"""Where a questions file's answers live, and the marker that says which answers are current.

Each questions file has one answers folder, named after its key below the queries prefix with
``%`` and ``/`` escaped: ``a.parquet`` -> ``<answers>/a.parquet/``, ``a/b.parquet`` ->
``<answers>/a%2Fb.parquet/``. The folders are flat, so no file's folder is inside another's, and
no two files share one. Inside, each job writes its parts under ``_jobs/<job id>/`` (hidden from
Parquet dataset readers, so a half-written job is never read), and the marker ``_answers.json``,
written last in one PUT, names the current job's parts: a reader that follows it sees one complete
set of answers, the old or the new, never a mix.

The query job writes them and the Airflow side's planner reads them: this module is light
(no pyarrow, no Ray), so the planner can import it without the data plane.
"""

from __future__ import annotations

from include.settings import PipelineSettings
from include.storage import StorageError, join_uri, relative_key

# Written last, beside the answers' parts: which version of the questions they answer, and which parts.
MARKER = "_answers.json"
JOBS = "_jobs"


def answers_uri_for(settings: PipelineSettings, questions_uri: str) -> str:
    """The answers folder of a questions file under the queries prefix (see the module's doc)."""
    try:
        key = relative_key(settings.queries_uri, questions_uri)
    except StorageError as exc:
        raise ValueError(f"{questions_uri} is not under the queries prefix {settings.queries_uri}: "
                         "name its answers folder (--answers)") from exc
    return join_uri(settings.answers_uri, key.replace("%", "%25").replace("/", "%2F")) + "/"


def job_folder(answers_uri: str, job_id: str) -> str:
    """Where one job writes its parts, inside the answers folder."""
    return join_uri(answers_uri, JOBS, job_id) + "/"

"""Where a questions file's answers live, and the marker that says they are complete.

The query job writes them and the Airflow side's planner reads them: this module is light
(no pyarrow, no Ray), so the planner can import it without the data plane.
"""

from __future__ import annotations

from include.settings import PipelineSettings
from include.storage import join_uri, object_name, relative_key

# Written last, beside the answers' parts: which version of the questions they answer.
MARKER = "_answers.json"


def answers_uri_for(settings: PipelineSettings, questions_uri: str) -> str:
    """``<answers_uri>/<questions key, relative to the queries prefix, without .parquet>/``."""
    try:
        name = relative_key(settings.queries_uri, questions_uri)
    except ValueError:
        name = object_name(questions_uri)
    return join_uri(settings.answers_uri, name.removesuffix(".parquet")) + "/"

"""What Airflow's providers manager learns of this provider (the ``apache_airflow_provider`` entry
point in pyproject.toml): the ``ray`` connection type and its form, the trigger, the extra link.

The provider ships inside the project's package, so it carries the package's name; it imports
nothing of the pipeline and could be published on its own.
"""

from __future__ import annotations

from typing import Any


def get_provider_info() -> dict[str, Any]:
    return {
        "package-name": "document-ingest-pipeline",
        "name": "Ray",
        "description": "Ray jobs from Airflow 3: a deferrable operator, an async trigger, a hook for the Job API.",
        "integrations": [{"integration-name": "Ray", "external-doc-url": "https://docs.ray.io/en/latest/cluster/"
                          "running-applications/job-submission/index.html", "tags": ["compute"]}],
        "operators": [{"integration-name": "Ray", "python-modules": ["ray_operators.operators.ray_job"]}],
        "hooks": [{"integration-name": "Ray", "python-modules": ["ray_operators.hooks.ray_job"]}],
        "triggers": [{"integration-name": "Ray", "python-modules": ["ray_operators.triggers.ray_job"]}],
        "connection-types": [{
            "connection-type": "ray",
            "hook-class-name": "ray_operators.hooks.ray_job.RayJobHook",
            "hook-name": "Ray",
            # The UI's form: a dashboard address and a token, nothing else.
            "ui-field-behaviour": {
                "hidden-fields": ["login"],
                "relabeling": {"host": "Dashboard host (or URL)", "port": "Dashboard port",
                               "schema": "Scheme (http or https)", "password": "Auth token (RAY_AUTH_MODE=token)"},
                "placeholders": {"host": "ray-head.internal", "port": "8265", "schema": "http",
                                 "extra": '{"verify": true, "namespace": "airflow", "timeout": 30, "max_attempts": 5}'},
            },
        }],
        "extra-links": ["ray_operators.links.ray_job.RayJobLink"],
    }

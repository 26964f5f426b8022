"""The provider as Airflow's providers manager sees it: the ``ray`` connection type with its form,
the trigger and the extra link, declared through the package's entry point."""

from __future__ import annotations

import json
from importlib.resources import files

import jsonschema
from ray_operators.get_provider_info import get_provider_info


def test_the_provider_info_is_what_airflows_schema_accepts():
    schema = json.loads(files("airflow").joinpath("provider_info.schema.json").read_text())
    jsonschema.validate(get_provider_info(), schema)


def test_airflow_registers_the_ray_connection_type_with_its_form_and_the_extra_link():
    from airflow.providers_manager import ProvidersManager

    manager = ProvidersManager()
    hook = manager.hooks["ray"]
    assert hook is not None and hook.hook_class_name == "ray_operators.hooks.ray_job.RayJobHook"
    behaviour = manager.field_behaviours["ray"]
    assert "login" in behaviour["hidden_fields"] and "token" in behaviour["relabeling"]["password"].lower()
    assert "ray_operators.links.ray_job.RayJobLink" in manager.extra_links_class_names
    assert "document-ingest-pipeline" in manager.providers

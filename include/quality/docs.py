"""A run's validation results rendered as GX Data Docs, among the run's artifacts.

One site per run (``<run folder>/data_docs/index.html``): a page per validation (each document
each gated stage checked, and the run's own checks), listed on the index by suite, run and
document. Which validations are shown is the caller's choice (``include.control.quality``).

The pages load Bootstrap and jQuery from public CDNs in the reader's browser, as GX's own do
(offline they show unstyled, every number still there). Of the static files GX copies beside
them, only the stylesheets and the icon are uploaded: its images and fonts are 3 MB per site.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from include.quality.expectations import context
from include.storage import Storage, join_uri

SITE = "run"
# What GX's pages use of its static folder; the rest (3 MB of images and fonts) is decoration.
_STATIC_KEPT = ("static/styles/", "static/images/favicon.ico")


def publish(storage: Storage, folder: str, validations: list[dict[str, Any]], *, run_name: str) -> dict[str, Any]:
    """Render ``validations`` (``AssembleContext.check``'s records, and the run's) into
    ``<folder>/data_docs/``; the index's URI and how many pages."""
    from great_expectations.core.expectation_validation_result import ExpectationSuiteValidationResultSchema
    from great_expectations.core.run_identifier import RunIdentifier
    from great_expectations.data_context.types.resource_identifiers import (
        ExpectationSuiteIdentifier,
        ValidationResultIdentifier,
    )

    prefix = join_uri(folder, "data_docs")
    with tempfile.TemporaryDirectory(prefix="data-docs-") as local:
        gx = _site_context(local)
        schema = ExpectationSuiteValidationResultSchema()
        run = RunIdentifier(run_name=run_name)
        for record in validations:
            key = ValidationResultIdentifier(
                expectation_suite_identifier=ExpectationSuiteIdentifier(name=record["suite"]),
                run_id=run, batch_identifier=record.get("doc_id") or record["suite"])
            result = record["result"]
            # Named on its page and the index by the run and the document it checked.
            meta = {**result.get("meta", {}), "run_id": run.to_json_dict(), "document": key.batch_identifier}
            gx.validation_results_store.set(key, schema.load({**result, "meta": meta}))
        gx.build_data_docs(site_names=[SITE])
        for path in sorted(Path(local).rglob("*")):
            name = path.relative_to(local).as_posix()
            if path.is_file() and (not name.startswith("static/") or name.startswith(_STATIC_KEPT)):
                storage.write_bytes(join_uri(prefix, name), path.read_bytes())
    return {"data_docs_uri": join_uri(prefix, "index.html"), "rendered": len(validations)}


def _site_context(local: str) -> Any:
    """The process's GX context with its results store emptied and a site writing to ``local``."""
    gx = context()
    store = gx.validation_results_store
    for key in store.list_keys():
        store.remove_key(key)
    site = {"class_name": "SiteBuilder",
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": local},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"}}
    if SITE in gx.get_config().data_docs_sites or {}:
        gx.update_data_docs_site(SITE, site)
    else:
        gx.add_data_docs_site(SITE, site)
    return gx

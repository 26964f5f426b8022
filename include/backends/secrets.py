"""The workers' secrets, read where the work runs, never sent with a job.

The SDKs read ``OPENAI_API_KEY`` and ``PINECONE_API_KEY`` from the process's environment;
``SOURCE_PSEUDONYM_KEY`` keys the pseudonym under which a source whose name carries PII is stored
(``include.backends.vector_stores.stored_source_uri``). On a cluster whose nodes do not have them
there, ``secrets_manager_secret`` names an AWS Secrets Manager secret (a JSON object holding them)
that each worker reads once, with its own AWS credentials (the node's role), into its own
environment. A key already in the environment wins.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from include.settings import PipelineSettings

log = logging.getLogger(__name__)

PSEUDONYM_KEY = "SOURCE_PSEUDONYM_KEY"
WORKER_SECRETS = ("OPENAI_API_KEY", "PINECONE_API_KEY", PSEUDONYM_KEY)
_loaded: set[str] = set()
_lock = threading.Lock()


def load_worker_secrets(settings: PipelineSettings) -> None:
    name = settings.secrets_manager_secret
    if not name or all(os.environ.get(key) for key in WORKER_SECRETS):
        return
    with _lock:
        if name in _loaded:
            return
        import boto3

        client = boto3.client("secretsmanager", region_name=settings.aws_region,
                              endpoint_url=settings.secrets_manager_endpoint_url)
        with _quiet("botocore", "urllib3"):
            values = json.loads(client.get_secret_value(SecretId=name)["SecretString"])
        found = [key for key in WORKER_SECRETS if values.get(key)]
        for key in found:
            os.environ.setdefault(key, values[key])
        _loaded.add(name)
        log.info("Secrets from Secrets Manager secret %s: %s", name, ", ".join(found) or "none")


@contextmanager
def _quiet(*names: str) -> Iterator[None]:
    """At DEBUG, botocore logs response bodies: the secret's value would land in the worker's log."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(max(logger.getEffectiveLevel(), logging.INFO))
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)

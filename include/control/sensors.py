"""A sensor that waits for *work* under an S3 prefix, not for objects.

The Amazon provider's ``S3KeySensor`` returns before its ``check_fn`` when no key matches, so an
inbox whose last documents were deleted never looked like work, and their vectors stayed
searchable. This sensor hands ``has_work`` the listing (Key, Size, ETag) every time, an empty one
included; only a key the run *names* must exist before it is asked.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Collection, Sequence
from functools import cached_property
from typing import Any

from airflow.providers.amazon.aws.hooks.s3 import S3Hook
from airflow.sdk import BaseSensorOperator
from airflow.sdk.exceptions import AirflowSkipException

# Where a key pattern's wildcards begin: the listing is of the prefix before them.
_WILDCARD = re.compile(r"[\[*?]")
# A key's own '*', '?' and '[' as a pattern spells them.
_ESCAPED = re.compile(r"\[[*?\[]\]")

def listing_entries(hook: S3Hook, bucket: str, prefix: str) -> list[dict[str, Any]]:
    """The objects under a prefix as the work checks read them: ``Key``, ``Size`` and ``ETag``."""
    return [{"Key": entry["Key"], "Size": entry["Size"], "ETag": entry["ETag"]}
            for entry in hook.iter_file_metadata(prefix, bucket)]


HasWork = Callable[[list[dict[str, Any]], dict[str, Any] | None], bool]


class S3WorkSensor(BaseSensorOperator):
    """Poke until ``has_work(files, params)`` says the objects under the patterns are work.

    :param bucket_name: the bucket listed.
    :param bucket_keys: key patterns (``fnmatch``, case-sensitive; ``[*]`` for a literal ``*``); a
        pattern without a wildcard names one key, which must exist before ``has_work`` is asked.
    :param has_work: gets the listing entries matched (``Key``, ``Size``, ``ETag``) and the run's params.
    :param aws_conn_id: the connection to S3.
    :param skip_idle_run_types: runs of these types (``asset_triggered``, ``scheduled``...) that find no work
        skip at once instead of waiting for some: an event or a sweep that has nothing to do is done.
    """

    template_fields: Sequence[str] = ("bucket_keys",)

    def __init__(self, *, bucket_name: str, bucket_keys: str | list[str], has_work: HasWork,
                 aws_conn_id: str | None = "aws_default", skip_idle_run_types: Collection[str] = (),
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.bucket_name = bucket_name
        self.bucket_keys = bucket_keys
        self.has_work = has_work
        self.aws_conn_id = aws_conn_id
        self.skip_idle_run_types = frozenset(skip_idle_run_types)

    @cached_property
    def hook(self) -> S3Hook:
        return S3Hook(aws_conn_id=self.aws_conn_id)

    def poke(self, context: Any) -> bool:
        patterns = [self.bucket_keys] if isinstance(self.bucket_keys, str) else list(self.bucket_keys)
        files: list[dict[str, Any]] = []
        for pattern in patterns:
            prefix = _WILDCARD.split(pattern, maxsplit=1)[0]
            matched = [entry for entry in listing_entries(self.hook, self.bucket_name, prefix)
                       if fnmatch.fnmatchcase(entry["Key"], pattern)]
            if not matched and not _WILDCARD.search(_ESCAPED.sub("", pattern)):
                self.log.info("Waiting for s3://%s/%s", self.bucket_name, pattern)
                return False
            files.extend(matched)
        if self.has_work(files, context.get("params")):
            return True
        run_type = str(getattr(context.get("dag_run"), "run_type", ""))
        if run_type in self.skip_idle_run_types:
            raise AirflowSkipException(f"no work for this {run_type} run: an earlier run took it, or there was none")
        return False

"""Object storage behind one small interface, for ``s3://`` and ``file://`` URIs.

Stages only ever see URIs, so the same code reads a local folder in a unit test,
SeaweedFS in the embedded stack and AWS S3 in production.

Any object key is a document name, whatever its characters (``#``, ``?``, ``%``, spaces,
non-ASCII letters). So URIs are taken apart by hand, never with ``urllib.parse.urlparse``,
which would cut a key at ``#`` (fragment) or ``?`` (query). The rule:

- ``s3://<bucket>/<key>`` carries the key raw, as S3 stores it and the AWS CLI prints it (no
  percent-encoding): the bucket runs up to the first ``/``, the key is everything after it.
- ``file://`` URIs are canonical percent-encoded URIs (RFC 8089), what ``Path.as_uri()`` makes:
  ``file:///inbox/a%231.pdf`` is the file ``/inbox/a#1.pdf``. ``list`` returns that form and
  every call decodes it, so an encoded ``#`` (``%23``) stays part of the name.
- ``join_uri(base, *parts)`` takes raw keys as parts and percent-encodes them for a ``file://``
  base, so a key relative to the inbox names the same object under either scheme.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote, unquote

from include.settings import PipelineSettings, get_settings

if TYPE_CHECKING:
    from botocore.exceptions import ClientError

_HASH_CHUNK = 1024 * 1024
# An RFC 3986 scheme and "://" at the very start: "odd/http://x.pdf" stays a key relative to the inbox.
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")


class StorageError(RuntimeError):
    """A storage call failed; the message names the URI."""


class ObjectNotFound(StorageError):
    pass


def uri_scheme(uri: str) -> str | None:
    """The lower-cased scheme of ``<scheme>://...``, or None for anything else (a relative key)."""
    match = _SCHEME.match(uri)
    return match.group(1).lower() if match else None


def join_uri(base: str, *parts: str) -> str:
    """Join raw key parts onto a URI with exactly one slash between them.

    For a ``file://`` base the parts are percent-encoded as ``Path.as_uri()`` does (``/`` kept),
    so the result is exactly the URI ``list`` returns for that object.
    """
    encode = uri_scheme(base) == "file"
    out = base.rstrip("/")
    for part in parts:
        part = part.strip("/")
        # surrogateescape: a file name that is not valid UTF-8 keeps its bytes, as in Path.as_uri().
        out = f"{out}/{quote(part, safe='/', errors='surrogateescape') if encode else part}"
    return out


def split_s3_uri(uri: str) -> tuple[str, str]:
    """Bucket and key of ``s3://bucket/key``; the key is everything after the bucket, verbatim."""
    if uri_scheme(uri) != "s3":
        raise StorageError(f"not an s3:// URI: {uri!r}")
    bucket, _, key = uri[len("s3://") :].partition("/")
    if not bucket:
        raise StorageError(f"no bucket in s3:// URI: {uri!r}")
    return bucket, key


def file_uri_path(uri: str) -> Path:
    """The local path of a percent-encoded ``file:///path`` (or ``file://localhost/path``) URI."""
    if uri_scheme(uri) != "file":
        raise StorageError(f"not a file:// URI: {uri!r}")
    authority, slash, path = uri[len("file://") :].partition("/")
    if authority.lower() not in ("", "localhost") or not slash:
        raise StorageError(f"not a local absolute file:// URI: {uri!r}")
    return Path(unquote("/" + path, errors="surrogateescape"))


def canonical_uri(uri: str) -> str:
    """The spelling ``list`` gives an object's URI, so one object has one source URI (and one id)."""
    scheme = uri_scheme(uri)
    if scheme == "file":
        return file_uri_path(uri).as_uri()
    if scheme == "s3":
        bucket, key = split_s3_uri(uri)
        return f"s3://{bucket}/{key}"
    raise StorageError(f"unsupported URI scheme {scheme!r} in {uri!r}")


def object_name(uri: str) -> str:
    """The last path segment of the object's raw key (decoded for ``file://``): the file's name."""
    scheme = uri_scheme(uri)
    if scheme == "file":
        return file_uri_path(uri).name
    if scheme == "s3":
        return split_s3_uri(uri)[1].rsplit("/", 1)[-1]
    raise StorageError(f"unsupported URI scheme {scheme!r} in {uri!r}")


class Backend(Protocol):
    def read_bytes(self, uri: str) -> bytes: ...
    def write_bytes(self, uri: str, data: bytes) -> None: ...
    def exists(self, uri: str) -> bool: ...
    def list(self, prefix_uri: str) -> list[str]: ...
    def delete(self, uri: str) -> None: ...
    def iter_chunks(self, uri: str) -> Iterator[bytes]: ...


class LocalBackend:
    @staticmethod
    def _path(uri: str) -> Path:
        return file_uri_path(uri)

    def read_bytes(self, uri: str) -> bytes:
        try:
            return self._path(uri).read_bytes()
        except FileNotFoundError as exc:
            raise ObjectNotFound(f"no object at {uri}") from exc

    def write_bytes(self, uri: str, data: bytes) -> None:
        path = self._path(uri)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(data)
        tmp.replace(path)  # readers never see a half-written file

    def exists(self, uri: str) -> bool:
        return self._path(uri).is_file()

    def list(self, prefix_uri: str) -> list[str]:
        root = self._path(prefix_uri)
        if not root.is_dir():
            return []
        # Not resolve()d: under a symlinked folder that would name a file outside the prefix,
        # unlike join_uri(prefix, key) for the same file.
        return sorted(p.as_uri() for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))

    def delete(self, uri: str) -> None:
        self._path(uri).unlink(missing_ok=True)

    def iter_chunks(self, uri: str) -> Iterator[bytes]:
        try:
            with self._path(uri).open("rb") as handle:
                while block := handle.read(_HASH_CHUNK):
                    yield block
        except FileNotFoundError as exc:
            raise ObjectNotFound(f"no object at {uri}") from exc


def _error_code(exc: ClientError) -> str | None:
    return exc.response.get("Error", {}).get("Code")


class S3Backend:
    def __init__(self, endpoint_url: str | None, region: str) -> None:
        import boto3
        from botocore.config import Config

        self._client = boto3.client(
            "s3",
            endpoint_url=endpoint_url,
            region_name=region,
            config=Config(retries={"max_attempts": 5, "mode": "adaptive"}),
        )

    def _get(self, uri: str) -> Any:
        from botocore.exceptions import ClientError

        bucket, key = split_s3_uri(uri)
        try:
            return self._client.get_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            # Only NoSuchKey: a missing bucket (NoSuchBucket, also a 404) is a configuration
            # error that must not pass for a document that vanished.
            if _error_code(exc) == "NoSuchKey":
                raise ObjectNotFound(f"no object at {uri}") from exc
            raise

    def read_bytes(self, uri: str) -> bytes:
        return self._get(uri)["Body"].read()

    def write_bytes(self, uri: str, data: bytes) -> None:
        bucket, key = split_s3_uri(uri)
        self._client.put_object(Bucket=bucket, Key=key, Body=data)

    def exists(self, uri: str) -> bool:
        from botocore.exceptions import ClientError

        bucket, key = split_s3_uri(uri)
        try:
            self._client.head_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            # A HEAD response has no body to carry an error code: botocore reports the bare status.
            # A missing bucket is a 404 here too, and its object does not exist either.
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status == 404 or _error_code(exc) in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True

    def list(self, prefix_uri: str) -> list[str]:
        bucket, prefix = split_s3_uri(prefix_uri)
        paginator = self._client.get_paginator("list_objects_v2")
        uris = []
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                if not obj["Key"].endswith("/"):  # skip folder markers
                    uris.append(f"s3://{bucket}/{obj['Key']}")
        return sorted(uris)

    def delete(self, uri: str) -> None:
        bucket, key = split_s3_uri(uri)
        self._client.delete_object(Bucket=bucket, Key=key)

    def iter_chunks(self, uri: str) -> Iterator[bytes]:
        body = self._get(uri)["Body"]
        yield from body.iter_chunks(_HASH_CHUNK)


class Storage:
    """Dispatches each call to the backend of the URI's scheme."""

    def __init__(self, settings: PipelineSettings | None = None) -> None:
        self._settings = settings or get_settings()
        self._backends: dict[str, Backend] = {}

    def __getstate__(self) -> dict[str, Any]:
        # SDK clients do not pickle; they are rebuilt on first use wherever we land.
        return {"_settings": self._settings, "_backends": {}}

    def _backend(self, uri: str) -> Backend:
        scheme = uri_scheme(uri)
        if scheme is None:
            raise StorageError(f"not a URI (no scheme://): {uri!r}")
        if scheme not in self._backends:
            if scheme == "file":
                self._backends[scheme] = LocalBackend()
            elif scheme == "s3":
                self._backends[scheme] = S3Backend(
                    self._settings.s3_endpoint_url, self._settings.aws_region
                )
            else:
                raise StorageError(f"unsupported URI scheme {scheme!r} in {uri!r}")
        return self._backends[scheme]

    def read_bytes(self, uri: str) -> bytes:
        return self._backend(uri).read_bytes(uri)

    def write_bytes(self, uri: str, data: bytes) -> None:
        self._backend(uri).write_bytes(uri, data)

    def read_text(self, uri: str) -> str:
        return self.read_bytes(uri).decode("utf-8")

    def write_text(self, uri: str, text: str) -> None:
        self.write_bytes(uri, text.encode("utf-8"))

    def read_json(self, uri: str) -> Any:
        return json.loads(self.read_bytes(uri))

    def write_json(self, uri: str, value: Any) -> None:
        self.write_bytes(uri, json.dumps(value, indent=2, sort_keys=True).encode())

    def read_jsonl(self, uri: str) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.read_text(uri).splitlines() if line]

    def write_jsonl(self, uri: str, rows: list[dict[str, Any]]) -> None:
        self.write_text(uri, "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows))

    def exists(self, uri: str) -> bool:
        return self._backend(uri).exists(uri)

    def list(self, prefix_uri: str) -> list[str]:
        return self._backend(prefix_uri).list(prefix_uri)

    def delete(self, uri: str) -> None:
        self._backend(uri).delete(uri)

    def sha256(self, uri: str) -> tuple[str, int]:
        """Content hash and size, streamed so a large PDF is never held in memory."""
        digest, size = hashlib.sha256(), 0
        for block in self._backend(uri).iter_chunks(uri):
            digest.update(block)
            size += len(block)
        return digest.hexdigest(), size

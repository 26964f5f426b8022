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
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
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

    infrastructure = True  # the store, its credentials or its configuration: not a document's doing


class ObjectNotFound(StorageError):
    """The object is not there: a document that vanished, or an output that was removed."""

    infrastructure = False


class VersionChanged(StorageError):
    """A conditional copy or delete found another version of the object than the one it was for."""

    infrastructure = False


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


def relative_key(prefix_uri: str, uri: str) -> str:
    """The raw key of ``uri`` below ``prefix_uri`` (decoded for ``file://``), for ``join_uri`` elsewhere."""
    prefix = prefix_uri.rstrip("/") + "/"
    if not uri.startswith(prefix):
        raise StorageError(f"{uri} is not under {prefix_uri}")
    rest = uri[len(prefix) :]
    return unquote(rest, errors="surrogateescape") if uri_scheme(uri) == "file" else rest


def object_name(uri: str) -> str:
    """The last path segment of the object's raw key (decoded for ``file://``): the file's name."""
    scheme = uri_scheme(uri)
    if scheme == "file":
        return file_uri_path(uri).name
    if scheme == "s3":
        return split_s3_uri(uri)[1].rsplit("/", 1)[-1]
    raise StorageError(f"unsupported URI scheme {scheme!r} in {uri!r}")


@dataclass(frozen=True)
class ObjectInfo:
    """A listed object: its URI, size, and a version tag that changes whenever its bytes may have.

    The tag is S3's ETag, or a local file's modification time and size: equal tags mean
    unchanged bytes without reading them; a different tag means "hash it to be sure".
    """

    uri: str
    size: int
    version: str
    # When the object was last written (Unix seconds): when it "arrived", for a run over an interval.
    modified: float | None = field(default=None, compare=False)


class Backend(Protocol):
    def read_bytes(self, uri: str) -> bytes: ...
    def write_bytes(self, uri: str, data: bytes) -> None: ...
    def exists(self, uri: str) -> bool: ...
    def list(self, prefix_uri: str) -> list[ObjectInfo]: ...
    def delete(self, uri: str) -> None: ...
    def iter_chunks(self, uri: str) -> Iterator[bytes]: ...
    def stat(self, uri: str) -> ObjectInfo: ...
    # ``if_version``: only if the object is still that version (``VersionChanged`` otherwise).
    def copy(self, source_uri: str, target_uri: str, if_version: str | None = None) -> None: ...
    def delete_version(self, uri: str, version: str) -> None: ...


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

    @staticmethod
    def _info(path: Path) -> ObjectInfo:
        stat = path.stat()
        return ObjectInfo(path.as_uri(), stat.st_size, f"{stat.st_mtime_ns:x}-{stat.st_size:x}", stat.st_mtime)

    def stat(self, uri: str) -> ObjectInfo:
        path = self._path(uri)
        if not path.is_file():
            raise ObjectNotFound(f"no object at {uri}")
        info = self._info(path)
        return ObjectInfo(uri, info.size, info.version, info.modified)

    def _check_version(self, uri: str, version: str) -> None:
        # Not atomic with what follows: a local folder is for development; S3 checks server-side.
        if (current := self.stat(uri).version) != version:
            raise VersionChanged(f"{uri} is version {current} now, not {version}")

    def copy(self, source_uri: str, target_uri: str, if_version: str | None = None) -> None:
        if if_version is not None:
            self._check_version(source_uri, if_version)
        source, target = self._path(source_uri), self._path(target_uri)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")
        try:
            shutil.copyfile(source, tmp)
        except FileNotFoundError as exc:
            raise ObjectNotFound(f"no object at {source_uri}") from exc
        tmp.replace(target)

    def list(self, prefix_uri: str) -> list[ObjectInfo]:
        """Every file under the folder, or, as S3 does, whose path starts with the prefix."""
        root = self._path(prefix_uri)
        if root.is_dir():
            tops = [root]
        elif prefix_uri.endswith("/") or not root.parent.is_dir():
            return []
        else:
            tops = [path for path in root.parent.iterdir() if path.name.startswith(root.name)]
        found = []
        for top in tops:
            # Not resolve()d: under a symlinked folder that would name a file outside the prefix,
            # unlike join_uri(prefix, key) for the same file.
            for path in ([top] if top.is_file() else top.rglob("*")):
                if path.is_file() and not path.name.startswith("."):
                    found.append(self._info(path))
        return sorted(found, key=lambda info: info.uri)

    def delete(self, uri: str) -> None:
        self._path(uri).unlink(missing_ok=True)

    def delete_version(self, uri: str, version: str) -> None:
        self._check_version(uri, version)
        self.delete(uri)

    def iter_chunks(self, uri: str) -> Iterator[bytes]:
        try:
            with self._path(uri).open("rb") as handle:
                while block := handle.read(_HASH_CHUNK):
                    yield block
        except FileNotFoundError as exc:
            raise ObjectNotFound(f"no object at {uri}") from exc


def _error_code(exc: ClientError) -> str | None:
    return exc.response.get("Error", {}).get("Code")


def s3_object_info(bucket: str, listed: dict[str, Any]) -> ObjectInfo:
    """An entry of ``list_objects_v2`` (as boto3, or Airflow's S3 hook, returns it) as an ``ObjectInfo``."""
    modified = listed.get("LastModified")
    return ObjectInfo(f"s3://{bucket}/{listed['Key']}", int(listed["Size"]), str(listed["ETag"]).strip('"'),
                      modified.timestamp() if modified is not None else None)


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

    def list(self, prefix_uri: str) -> list[ObjectInfo]:
        bucket, prefix = split_s3_uri(prefix_uri)
        paginator = self._client.get_paginator("list_objects_v2")
        found = []
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                if not obj["Key"].endswith("/"):  # skip folder markers
                    found.append(s3_object_info(bucket, obj))
        return sorted(found, key=lambda info: info.uri)

    def delete(self, uri: str) -> None:
        bucket, key = split_s3_uri(uri)
        self._client.delete_object(Bucket=bucket, Key=key)

    def delete_version(self, uri: str, version: str) -> None:
        """S3's conditional delete (``If-Match``): a newer upload under the key is left alone."""
        from botocore.exceptions import ClientError

        bucket, key = split_s3_uri(uri)
        try:
            self._client.delete_object(Bucket=bucket, Key=key, IfMatch=f'"{version}"')
        except ClientError as exc:
            if _error_code(exc) in ("PreconditionFailed", "412"):
                raise VersionChanged(f"{uri} is no longer version {version}") from exc
            if _error_code(exc) in ("NoSuchKey", "404"):
                raise ObjectNotFound(f"no object at {uri}") from exc
            raise

    def stat(self, uri: str) -> ObjectInfo:
        from botocore.exceptions import ClientError

        bucket, key = split_s3_uri(uri)
        try:
            head = self._client.head_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                raise ObjectNotFound(f"no object at {uri}") from exc
            raise
        modified = head.get("LastModified")
        return ObjectInfo(uri, int(head["ContentLength"]), str(head["ETag"]).strip('"'),
                          modified.timestamp() if modified is not None else None)

    def copy(self, source_uri: str, target_uri: str, if_version: str | None = None) -> None:
        """Server-side (multipart above 8 MB, so any size S3 holds); the bytes never pass through here.
        With ``if_version``, S3 copies only that version (``CopySourceIfMatch``)."""
        from botocore.exceptions import ClientError

        bucket, key = split_s3_uri(source_uri)
        target_bucket, target_key = split_s3_uri(target_uri)
        extra = {"CopySourceIfMatch": f'"{if_version}"'} if if_version is not None else None
        try:
            self._client.copy({"Bucket": bucket, "Key": key}, target_bucket, target_key, ExtraArgs=extra)
        except ClientError as exc:
            if _error_code(exc) in ("NoSuchKey", "404"):
                raise ObjectNotFound(f"no object at {source_uri}") from exc
            if _error_code(exc) in ("PreconditionFailed", "412"):
                raise VersionChanged(f"{source_uri} is no longer version {if_version}") from exc
            raise

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
        return [info.uri for info in self.list_objects(prefix_uri)]

    def list_objects(self, prefix_uri: str) -> list[ObjectInfo]:
        """Every object under the prefix, sorted by URI, with its size and version tag."""
        return self._backend(prefix_uri).list(prefix_uri)

    def delete(self, uri: str) -> None:
        self._backend(uri).delete(uri)

    def stat(self, uri: str) -> ObjectInfo:
        """Size and version tag of one object; ``ObjectNotFound`` if there is none."""
        return self._backend(uri).stat(uri)

    def move(self, source_uri: str, target_uri: str, *, if_version: str | None = None) -> bool:
        """Copy, then delete the source: the object is never absent from both places. With
        ``if_version``, only that version moves (``VersionChanged`` if the source is another one
        already), and a newer version uploaded meanwhile is never deleted: it stays, and the result
        is False (True when the source is gone)."""
        source = self._backend(source_uri)
        if uri_scheme(source_uri) != uri_scheme(target_uri):
            if if_version is not None and (current := source.stat(source_uri).version) != if_version:
                raise VersionChanged(f"{source_uri} is version {current} now, not {if_version}")
            self.write_bytes(target_uri, self.read_bytes(source_uri))
        else:
            source.copy(source_uri, target_uri, if_version=if_version)
        if if_version is None:
            self.delete(source_uri)
            return True
        try:
            source.delete_version(source_uri, if_version)
        except VersionChanged:
            return False
        return True

    def arrow_filesystem(self, uri: str) -> tuple[Any, str]:
        """A pyarrow filesystem and path for ``uri``: what Ray Data reads and writes Parquet through.

        S3 credentials come from the standard chain (variables, profile, the worker's role), as
        for boto3; the endpoint and region from the settings.
        """
        from urllib.parse import urlsplit

        import pyarrow.fs

        scheme = uri_scheme(uri)
        if scheme == "file":
            return pyarrow.fs.LocalFileSystem(), str(file_uri_path(uri))
        if scheme == "s3":
            bucket, key = split_s3_uri(uri)
            options: dict[str, Any] = {"region": self._settings.aws_region}
            if self._settings.s3_endpoint_url:
                endpoint = urlsplit(self._settings.s3_endpoint_url)
                options.update(endpoint_override=endpoint.netloc, scheme=endpoint.scheme or "https")
            return pyarrow.fs.S3FileSystem(**options), f"{bucket}/{key}"
        raise StorageError(f"unsupported URI scheme {scheme!r} in {uri!r}")

    def sha256(self, uri: str) -> tuple[str, int]:
        """Content hash and size, streamed so a large PDF is never held in memory."""
        digest, size = hashlib.sha256(), 0
        for block in self._backend(uri).iter_chunks(uri):
            digest.update(block)
            size += len(block)
        return digest.hexdigest(), size

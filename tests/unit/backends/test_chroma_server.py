"""ChromaStore against a real Chroma server (`chroma run`), as the stack and a cluster use it.

Small hand-made 4-d vectors: no embedding model is needed to check the store's contract.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from include.backends.vector_stores import ChromaStore, VectorRecord
from include.settings import PipelineSettings

CHROMA = Path(sys.executable).parent / "chroma"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _heartbeat(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/api/v2/heartbeat", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def chroma_url(tmp_path_factory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("chroma-server")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = (folder / "chroma.log").open("wb")
    server = subprocess.Popen(
        [str(CHROMA), "run", "--path", str(folder / "data"), "--host", "127.0.0.1", "--port", str(port)],
        env={**os.environ, "ANONYMIZED_TELEMETRY": "False"},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while not _heartbeat(url):
            if server.poll() is not None or time.monotonic() > deadline:
                log_text = (folder / "chroma.log").read_text()[-2000:]
                pytest.fail(f"chroma run did not answer on {url}:\n{log_text}")
            time.sleep(0.3)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


@pytest.fixture
def server_settings(chroma_url, tmp_path) -> PipelineSettings:
    # One collection per test: the server is shared by the whole module.
    return PipelineSettings(work_dir=tmp_path / "work", chroma_url=chroma_url,
                            chroma_collection=f"t{uuid.uuid4().hex}")


def _record(doc_id: str, n: int, vector: list[float],
            source: str = "s3://documents/inbox/a.pdf") -> VectorRecord:
    return VectorRecord(
        id=f"{doc_id}#{n}",
        vector=vector,
        text=f"chunk {n} of {doc_id}",
        metadata={"doc_id": doc_id, "source_uri": source, "page_start": n, "page_end": n, "heading": ""},
    )


def test_upsert_count_query_and_delete_stale_go_through_the_server(server_settings, chroma_url):
    store = ChromaStore(server_settings)
    assert store.location == f"{chroma_url}#{server_settings.chroma_collection}"
    records = [
        _record("a-1", 0, [1.0, 0.0, 0.0, 0.0]),
        _record("a-1", 1, [0.0, 1.0, 0.0, 0.0]),
        _record("a-1", 2, [0.0, 0.0, 1.0, 0.0]),
    ]
    store.upsert(records)
    store.upsert(records)  # same ids: an upsert, not new vectors
    assert store.count() == store.count("a-1") == 3

    hits = store.query([0.1, 0.9, 0.0, 0.0], k=2)
    assert [h.id for h in hits] == ["a-1#1", "a-1#0"]
    assert hits[0].score > 0.99 and hits[0].text == "chunk 1 of a-1" and hits[0].metadata["page_start"] == 1

    # A new version of the same source keeps one chunk: everything else of that source goes.
    store.upsert([_record("a-2", 0, [0.0, 0.0, 0.0, 1.0])])
    store.upsert([_record("b-1", 0, [1.0, 1.0, 0.0, 0.0], source="s3://documents/inbox/b.pdf")])
    assert store.delete_stale("s3://documents/inbox/a.pdf", keep_ids={"a-2#0"}) == 3
    assert store.count("a-1") == 0 and store.count("a-2") == 1 and store.count() == 2
    assert store.delete_stale("s3://documents/inbox/a.pdf", keep_ids={"a-2#0"}) == 0
    # A client of the server never opens a local database (or its lock file).
    assert not (server_settings.work_dir / "chroma").exists()


def test_two_clients_as_two_ray_workers_see_each_others_writes(server_settings):
    first, second = ChromaStore(server_settings), ChromaStore(server_settings)
    first.upsert([_record("a-1", 0, [1.0, 0.0, 0.0, 0.0])])
    second.upsert([_record("b-1", 0, [0.0, 1.0, 0.0, 0.0], source="s3://documents/inbox/b.pdf")])
    assert first.count() == second.count() == 2
    assert second.query([1.0, 0.0, 0.0, 0.0], k=1)[0].id == "a-1#0"
    assert first.delete_stale("s3://documents/inbox/b.pdf", keep_ids=set()) == 1
    assert second.count() == 1 and second.count("b-1") == 0


def test_a_chroma_url_that_is_not_http_is_refused(tmp_path):
    with pytest.raises(ValueError, match="http://host:port"):
        ChromaStore(PipelineSettings(work_dir=tmp_path, chroma_url="127.0.0.1:8000"))

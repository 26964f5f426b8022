"""A local fake of AWS Secrets Manager's ``GetSecretValue``, for the real boto3 client.

Secrets Manager speaks AWS JSON 1.1: ``POST /`` with ``X-Amz-Target:
secretsmanager.GetSecretValue`` and a JSON body ``{"SecretId": ...}``; the answer is JSON with
``ARN``, ``Name``, ``VersionId``, ``SecretString`` and ``CreatedDate``, and an unknown secret is
HTTP 400 with ``{"__type": "ResourceNotFoundException", "message": ...}``, which boto3 raises as
``client.exceptions.ResourceNotFoundException``. Signatures are not checked. Point boto3 at it
with ``endpoint_url=fake.endpoint_url``::

    with FakeSecretsManager({"pipeline/api-keys": '{"OPENAI_API_KEY": "sk-..."}'}) as fake:
        boto3.client("secretsmanager", endpoint_url=fake.endpoint_url, region_name="us-east-1")

``fake.reads`` counts the reads of each secret. Secret values are never logged.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class FakeSecretsManager:
    def __init__(self, secrets: dict[str, str]) -> None:
        self.secrets = dict(secrets)
        self.reads: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-secretsmanager", daemon=True)
        self._thread.start()
        self.endpoint_url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_args: Any) -> None:  # quiet, and never a secret in a log
                pass

            def _send(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/x-amz-json-1.1")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                if self.headers.get("X-Amz-Target") != "secretsmanager.GetSecretValue":
                    self._send(400, {"__type": "InvalidRequestException", "message": "only GetSecretValue is faked"})
                    return
                name = body.get("SecretId", "")
                with fake._lock:
                    fake.reads[name] += 1
                    value = fake.secrets.get(name)
                if value is None:
                    self._send(400, {"__type": "ResourceNotFoundException",
                                     "message": "Secrets Manager can't find the specified secret."})
                    return
                self._send(200, {"ARN": f"arn:aws:secretsmanager:us-east-1:000000000000:secret:{name}-AbCdEf",
                                 "Name": name, "VersionId": "00000000-0000-0000-0000-000000000001",
                                 "SecretString": value, "VersionStages": ["AWSCURRENT"], "CreatedDate": 1.7e9})

        return Handler

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FakeSecretsManager:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

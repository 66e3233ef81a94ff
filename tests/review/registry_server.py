"""A small real HTTP schema registry for tests: the Confluent REST subset that Swatch and confluent-kafka use.

Unlike confluent-kafka's in-memory ``mock://`` registry it is a server on 127.0.0.1, so a subprocess
(``swatch review``, ``swatch worker``) and the test share it. A dict store, no compatibility checks;
the same schema text gets the same id under every subject, as in the real registry.

``unavailable`` answers the next N requests (optionally only those whose path contains
``unavailable_for``) with 503, as a registry outage would; unknown paths answer 404 and are kept in
``unknown`` so a test sees what the client asked for.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

logger = logging.getLogger(__name__)

CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"


@dataclass
class Registered:
    """One schema version under a subject."""

    subject: str
    version: int
    schema_id: int


@dataclass
class RegistryState:
    """What the registry knows, and what it was asked."""

    schemas: dict[int, dict[str, Any]] = field(default_factory=dict)  # id -> {"schema", "schemaType", ...}
    ids_by_key: dict[str, int] = field(default_factory=dict)  # canonical schema JSON -> id
    subjects: dict[str, list[Registered]] = field(default_factory=dict)
    config: dict[str, str] = field(default_factory=dict)  # subject ("" = global) -> compatibility level
    requests: list[tuple[str, str]] = field(default_factory=list)  # (method, path) of every request
    unknown: list[tuple[str, str]] = field(default_factory=list)  # requests for paths not implemented
    unavailable: int = 0  # the next N (matching) requests answer 503
    unavailable_for: str | None = None  # only paths containing this fail; None: every path
    refused: int = 0  # requests answered 503 so far

    def key(self, body: dict[str, Any]) -> str:
        return json.dumps(
            {
                "schema": body.get("schema"),
                "schemaType": body.get("schemaType", "AVRO") or "AVRO",
                "references": body.get("references") or [],
            },
            sort_keys=True,
        )

    def register(self, subject: str, body: dict[str, Any]) -> Registered:
        key = self.key(body)
        schema_id = self.ids_by_key.get(key)
        if schema_id is None:
            schema_id = len(self.schemas) + 1
            self.ids_by_key[key] = schema_id
            entry: dict[str, Any] = {"schema": body["schema"]}
            if (body.get("schemaType") or "AVRO") != "AVRO":
                entry["schemaType"] = body["schemaType"]
            if body.get("references"):
                entry["references"] = body["references"]
            self.schemas[schema_id] = entry
        versions = self.subjects.setdefault(subject, [])
        for known in versions:
            if known.schema_id == schema_id:
                return known
        registered = Registered(subject, len(versions) + 1, schema_id)
        versions.append(registered)
        return registered

    def find(self, subject: str, body: dict[str, Any]) -> Registered | None:
        schema_id = self.ids_by_key.get(self.key(body))
        return next((r for r in self.subjects.get(subject, []) if r.schema_id == schema_id), None)

    def subject_ids(self, subject: str) -> list[int]:
        return [r.schema_id for r in self.subjects.get(subject, [])]


class _Answer(Exception):
    def __init__(self, status: int, body: Any) -> None:
        super().__init__(status)
        self.status = status
        self.body = body


def _error(status: int, code: int, message: str) -> _Answer:
    return _Answer(status, {"error_code": code, "message": message})


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("registry: " + format, *args)

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def _handle(self, method: str) -> None:
        path = urlsplit(self.path).path.rstrip("/") or "/"
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        state = self.server.state
        try:
            with self.server.lock:
                state.requests.append((method, path))
                if state.unavailable > 0 and (state.unavailable_for is None or state.unavailable_for in path):
                    state.unavailable -= 1
                    state.refused += 1
                    raise _error(503, 50301, "Service Unavailable (test outage)")
                body = json.loads(raw) if raw else {}
                status, answer = 200, self._route(method, [unquote(p) for p in path.strip("/").split("/")], body)
        except _Answer as exc:
            status, answer = exc.status, exc.body
        except (ValueError, KeyError, TypeError) as exc:
            status, answer = 422, {"error_code": 42201, "message": f"bad request: {exc}"}
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", CONTENT_TYPE)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _route(self, method: str, parts: list[str], body: dict[str, Any]) -> Any:  # noqa: PLR0911, PLR0912
        state = self.server.state
        match method, parts:
            case "GET", ["schemas", "ids", raw_id]:
                entry = state.schemas.get(int(raw_id))
                if entry is None:
                    raise _error(404, 40403, f"Schema {raw_id} not found")
                return entry
            case "GET", ["schemas", "ids", raw_id, "versions"]:
                return [
                    {"subject": r.subject, "version": r.version}
                    for versions in state.subjects.values()
                    for r in versions
                    if r.schema_id == int(raw_id)
                ]
            case "GET", ["schemas", "types"]:
                return ["AVRO"]
            case "GET", ["associations", "resources", _, _]:
                return []  # the deserializer's subject-name strategy asks for topic associations first
            case "GET", ["subjects"]:
                return sorted(state.subjects)
            case "POST", ["subjects", subject, "versions"]:
                if "schema" not in body:
                    raise _error(422, 42201, "Empty schema")
                return {"id": state.register(subject, body).schema_id}
            case "POST", ["subjects", subject]:
                if subject not in state.subjects:
                    raise _error(404, 40401, f"Subject '{subject}' not found.")
                found = state.find(subject, body)
                if found is None:
                    raise _error(404, 40403, "Schema not found")
                return {
                    "subject": subject,
                    "version": found.version,
                    "id": found.schema_id,
                    **state.schemas[found.schema_id],
                }
            case "GET", ["subjects", subject, "versions"]:
                if subject not in state.subjects:
                    raise _error(404, 40401, f"Subject '{subject}' not found.")
                return [r.version for r in state.subjects[subject]]
            case "GET", ["subjects", subject, "versions", version]:
                versions = state.subjects.get(subject)
                if not versions:
                    raise _error(404, 40401, f"Subject '{subject}' not found.")
                number = len(versions) if version == "latest" else int(version)
                if not 1 <= number <= len(versions):
                    raise _error(404, 40402, f"Version {version} not found.")
                found = versions[number - 1]
                return {
                    "subject": subject,
                    "version": found.version,
                    "id": found.schema_id,
                    **state.schemas[found.schema_id],
                }
            case "PUT", ["config"] | ["config", _]:
                level = body["compatibility"]
                state.config[parts[1] if len(parts) > 1 else ""] = level
                return {"compatibility": level}
            case "GET", ["config"] | ["config", _]:
                subject = parts[1] if len(parts) > 1 else ""
                if subject not in state.config:
                    if subject:
                        raise _error(404, 40408, f"Subject '{subject}' does not have subject-level compatibility")
                    return {"compatibilityLevel": "BACKWARD"}
                return {"compatibilityLevel": state.config[subject]}
        state.unknown.append((method, "/" + "/".join(parts)))
        logger.warning("registry: no route for %s /%s", method, "/".join(parts))
        raise _error(404, 404, f"not implemented by the test registry: {method} /{'/'.join(parts)}")


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.state = RegistryState()
        self.lock = threading.Lock()


@dataclass
class RegistryServer:
    """A running test registry: its URL and its state (read it, or set ``unavailable`` for an outage)."""

    url: str
    state: RegistryState
    lock: threading.Lock

    def outage(self, requests: int = 1_000_000, *, only: str | None = None) -> None:
        """Answer the next ``requests`` requests (whose path contains ``only``, if given) with 503."""
        with self.lock:
            self.state.unavailable_for = only
            self.state.unavailable = requests

    def recover(self) -> None:
        """End an outage."""
        with self.lock:
            self.state.unavailable = 0
            self.state.unavailable_for = None

    def ids(self, subject: str) -> list[int]:
        """Schema ids registered under ``subject``, oldest first."""
        with self.lock:
            return self.state.subject_ids(subject)

    def schema_text(self, schema_id: int) -> str | None:
        """The schema registered under ``schema_id``."""
        with self.lock:
            entry = self.state.schemas.get(schema_id)
            return None if entry is None else str(entry["schema"])


@contextmanager
def registry_server() -> Iterator[RegistryServer]:
    """Serve a fresh registry on 127.0.0.1 and a free port in a background thread; stop it afterwards."""
    server = _Server()
    thread = threading.Thread(target=server.serve_forever, name="test-schema-registry", daemon=True)
    thread.start()
    host, port = server.server_address[:2]
    try:
        yield RegistryServer(f"http://{host!s}:{port}", server.state, server.lock)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)

"""``cvault trust save`` without the vault: the SDK against an in-process stand-in for the three
audit endpoints (serving a real log signed with a real P-256 key), and the command once over
real HTTP. The end-to-end test against ``manage.py serve`` lives with the audit app."""

from __future__ import annotations

import base64
import hashlib
import json
import stat
import threading
import urllib.parse
from collections.abc import Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from tests.client.conftest import Cvault
from tests.crypto.audit_helpers import ORIGIN, Log, event, new_signer
from vault.client.audit import audit_verify, load_trust, trust_path, trust_save
from vault.client.errors import (
    AuditCheckFailed,
    AuditUnanchored,
    ConfigurationError,
    UnknownLogKey,
)
from vault.crypto.checkpoint import CheckpointKey

Signer = tuple[ec.EllipticCurvePrivateKey, CheckpointKey]


class AuditServer:
    """The three audit endpoints of the vault, answering from ``log`` (the same JSON shapes)."""

    url = "https://vault.example"

    def __init__(self, log: Log, keys: list[CheckpointKey] | None = None) -> None:
        self.log = log
        self.keys = keys if keys is not None else [log.key]
        self.note: bytes = log.notes[-1]
        self.tree = log.tree
        self.requests: list[str] = []
        self.proof_change: Any = None

    def path(self, path: str, query: Mapping[str, str | int] | None = None) -> str:
        target = f"/api/v1{path}"
        if query:
            target += "?" + urllib.parse.urlencode({k: str(v) for k, v in query.items()})
        return target

    def answer(self, target: str) -> Any:
        self.requests.append(target)
        parts = urllib.parse.urlsplit(target)
        if parts.path == "/api/v1/audit/keys/":
            return {"origin": ORIGIN, "keys": [{"vkey": key.vkey} for key in self.keys]}
        if parts.path == "/api/v1/audit/checkpoint/":
            size = int(self.note.split(b"\n")[1])
            return {"origin": ORIGIN, "size": size, "note": self.note.decode()}
        if parts.path == "/api/v1/audit/proofs/consistency/":
            query = dict(urllib.parse.parse_qsl(parts.query))
            old, new = int(query["from"]), int(query["to"])
            proof = [base64.b64encode(h).decode() for h in self.tree.consistency_proof(old, new)]
            if self.proof_change is not None:
                proof = self.proof_change(proof)
            return {"from": old, "to": new, "proof": proof}
        raise AssertionError(f"unexpected request {target}")

    def json(self, method: str, target: str, payload: Any = None) -> Any:
        assert method == "GET"
        return self.answer(target)

    @property
    def proofs_asked(self) -> list[str]:
        return [r for r in self.requests if "/proofs/" in r]


@pytest.fixture
def signer() -> Signer:
    return new_signer()


@pytest.fixture
def log(signer: Signer) -> Log:
    log = Log(*signer)
    log.add_events(5)
    log.checkpoint()
    return log


@pytest.fixture
def directory(tmp_path: Path) -> Path:
    return tmp_path / "config"


def _grow(log: Log, count: int) -> None:
    log.add_events(count)
    log.checkpoint()


def _fork(signer: Signer, size: int, differ_at: int) -> Log:
    """Another log of ``size`` events that differs from the standard ones at ``differ_at``."""
    fork = Log(*signer)
    for number in range(size):
        fork.add(event(number if number != differ_at else 1000 + number))
    fork.checkpoint()
    return fork


def test_it_trusts_on_first_use_and_saves_privately(log: Log, directory: Path) -> None:
    server = AuditServer(log)
    saved = trust_save(server, directory)
    assert saved.first_use is True
    assert saved.previous_size is None
    assert saved.log.checkpoint.size == 5
    assert server.proofs_asked == []
    path = directory / "trust" / f"{hashlib.sha256(ORIGIN.encode()).hexdigest()[:32]}.json"
    assert saved.path == path == trust_path(directory, ORIGIN)
    data = json.loads(path.read_text())
    assert data["origin"] == ORIGIN
    assert data["keys"] == [log.key.vkey]
    assert data["checkpoint"] == log.notes[-1].decode()
    assert data["url"] == "https://vault.example"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700


def test_it_moves_forward_along_a_verified_consistency_proof(log: Log, directory: Path) -> None:
    trust_save(AuditServer(log), directory)
    _grow(log, 6)
    server = AuditServer(log)
    saved = trust_save(server, directory)
    assert (saved.first_use, saved.previous_size, saved.log.checkpoint.size) == (False, 5, 11)
    assert server.proofs_asked == ["/api/v1/audit/proofs/consistency/?from=5&to=11"]
    loaded = load_trust(directory, ORIGIN)
    assert loaded is not None
    assert loaded.checkpoint.size == 11


def test_it_accepts_the_same_checkpoint_without_a_proof(log: Log, directory: Path) -> None:
    trust_save(AuditServer(log), directory)
    server = AuditServer(log)
    saved = trust_save(server, directory)
    assert (saved.previous_size, saved.log.checkpoint.size) == (5, 5)
    assert server.proofs_asked == []


def test_it_needs_no_proof_from_an_empty_log(signer: Signer, directory: Path) -> None:
    log = Log(*signer)
    log.checkpoint()
    trust_save(AuditServer(log), directory)
    _grow(log, 3)
    server = AuditServer(log)
    assert trust_save(server, directory).log.checkpoint.size == 3
    assert server.proofs_asked == []


def _unchanged(directory: Path, size: int) -> None:
    loaded = load_trust(directory, ORIGIN)
    assert loaded is not None
    assert loaded.checkpoint.size == size


def test_it_refuses_a_rollback(log: Log, directory: Path) -> None:
    _grow(log, 4)
    trust_save(AuditServer(log), directory)
    server = AuditServer(log)
    server.note = log.notes[0]
    with pytest.raises(AuditCheckFailed) as caught:
        trust_save(server, directory)
    assert caught.value.code == "audit_rollback"
    assert caught.value.exit_code == 1
    _unchanged(directory, 9)


def test_it_refuses_another_root_at_the_same_size(
    log: Log, signer: Signer, directory: Path
) -> None:
    trust_save(AuditServer(log), directory)
    with pytest.raises(AuditCheckFailed) as caught:
        trust_save(AuditServer(_fork(signer, 5, differ_at=2)), directory)
    assert caught.value.code == "audit_history_rewritten"
    _unchanged(directory, 5)


def test_it_refuses_a_larger_checkpoint_that_does_not_extend_the_saved_one(
    log: Log, signer: Signer, directory: Path
) -> None:
    trust_save(AuditServer(log), directory)
    server = AuditServer(_fork(signer, 9, differ_at=2))
    with pytest.raises(AuditCheckFailed) as caught:
        trust_save(server, directory)
    assert caught.value.code == "audit_history_rewritten"
    assert server.proofs_asked == ["/api/v1/audit/proofs/consistency/?from=5&to=9"]
    _unchanged(directory, 5)


@pytest.mark.parametrize(
    "change",
    [
        lambda proof: proof[:-1],
        lambda proof: [*proof, proof[0]],
        lambda proof: [base64.b64encode(b"\x00" * 32).decode(), *proof[1:]],
        lambda proof: [proof[0][:-2] + "B=", *proof[1:]],
        lambda proof: [proof[0].rstrip("="), *proof[1:]],
        lambda proof: "not a list",
    ],
)
def test_it_refuses_a_bad_consistency_proof(log: Log, directory: Path, change: Any) -> None:
    trust_save(AuditServer(log), directory)
    _grow(log, 6)
    server = AuditServer(log)
    server.proof_change = change
    with pytest.raises(AuditCheckFailed):
        trust_save(server, directory)
    _unchanged(directory, 5)


def test_it_refuses_a_checkpoint_signed_by_a_new_key(log: Log, directory: Path) -> None:
    trust_save(AuditServer(log), directory)
    private, public = new_signer()
    log.private, log.key = private, public
    _grow(log, 2)
    with pytest.raises(UnknownLogKey) as caught:
        trust_save(AuditServer(log, [public]), directory)
    assert caught.value.exit_code == 1
    assert "--replace-keys" in str(caught.value)
    assert public.vkey in str(caught.value)
    _unchanged(directory, 5)


def test_it_replaces_the_keys_when_asked_but_still_checks_history(
    log: Log, signer: Signer, directory: Path
) -> None:
    trust_save(AuditServer(log), directory)
    private, public = new_signer()
    log.private, log.key = private, public
    _grow(log, 2)
    saved = trust_save(AuditServer(log, [public]), directory, replace_keys=True)
    assert (saved.first_use, saved.keys_replaced) == (True, True)
    assert saved.previous_keys == (signer[1],)
    assert saved.log.keys == (public,)
    fork = _fork((private, public), 9, differ_at=1)
    with pytest.raises(AuditCheckFailed) as caught:
        trust_save(AuditServer(fork, [public]), directory, replace_keys=True)
    assert caught.value.code == "audit_history_rewritten"


def test_it_does_not_add_keys_the_server_lists_later(log: Log, directory: Path) -> None:
    trust_save(AuditServer(log), directory)
    _, extra = new_signer()
    _grow(log, 1)
    saved = trust_save(AuditServer(log, [log.key, extra]), directory)
    assert saved.log.keys == (log.key,)


def test_it_refuses_a_first_checkpoint_its_own_keys_do_not_sign(log: Log, directory: Path) -> None:
    _, other = new_signer()
    with pytest.raises(AuditCheckFailed) as caught:
        trust_save(AuditServer(log, [other]), directory)
    assert not isinstance(caught.value, UnknownLogKey)
    assert not trust_path(directory, ORIGIN).exists()


def test_it_refuses_a_checkpoint_of_another_log(signer: Signer, directory: Path) -> None:
    other = Log(signer[0], CheckpointKey("ciphervault.example/audit/other", signer[1].public_key))
    other.origin = "ciphervault.example/audit/other"
    other.add_events(2)
    other.checkpoint()
    server = AuditServer(other)  # claims ORIGIN in its answers
    with pytest.raises(AuditCheckFailed):
        trust_save(server, directory)


def test_it_refuses_a_damaged_trust_file(log: Log, directory: Path) -> None:
    path = trust_save(AuditServer(log), directory).path
    data = json.loads(path.read_text())
    data["checkpoint"] = data["checkpoint"].replace("\n5\n", "\n6\n")
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigurationError, match="damaged"):
        load_trust(directory, ORIGIN)
    with pytest.raises(ConfigurationError, match="damaged"):
        trust_save(AuditServer(log), directory)


def test_a_saved_checkpoint_anchors_later_verification(log: Log, directory: Path) -> None:
    bundle = log.bundle()
    with pytest.raises(AuditUnanchored):
        audit_verify(bundle, directory=directory)
    trust_save(AuditServer(log), directory)
    _grow(log, 4)
    verdict = audit_verify(log.bundle(), directory=directory)
    assert verdict.report.anchored_to_saved is True
    assert verdict.report.saved_size == 5
    assert verdict.saved is not None


# --------------------------------------------------------------------------------------------
# The command, over HTTP


@pytest.fixture
def http_server(log: Log) -> Iterator[tuple[str, AuditServer]]:
    audit = AuditServer(log)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/api/v1/compliance/ca/":  # no report CA here: an older server
                self.send_error(404)
                return
            body = json.dumps(audit.answer(self.path)).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", audit
    finally:
        server.shutdown()
        server.server_close()


def test_the_command_trusts_on_first_use_then_moves_forward(
    http_server: tuple[str, AuditServer], log: Log, tmp_path: Path
) -> None:
    url, audit = http_server
    cvault = Cvault(tmp_path / "config", tmp_path)
    cvault.ok("login", "--url", url, "--token", "cvt_test", "--no-check")
    first = cvault.ok("trust", "save")
    assert f"Trusting the audit log {ORIGIN} on first use, at size 5." in first.text
    assert f"  {log.key.vkey}\n" in first.text
    _grow(log, 3)
    audit.note = log.notes[-1]
    second = cvault.ok("trust", "save")
    assert "grew from size 5 to 8" in second.text
    assert "Trusting" not in second.text
    audit.note = log.notes[0]
    rollback = cvault("trust", "save")
    assert rollback.code == 1
    assert rollback.err.startswith("cvault: error: rollback")


def test_the_command_warns_loudly_when_it_replaces_keys(
    http_server: tuple[str, AuditServer], log: Log, tmp_path: Path
) -> None:
    url, audit = http_server
    cvault = Cvault(tmp_path / "config", tmp_path)
    cvault.ok("login", "--url", url, "--token", "cvt_test", "--no-check")
    old_vkey = log.key.vkey
    cvault.ok("trust", "save")
    private, public = new_signer()
    log.private, log.key = private, public
    _grow(log, 1)
    audit.note, audit.keys = log.notes[-1], [public]
    refused = cvault("trust", "save")
    assert refused.code == 1
    assert "--replace-keys" in refused.err
    replaced = cvault.ok("trust", "save", "--replace-keys")
    assert "WARNING" in replaced.err
    assert old_vkey in replaced.err
    assert public.vkey in replaced.text

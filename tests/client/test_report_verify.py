"""``cvault report verify`` as a subprocess, offline, on evidence packs built by ``build_pack``
with real P-256 keys and X.509 certificates around a real audit log; the report CA part of
``cvault trust save`` against a stand-in for the API (in process and over HTTP); and both once
end to end against ``manage.py serve`` with a pack the server exported."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.client.conftest import ROOT, Cvault, Result, Running
from tests.client.test_audit_trust import AuditServer
from tests.core.helpers import free_port
from tests.core.test_serve import Server
from tests.crypto.audit_helpers import ORIGIN, Log, new_signer
from tests.crypto.test_reportpack import (
    CA_PATH,
    EVIDENCE_PATH,
    MANIFEST_PATH,
    PROOFS_PATH,
    RUN,
    SIGNER_PATH,
    TENANT,
    Audit,
    Pki,
    make_pack,
    members,
    new_audit,
    new_pki,
    pack_files,
    rezip,
)
from vault.client.audit import TrustedLog, save_trust
from vault.client.errors import (
    ConfigurationError,
    NetworkError,
    ReportCheckFailed,
    ReportUnanchored,
    ServerError,
    UnknownReportCa,
)
from vault.client.report import (
    fetch_report_ca,
    load_report_ca,
    report_ca_path,
    report_ca_save,
    report_verify,
)
from vault.crypto.canonical import canonical_json
from vault.crypto.checkpoint import Checkpoint, SignedNote
from vault.crypto.reportpack import certificate_fingerprint

RESIGNED = (
    "manifest.sig: does not verify over manifest.json under the signer certificate's key "
    "(the manifest was changed, or signed by another key)"
)


@pytest.fixture(scope="module")
def pki() -> Pki:
    return new_pki()


@pytest.fixture(scope="module")
def attacker() -> Pki:
    return new_pki()


@pytest.fixture(scope="module")
def audit() -> Audit:
    return new_audit()


@pytest.fixture(scope="module")
def pack(pki: Pki, audit: Audit) -> bytes:
    return make_pack(pki, audit)


@pytest.fixture
def cvault(tmp_path: Path) -> Cvault:
    return Cvault(tmp_path / "config", tmp_path)


def _save_ca(cvault: Cvault, pem: bytes) -> Path:
    """The CA file ``cvault trust save`` would write, written here by hand."""
    path = report_ca_path(cvault.config_dir)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.write_bytes(pem)
    os.chmod(path, 0o600)
    return path


def _save_audit_keys(cvault: Cvault, audit: Audit, *, other_key: bool = False) -> None:
    """The trust file ``cvault trust save`` would write for the audit log (with the log's key,
    or with another key that signed a checkpoint of a log of the same origin)."""
    log = audit.log
    if other_key:
        log = Log(*new_signer())
        log.add_events(2)
    note = log.sign()
    checkpoint = Checkpoint.from_text(SignedNote.parse(note).text)
    save_trust(
        cvault.config_dir,
        TrustedLog(ORIGIN, (log.key,), note, checkpoint, "https://vault.example", "2025-02-20"),
    )


def _verify(cvault: Cvault, tmp_path: Path, pack: bytes, *extra: str) -> Result:
    path = tmp_path / "evidence-pack.zip"
    path.write_bytes(pack)
    return cvault("report", "verify", str(path), *extra)


def _verdict(pki: Pki, *, audit_keys: str) -> str:
    return (
        f"verified: evidence pack of tenant {TENANT}, run {RUN}, created "
        "2025-03-01T12:00:00.000000Z: 8 file(s), manifest signed by CN=Ciphervault report "
        "signer,O=Ciphervault test, issued by the trusted report CA CN=Ciphervault report CA,"
        f"O=Ciphervault test (SHA-256 {certificate_fingerprint(pki.ca)}); audit log {ORIGIN} "
        f"from size 4 to 11, {audit_keys}, 1 anchor event(s) proved in\n"
    )


# --------------------------------------------------------------------------------------------
# report verify, offline


def test_it_verifies_against_the_saved_ca(
    cvault: Cvault, tmp_path: Path, pack: bytes, pki: Pki
) -> None:
    _save_ca(cvault, pki.ca_pem)
    result = _verify(cvault, tmp_path, pack)
    assert result.code == 0, result.err
    assert result.text == _verdict(
        pki, audit_keys="signed by the keys the manifest vouches for (no audit keys saved for it)"
    )
    assert result.err == ""


def test_it_verifies_against_a_ca_given_with_trust(
    cvault: Cvault, tmp_path: Path, pack: bytes, pki: Pki, attacker: Pki
) -> None:
    _save_ca(cvault, attacker.ca_pem)  # --trust takes the place of the saved CA
    (tmp_path / "ca.pem").write_bytes(pki.ca_pem)
    result = _verify(cvault, tmp_path, pack, "--trust", str(tmp_path / "ca.pem"))
    assert result.code == 0, result.text + result.err
    assert result.text.startswith("verified: ")


def test_it_checks_the_audit_keys_saved_for_the_log(
    cvault: Cvault, tmp_path: Path, pack: bytes, pki: Pki, audit: Audit
) -> None:
    _save_ca(cvault, pki.ca_pem)
    _save_audit_keys(cvault, audit)
    result = _verify(cvault, tmp_path, pack)
    assert result.code == 0, result.text + result.err
    assert result.text == _verdict(pki, audit_keys="signed by the audit keys saved for it")


def test_it_fails_when_the_checkpoints_are_not_signed_by_the_saved_audit_keys(
    cvault: Cvault, tmp_path: Path, pack: bytes, pki: Pki, audit: Audit
) -> None:
    _save_ca(cvault, pki.ca_pem)
    _save_audit_keys(cvault, audit, other_key=True)
    result = _verify(cvault, tmp_path, pack)
    assert result.code == 1, result.text + result.err
    assert f"the start checkpoint is not signed by a key saved for {ORIGIN}" in result.text
    assert f"the end checkpoint is not signed by a key saved for {ORIGIN}" in result.text


def _edited(pack: bytes, pki: Pki, attacker: Pki, audit: Audit) -> bytes:
    return rezip(pack, replace={"reports/report.csv": b"requirement,check\r\n3.7.4,PASS\r\n"})


def _added(pack: bytes, pki: Pki, attacker: Pki, audit: Audit) -> bytes:
    return rezip(pack, add={"evidence/extra.json": b"{}"})


def _removed(pack: bytes, pki: Pki, attacker: Pki, audit: Audit) -> bytes:
    return rezip(pack, remove=(EVIDENCE_PATH,))


def _manifest_edited(pack: bytes, pki: Pki, attacker: Pki, audit: Audit) -> bytes:
    document = json.loads(members(pack)[MANIFEST_PATH])
    document["run"] = "00000000-0000-0000-0000-000000000000"
    return rezip(pack, replace={MANIFEST_PATH: canonical_json(document)})


def _resigned(pack: bytes, pki: Pki, attacker: Pki, audit: Audit) -> bytes:
    files = pack_files(audit, {"reports/report.csv": b"requirement\r\n3.7.4,PASS\r\n"})
    return make_pack(attacker, audit, files)


def _proof_tampered(pack: bytes, pki: Pki, attacker: Pki, audit: Audit) -> bytes:
    anchors = json.loads(audit.proofs())["anchors"]
    anchors[0]["proof"][0] = "00" * 32
    files = pack_files(audit, {PROOFS_PATH: audit.proofs(anchors=anchors)})
    return make_pack(pki, audit, files)  # signed by the real signer: only the proof is wrong


@pytest.mark.parametrize(
    ("tamper", "problem"),
    [
        (_edited, "reports/report.csv: "),
        (_added, "evidence/extra.json: in the pack but not in the manifest"),
        (_removed, f"{EVIDENCE_PATH}: in the manifest but not in the pack"),
        (_manifest_edited, RESIGNED),
        (_resigned, f"{SIGNER_PATH}: not issued by the trusted report CA"),
        (_proof_tampered, f"{PROOFS_PATH}: anchor 0 (index 8): the event "),
    ],
    ids=["file-edited", "file-added", "file-removed", "manifest-edited", "re-signed",
         "proof-tampered"],
)  # fmt: skip
def test_it_fails_a_tampered_pack(
    cvault: Cvault,
    tmp_path: Path,
    pack: bytes,
    pki: Pki,
    attacker: Pki,
    audit: Audit,
    tamper: Any,
    problem: str,
) -> None:
    _save_ca(cvault, pki.ca_pem)
    result = _verify(cvault, tmp_path, tamper(pack, pki, attacker, audit))
    assert result.code == 1, result.text + result.err
    lines = result.text.splitlines()
    assert lines[0] == (
        "FAILED: the evidence pack does not verify: 1 problem(s) [pack_verification_failed]"
    )
    assert len(lines) == 2
    assert lines[1].startswith(f"  - {problem}")


def test_it_fails_a_signer_the_trusted_ca_did_not_issue(
    cvault: Cvault, tmp_path: Path, pack: bytes, attacker: Pki
) -> None:
    _save_ca(cvault, attacker.ca_pem)
    result = _verify(cvault, tmp_path, pack)
    assert result.code == 1
    assert (
        f"  - {SIGNER_PATH}: not issued by the trusted report CA (SHA-256 "
        f"{certificate_fingerprint(attacker.ca)})"
    ) in result.text


def test_it_is_unanchored_without_a_trusted_ca(
    cvault: Cvault, tmp_path: Path, pack: bytes, pki: Pki
) -> None:
    result = _verify(cvault, tmp_path, pack)
    assert result.code == 2, result.text + result.err
    assert result.text.startswith("UNANCHORED: no report CA certificate is trusted")
    assert certificate_fingerprint(pki.ca) in result.err
    assert "cvault trust save" in result.err


def test_a_tampered_pack_fails_even_without_a_trusted_ca(
    cvault: Cvault, tmp_path: Path, pack: bytes
) -> None:
    result = _verify(cvault, tmp_path, rezip(pack, remove=(EVIDENCE_PATH,)))
    assert result.code == 1
    assert result.text.startswith("FAILED: ")


@pytest.mark.parametrize(
    ("mangle", "code"),
    [
        (lambda pack: b"not a zip at all", "pack_malformed"),
        (lambda pack: pack + b"trailing", "pack_malformed"),
        (lambda pack: rezip(pack, add={"../escape.json": b"{}"}), "pack_bad_member_name"),
        (lambda pack: rezip(pack, remove=(MANIFEST_PATH,)), "pack_manifest_malformed"),
    ],
    ids=["not-a-zip", "trailing-data", "dot-dot", "no-manifest"],
)
def test_it_fails_a_malformed_pack(
    cvault: Cvault, tmp_path: Path, pack: bytes, pki: Pki, mangle: Any, code: str
) -> None:
    _save_ca(cvault, pki.ca_pem)
    result = _verify(cvault, tmp_path, mangle(pack))
    assert result.code == 1
    assert result.text.startswith("FAILED: ")
    assert result.text.rstrip().endswith(f"[{code}]")
    # Even with no trusted CA: a malformed pack fails, it is not merely unanchored.
    untrusting = Cvault(tmp_path / "other", tmp_path)
    assert untrusting("report", "verify", str(tmp_path / "evidence-pack.zip")).code == 1


def test_it_lists_every_problem(cvault: Cvault, tmp_path: Path, pack: bytes, pki: Pki) -> None:
    _save_ca(cvault, pki.ca_pem)
    tampered = rezip(
        pack, replace={"reports/report.csv": b"x", CA_PATH: b"x"}, remove=(EVIDENCE_PATH,)
    )
    result = _verify(cvault, tmp_path, tampered)
    assert result.code == 1
    lines = result.text.splitlines()
    assert lines[0].startswith("FAILED: the evidence pack does not verify: 4 problem(s)")
    assert [line[:4] for line in lines[1:]] == ["  - "] * 4


@pytest.mark.parametrize(
    "setup",
    ["missing-pack", "missing-trust", "trust-not-a-certificate", "damaged-saved-ca"],
)
def test_usage_errors_exit_2_without_a_verdict(
    cvault: Cvault, tmp_path: Path, pack: bytes, setup: str
) -> None:
    (tmp_path / "evidence-pack.zip").write_bytes(pack)
    arguments = ["report", "verify", str(tmp_path / "evidence-pack.zip")]
    if setup == "missing-pack":
        arguments[2] = str(tmp_path / "nothing.zip")
    elif setup == "missing-trust":
        arguments += ["--trust", str(tmp_path / "nothing.pem")]
    elif setup == "trust-not-a-certificate":
        (tmp_path / "key.pem").write_bytes(b"-----BEGIN PUBLIC KEY-----\nAA==\n")
        arguments += ["--trust", str(tmp_path / "key.pem")]
    else:
        _save_ca(cvault, b"damaged")
    result = cvault(*arguments)
    assert result.code == 2, result.text + result.err
    assert result.text == ""
    assert result.err.startswith("cvault: error: ")


def test_the_sdk_raises_the_documented_errors(tmp_path: Path, pack: bytes, pki: Pki) -> None:
    directory = tmp_path / "config"
    with pytest.raises(ReportUnanchored) as unanchored:
        report_verify(pack, directory=directory)
    assert unanchored.value.exit_code == 2
    assert unanchored.value.pack_ca_fingerprint == certificate_fingerprint(pki.ca)
    with pytest.raises(ReportCheckFailed) as failed:
        report_verify(rezip(pack, remove=(EVIDENCE_PATH,)), directory=directory)
    assert (failed.value.exit_code, failed.value.code) == (1, "pack_verification_failed")
    assert failed.value.problems == (f"{EVIDENCE_PATH}: in the manifest but not in the pack",)
    (tmp_path / "ca.pem").write_bytes(pki.ca_pem)
    verdict = report_verify(pack, directory=directory, trust=str(tmp_path / "ca.pem"))
    assert verdict.report.verified
    assert verdict.ca_source == str(tmp_path / "ca.pem")


# --------------------------------------------------------------------------------------------
# trust save: the report CA, in process


class CaApi:
    """The report CA endpoint (and only it), answering like the vault."""

    url = "https://vault.example"

    def __init__(self, pem: bytes | None, *, fingerprint: str | None = None) -> None:
        self.pem = pem
        self.fingerprint = fingerprint
        self.answer: Any = None
        self.requests: list[str] = []

    def path(self, path: str, query: Any = None) -> str:
        return f"/api/v1{path}"

    def json(self, method: str, target: str, payload: Any = None) -> Any:
        assert (method, target) == ("GET", "/api/v1/compliance/ca/")
        self.requests.append(target)
        if self.answer is not None:
            return self.answer
        if self.pem is None:
            raise ServerError(404, "not_found", "Not found.")
        from cryptography import x509

        certificate = x509.load_pem_x509_certificate(self.pem)
        return {
            "certificate": self.pem.decode("ascii"),
            "fingerprint": self.fingerprint or certificate_fingerprint(certificate),
        }


def test_it_trusts_the_report_ca_on_first_use_and_saves_it_privately(
    tmp_path: Path, pki: Pki
) -> None:
    directory = tmp_path / "config"
    saved = report_ca_save(CaApi(pki.ca_pem), directory)
    assert saved is not None
    assert (saved.first_use, saved.replaced, saved.unchanged) == (True, False, False)
    assert saved.fingerprint == certificate_fingerprint(pki.ca)
    assert saved.path == directory / "trust" / "report-ca.pem"
    assert saved.path.read_bytes() == pki.ca_pem
    assert stat.S_IMODE(saved.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(saved.path.parent.stat().st_mode) == 0o700
    loaded = load_report_ca(directory)
    assert loaded is not None
    assert certificate_fingerprint(loaded) == saved.fingerprint
    again = report_ca_save(CaApi(pki.ca_pem), directory)
    assert again is not None
    assert (again.first_use, again.unchanged) == (False, True)


def test_it_refuses_another_report_ca_unless_told(tmp_path: Path, pki: Pki, attacker: Pki) -> None:
    directory = tmp_path / "config"
    report_ca_save(CaApi(pki.ca_pem), directory)
    with pytest.raises(UnknownReportCa) as caught:
        report_ca_save(CaApi(attacker.ca_pem), directory)
    assert (caught.value.exit_code, caught.value.code) == (1, "report_ca_changed")
    message = str(caught.value)
    assert certificate_fingerprint(attacker.ca) in message
    assert certificate_fingerprint(pki.ca) in message
    assert "--replace-keys" in message
    assert report_ca_path(directory).read_bytes() == pki.ca_pem
    replaced = report_ca_save(CaApi(attacker.ca_pem), directory, replace=True)
    assert replaced is not None
    assert (replaced.first_use, replaced.replaced) == (True, True)
    assert replaced.previous_fingerprint == certificate_fingerprint(pki.ca)
    assert report_ca_path(directory).read_bytes() == attacker.ca_pem


def test_it_carries_on_when_the_server_has_no_report_ca(tmp_path: Path) -> None:
    api = CaApi(None)
    assert report_ca_save(api, tmp_path / "config") is None
    assert api.requests == ["/api/v1/compliance/ca/"]
    assert not report_ca_path(tmp_path / "config").exists()


def test_it_refuses_a_report_ca_whose_stated_fingerprint_differs(tmp_path: Path, pki: Pki) -> None:
    with pytest.raises(ReportCheckFailed) as caught:
        report_ca_save(CaApi(pki.ca_pem, fingerprint="00" * 32), tmp_path / "config")
    assert caught.value.code == "report_ca_invalid"
    assert not report_ca_path(tmp_path / "config").exists()
    upper = certificate_fingerprint(pki.ca).upper()
    colons = ":".join(upper[i : i + 2] for i in range(0, 64, 2))
    assert fetch_report_ca(CaApi(pki.ca_pem, fingerprint=colons)) is not None


def test_it_refuses_a_report_ca_that_is_not_a_ca(tmp_path: Path, pki: Pki) -> None:
    with pytest.raises(ReportCheckFailed, match="not a CA certificate") as caught:
        report_ca_save(CaApi(pki.signer_pem), tmp_path / "config")
    assert caught.value.code == "report_ca_invalid"


@pytest.mark.parametrize(
    "answer",
    [[], {"certificate": 1, "fingerprint": "x"}, {"fingerprint": "00"}],
)
def test_it_refuses_an_answer_that_is_not_a_report_ca(tmp_path: Path, answer: Any) -> None:
    api = CaApi(None)
    api.answer = answer
    with pytest.raises(NetworkError):
        report_ca_save(api, tmp_path / "config")


def test_it_refuses_a_certificate_that_is_not_pem(tmp_path: Path) -> None:
    api = CaApi(None)
    api.answer = {"certificate": "-----BEGIN CERTIFICATE-----\nAA==\n", "fingerprint": "00"}
    with pytest.raises(ReportCheckFailed) as caught:
        report_ca_save(api, tmp_path / "config")
    assert caught.value.code == "report_ca_invalid"


def test_a_damaged_saved_ca_is_a_configuration_error(tmp_path: Path, pki: Pki) -> None:
    directory = tmp_path / "config"
    report_ca_save(CaApi(pki.ca_pem), directory)
    report_ca_path(directory).write_bytes(b"damaged")
    with pytest.raises(ConfigurationError, match="does not hold one PEM certificate"):
        report_ca_save(CaApi(pki.ca_pem), directory)


# --------------------------------------------------------------------------------------------
# trust save: the command, over HTTP


class StandIn:
    """The audit endpoints (``AuditServer``) and the report CA endpoint, over HTTP."""

    def __init__(self, audit: AuditServer, ca_pem: bytes | None) -> None:
        self.audit = audit
        self.ca_pem = ca_pem
        self.url = ""

    def answer(self, target: str) -> tuple[int, Any]:
        if target == "/api/v1/compliance/ca/":
            if self.ca_pem is None:
                error = {"status": 404, "code": "not_found", "message": "Not found."}
                return 404, {"error": error}
            return 200, CaApi(self.ca_pem).json("GET", target)
        return 200, self.audit.answer(target)


@pytest.fixture
def stand_in(audit: Audit, pki: Pki) -> Iterator[StandIn]:
    server_state = StandIn(AuditServer(audit.log), pki.ca_pem)
    server_state.audit.note = audit.end

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status, answer = server_state.answer(self.path)
            body = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    server_state.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield server_state
    finally:
        server.shutdown()
        server.server_close()


def _logged_in(stand_in: StandIn, tmp_path: Path) -> Cvault:
    cvault = Cvault(tmp_path / "config", tmp_path)
    cvault.ok("login", "--url", stand_in.url, "--token", "cvt_test", "--no-check")
    return cvault


def test_the_command_saves_the_report_ca_and_then_verifies_with_it(
    stand_in: StandIn, tmp_path: Path, pack: bytes, pki: Pki
) -> None:
    cvault = _logged_in(stand_in, tmp_path)
    first = cvault.ok("trust", "save")
    assert "Trusting the report CA CN=Ciphervault report CA,O=Ciphervault test on first use." in (
        first.text
    )
    assert f"  {certificate_fingerprint(pki.ca)}\n" in first.text
    assert f"Saved in {report_ca_path(cvault.config_dir)}" in first.text
    assert report_ca_path(cvault.config_dir).read_bytes() == pki.ca_pem
    assert stat.S_IMODE(report_ca_path(cvault.config_dir).stat().st_mode) == 0o600
    again = cvault.ok("trust", "save")
    assert f"is unchanged (SHA-256 {certificate_fingerprint(pki.ca)})" in again.text
    # What trust save saved (the CA, and the audit log's keys) anchors an offline verification.
    result = _verify(cvault, tmp_path, pack)
    assert result.code == 0, result.text + result.err
    assert "signed by the audit keys saved for it" in result.text


def test_the_command_refuses_a_new_report_ca_and_warns_loudly_when_told(
    stand_in: StandIn, tmp_path: Path, pki: Pki, attacker: Pki
) -> None:
    cvault = _logged_in(stand_in, tmp_path)
    cvault.ok("trust", "save")
    stand_in.ca_pem = attacker.ca_pem
    refused = cvault("trust", "save")
    assert refused.code == 1
    assert refused.err.startswith("cvault: error: the server's report CA (SHA-256 ")
    assert "--replace-keys" in refused.err
    assert report_ca_path(cvault.config_dir).read_bytes() == pki.ca_pem
    replaced = cvault.ok("trust", "save", "--replace-keys")
    assert "cvault: WARNING: the trusted report CA was REPLACED" in replaced.err
    assert f"SHA-256 {certificate_fingerprint(pki.ca)}" in replaced.err
    assert f"  {certificate_fingerprint(attacker.ca)}\n" in replaced.text
    assert report_ca_path(cvault.config_dir).read_bytes() == attacker.ca_pem


def test_the_command_notes_an_older_server_without_a_report_ca(
    stand_in: StandIn, tmp_path: Path
) -> None:
    stand_in.ca_pem = None
    cvault = _logged_in(stand_in, tmp_path)
    result = cvault.ok("trust", "save")
    assert "on first use" in result.text  # the audit log part still happened
    assert "cvault: note: the server has no report CA" in result.err
    assert not report_ca_path(cvault.config_dir).exists()


# --------------------------------------------------------------------------------------------
# End to end: a real server, its report CA, a pack it exported


@pytest.fixture(scope="module")
def own_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """A server of our own: other modules' tests rewrite the shared server's audit log."""
    data_dir = tmp_path_factory.mktemp("report-server")
    port = free_port()
    server = Server(data_dir, port)
    try:
        token = server.token()
        server.wait_ready()
        yield Running(server, f"http://127.0.0.1:{port}", token, data_dir)
    finally:
        server.stop()


def _manage(running: Running, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env["VAULT_DATA_DIR"] = str(running.data_dir)
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _served_ca(running: Running) -> dict[str, str]:
    request = urllib.request.Request(  # noqa: S310  (the test server's http URL)
        f"{running.url}/api/v1/compliance/ca/",
        headers={"Authorization": f"Bearer {running.token}"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310
        return json.loads(response.read())


def test_a_pack_the_server_exported_verifies_against_the_ca_trust_save_saved(
    own_server: Running, tmp_path: Path
) -> None:
    cvault = Cvault(tmp_path / "config", tmp_path)
    cvault.ok("login", "--url", own_server.url, "--token", own_server.token)
    saved = cvault.ok("trust", "save")
    served = _served_ca(own_server)
    assert f"  {served['fingerprint']}\n" in saved.text
    assert report_ca_path(cvault.config_dir).read_bytes() == served["certificate"].encode()

    run = _manage(own_server, "compliance_run", "--tenant", "demo", "--quiet")
    assert run.returncode == 0, run.stderr
    target = tmp_path / "server-pack.zip"
    export = _manage(
        own_server, "compliance_report", "--tenant", "demo", "--format", "pack",
        "--output", str(target),
    )  # fmt: skip
    assert export.returncode == 0, export.stderr

    verified = cvault("report", "verify", str(target))
    assert verified.code == 0, verified.text + verified.err
    assert verified.text.startswith("verified: evidence pack of tenant demo, run ")
    assert f"(SHA-256 {served['fingerprint']})" in verified.text
    assert "signed by the audit keys saved for it" in verified.text

    content = members(target.read_bytes())
    csv = content["reports/report.csv"]
    tampered = rezip(target.read_bytes(), replace={"reports/report.csv": csv + b"x,y,z\r\n"})
    failed = _verify(cvault, tmp_path, tampered)
    assert failed.code == 1
    assert "  - reports/report.csv: " in failed.text
    elsewhere = Cvault(tmp_path / "elsewhere", tmp_path)
    assert elsewhere("report", "verify", str(target)).code == 2

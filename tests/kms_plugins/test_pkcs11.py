"""The PKCS#11 backend on a real SoftHSM2 token, checked from outside with OpenSC's pkcs11-tool.

No mocks: every test talks to SoftHSM through python-pkcs11, and the non-extractability that the
issue promises is read back by a separate program (``pkcs11-tool``) in a separate process.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import pathlib
import shutil
import subprocess
import threading
from collections.abc import Iterator

import pytest

from kms_plugins.errors import (
    BackendUnavailable,
    ConfigurationError,
    KeyBackendError,
    KeyDestroyed,
    KeyNotFound,
    KeyStateError,
    UnwrapFailed,
)
from kms_plugins.pkcs11 import Pkcs11KeyBackend, key_uri, parse_key_uri
from kms_plugins.testing import softhsm
from kms_plugins.types import KeyPurpose, KeyRef, KeyState

pytestmark = pytest.mark.softhsm  # skipped, loudly, by tests/conftest.py when SoftHSM is missing

CONTEXT = {"tenant": "acme", "object": "invoice-7"}
DEK = bytes(range(32))
PKCS11_TOOL = shutil.which("pkcs11-tool")


@pytest.fixture(scope="session")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[softhsm.SoftHsmHarness]:
    with softhsm.session_harness(tmp_path_factory.mktemp("softhsm")) as h:
        yield h


@pytest.fixture
def backend(harness: softhsm.SoftHsmHarness) -> Pkcs11KeyBackend:
    assert isinstance(harness.backend, Pkcs11KeyBackend)
    return harness.backend


def object_label(ref: KeyRef) -> str:
    return f"{parse_key_uri(ref.key_id)['object']}.v{ref.version}"


def pkcs11_tool(harness: softhsm.SoftHsmHarness, *args: str) -> subprocess.CompletedProcess[str]:
    assert PKCS11_TOOL is not None, "OpenSC's pkcs11-tool is needed (apt-get install opensc)"
    token = harness.token
    return subprocess.run(
        [
            PKCS11_TOOL,
            "--module",
            softhsm.SOFTHSM_MODULE,
            "--token-label",
            token.label,
            "--login",
            "--pin",
            token.pin,
            *args,
        ],
        env=token.env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def listed_objects(harness: softhsm.SoftHsmHarness) -> list[dict[str, str]]:
    """pkcs11-tool --list-objects, parsed into one dict per object (kind, label, access...)."""
    result = pkcs11_tool(harness, "--list-objects")
    assert result.returncode == 0, result.stderr
    objects: list[dict[str, str]] = []
    for line in result.stdout.splitlines():
        if not line.strip():
            continue
        if not line[0].isspace():
            objects.append({"kind": line.strip()})
        elif objects and ":" in line:
            name, _, value = line.strip().partition(":")
            objects[-1][name.strip().lower()] = value.strip().strip("'")
    return objects


# -- round trip and binding -----------------------------------------------------------------------


def test_it_wraps_and_unwraps_a_data_key(backend: Pkcs11KeyBackend) -> None:
    ref = backend.create_key()
    wrapped = backend.wrap(ref.key_id, DEK, CONTEXT)

    assert wrapped.backend == "pkcs11"
    assert wrapped.mechanism == "AES-256-GCM"
    assert len(wrapped.ciphertext) == 12 + 32 + 16
    assert backend.unwrap(wrapped, CONTEXT) == DEK


def test_it_issues_rfc7512_key_ids(backend: Pkcs11KeyBackend, harness) -> None:
    ref = backend.create_key()

    attributes = parse_key_uri(ref.key_id)
    assert ref.key_id.startswith("pkcs11:token=")
    assert attributes["token"] == harness.token.label
    assert ref.key_id == key_uri(harness.token.label, attributes["object"])
    assert key_uri("my token;x", "a/b") == "pkcs11:token=my%20token%3Bx;object=a%2Fb"


def test_it_rejects_another_context_a_flipped_bit_and_another_version(
    backend: Pkcs11KeyBackend,
) -> None:
    ref = backend.create_key()
    wrapped = backend.wrap(ref.key_id, DEK, CONTEXT)
    v2 = backend.rotate(ref.key_id)

    with pytest.raises(UnwrapFailed):
        backend.unwrap(wrapped, {**CONTEXT, "object": "invoice-8"})
    for bit in range(len(wrapped.ciphertext) * 8):
        flipped = bytearray(wrapped.ciphertext)
        flipped[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(UnwrapFailed):
            backend.unwrap(dataclasses.replace(wrapped, ciphertext=bytes(flipped)), CONTEXT)
    with pytest.raises(UnwrapFailed):
        backend.unwrap(dataclasses.replace(wrapped, key=v2), CONTEXT)
    with pytest.raises(UnwrapFailed):
        backend.unwrap(dataclasses.replace(wrapped, mechanism="AES-KW-PAD"), CONTEXT)
    assert backend.unwrap(wrapped, CONTEXT) == DEK


def test_it_answers_key_not_found_for_unknown_keys(backend: Pkcs11KeyBackend, harness) -> None:
    unknown = key_uri(harness.token.label, "cv-" + "0" * 24)
    with pytest.raises(KeyNotFound):
        backend.wrap(unknown, DEK, CONTEXT)
    with pytest.raises(KeyNotFound):
        backend.describe("pkcs11:token=another;object=cv-" + "0" * 24)
    with pytest.raises(KeyNotFound):
        backend.describe("not-a-uri")
    with pytest.raises(KeyNotFound):
        backend.describe(f"pkcs11:token={harness.token.label};object=%ff%fe")


# -- what the token says about the keys -----------------------------------------------------------


def test_it_creates_keys_that_pkcs11_tool_lists_as_sensitive_and_never_extractable(
    backend: Pkcs11KeyBackend, harness
) -> None:
    # The issue's done-when: CKA_EXTRACTABLE false and CKA_SENSITIVE true, seen by OpenSC.
    # PCI-DSS 3.6.1.2: the KEK exists only inside the cryptographic device.
    kek = backend.create_key()
    signing = backend.create_key(purpose=KeyPurpose.SIGN)

    objects = {(o["kind"].split(";")[0], o.get("label")): o for o in listed_objects(harness)}
    secret = objects[("Secret Key Object", object_label(kek))]
    private = objects[("Private Key Object", object_label(signing))]
    for key in (secret, private):
        access = [flag.strip() for flag in key["access"].split(",")]
        assert "sensitive" in access
        assert "never extractable" in access
        assert "extractable" not in access
        assert "local" in access
    assert secret["kind"] == "Secret Key Object; AES length 32"
    assert secret["usage"] == "encrypt, decrypt"
    assert private["usage"] == "sign"


def test_it_refuses_to_reveal_the_key_value(backend: Pkcs11KeyBackend, harness) -> None:
    ref = backend.create_key()

    result = pkcs11_tool(
        harness, "--read-object", "--type", "secrkey", "--label", object_label(ref)
    )

    assert result.returncode != 0
    assert "CKR_ATTRIBUTE_SENSITIVE" in result.stderr + result.stdout


def test_it_describes_attributes_read_back_from_the_token(backend: Pkcs11KeyBackend) -> None:
    ref = backend.create_key()
    signing = backend.create_key(purpose=KeyPurpose.SIGN)

    (info,) = backend.describe(ref.key_id).versions
    assert (info.algorithm, info.size, info.state) == ("AES", 256, KeyState.ACTIVE)
    assert not info.extractable
    assert info.sensitive
    assert info.generated_in_backend
    assert info.fingerprint.startswith("kcv:")
    assert info.created is not None
    assert info.activated is not None
    assert "C_DestroyObject" in info.destroy_assurance
    (sign_info,) = backend.describe(signing.key_id).versions
    assert sign_info.algorithm == "EC"
    assert not sign_info.extractable
    assert sign_info.fingerprint.startswith("sha256:")
    backend.rotate(ref.key_id)
    assert info.fingerprint != backend.describe(ref.key_id).versions[1].fingerprint


# -- lifecycle ------------------------------------------------------------------------------------


def test_it_unwraps_but_does_not_wrap_with_a_deactivated_version(
    backend: Pkcs11KeyBackend,
) -> None:
    ref = backend.create_key()
    wrapped = backend.wrap(ref.key_id, DEK, CONTEXT)

    backend.set_state(ref, KeyState.DEACTIVATED)

    assert backend.unwrap(wrapped, CONTEXT) == DEK
    with pytest.raises(KeyStateError):
        backend.wrap(ref.key_id, DEK, CONTEXT)
    info = backend.describe(ref.key_id).version(1)
    assert info is not None
    assert info.state == KeyState.DEACTIVATED
    assert info.deactivated is not None


def test_it_wraps_with_the_newest_version_after_rotation(backend: Pkcs11KeyBackend) -> None:
    ref = backend.create_key()
    old = backend.wrap(ref.key_id, DEK, CONTEXT)

    v2 = backend.rotate(ref.key_id)
    new = backend.wrap(ref.key_id, DEK, CONTEXT)

    assert (v2.version, new.key) == (2, v2)
    assert backend.unwrap(old, CONTEXT) == DEK
    assert backend.unwrap(new, CONTEXT) == DEK


def test_it_keeps_states_across_a_restart(backend: Pkcs11KeyBackend, harness) -> None:
    ref = backend.create_key()
    wrapped = backend.wrap(ref.key_id, DEK, CONTEXT)
    backend.rotate(ref.key_id)
    backend.set_state(ref, KeyState.COMPROMISED)

    restarted = harness.new_backend()
    try:
        description = restarted.describe(ref.key_id)
        assert [v.state for v in description.versions] == [KeyState.COMPROMISED, KeyState.ACTIVE]
        assert description.versions == backend.describe(ref.key_id).versions
        assert restarted.unwrap(wrapped, CONTEXT) == DEK
        with pytest.raises(KeyStateError):
            restarted.set_state(ref, KeyState.ACTIVE)
    finally:
        restarted.close()


def test_it_destroys_the_object_on_the_token(backend: Pkcs11KeyBackend, harness) -> None:
    # PCI-DSS 3.7.5: a retired key version is destroyed in the device.
    ref = backend.create_key()
    wrapped = backend.wrap(ref.key_id, DEK, CONTEXT)
    v2 = backend.rotate(ref.key_id)
    labels = {o.get("label") for o in listed_objects(harness)}
    assert object_label(ref) in labels

    backend.destroy(ref)

    labels = {o.get("label") for o in listed_objects(harness)}
    assert object_label(ref) not in labels
    assert object_label(v2) in labels
    with pytest.raises(KeyDestroyed):
        backend.unwrap(wrapped, CONTEXT)
    with pytest.raises(KeyDestroyed):
        backend.set_state(ref, KeyState.ACTIVE)
    restarted = harness.new_backend()
    try:
        with pytest.raises(KeyDestroyed):
            restarted.unwrap(wrapped, CONTEXT)
        assert restarted.describe(ref.key_id).versions[0].state == KeyState.DESTROYED
    finally:
        restarted.close()
    backend.destroy(ref)  # idempotent


def test_it_neither_wraps_nor_unwraps_once_every_version_is_destroyed(
    backend: Pkcs11KeyBackend,
) -> None:
    ref = backend.create_key()
    wrapped = backend.wrap(ref.key_id, DEK, CONTEXT)

    backend.destroy(ref)

    with pytest.raises(KeyDestroyed):
        backend.wrap(ref.key_id, DEK, CONTEXT)
    with pytest.raises(KeyDestroyed):
        backend.unwrap(wrapped, CONTEXT)
    with pytest.raises(KeyNotFound):
        backend.unwrap(dataclasses.replace(wrapped, key=KeyRef(ref.key_id, 9)), CONTEXT)


def test_it_signs_with_ecdsa_p256(backend: Pkcs11KeyBackend) -> None:
    ref = backend.create_key(purpose=KeyPurpose.SIGN)

    used, signature = backend.sign(ref.key_id, b"audit chain head")

    assert used == ref
    assert backend.verify(ref, b"audit chain head", signature)
    assert not backend.verify(ref, b"audit chain head!", signature)
    assert b"BEGIN PUBLIC KEY" in backend.public_key(ref)
    backend.destroy(ref)
    assert backend.verify(ref, b"audit chain head", signature)  # the public half stays


# -- availability ---------------------------------------------------------------------------------


def test_it_is_unavailable_while_the_token_directory_is_away_and_recovers(
    backend: Pkcs11KeyBackend, harness
) -> None:
    ref = backend.create_key()
    wrapped = backend.wrap(ref.key_id, DEK, CONTEXT)
    other = harness.new_backend()
    try:
        with harness.outage("move"):
            with pytest.raises(BackendUnavailable) as caught:
                backend.unwrap(wrapped, CONTEXT)
            assert caught.value.transient
            with pytest.raises(BackendUnavailable):
                other.wrap(ref.key_id, DEK, CONTEXT)
            with pytest.raises(BackendUnavailable):
                backend.create_key()
            assert not backend.health().ok

        assert backend.health().ok
        assert backend.unwrap(wrapped, CONTEXT) == DEK
        assert other.unwrap(other.wrap(ref.key_id, DEK, CONTEXT), CONTEXT) == DEK
    finally:
        other.close()


def _wrap_unwrap_loop(backend: Pkcs11KeyBackend, key_id: str, rounds: int, results) -> None:
    try:
        for i in range(rounds):
            context = {**CONTEXT, "round": str(i)}
            wrapped = backend.wrap(key_id, DEK, context)
            assert backend.unwrap(wrapped, context) == DEK
        results.put(("ok", rounds))
    except BaseException as exc:
        results.put(("error", f"{type(exc).__name__}: {exc}"))


def test_it_serves_two_forked_processes_at_once(backend: Pkcs11KeyBackend) -> None:
    ref = backend.create_key()
    backend.wrap(ref.key_id, DEK, CONTEXT)  # the parent holds a live session when it forks
    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()
    workers = [
        ctx.Process(target=_wrap_unwrap_loop, args=(backend, ref.key_id, 2000, results))
        for _ in range(2)
    ]
    for worker in workers:
        worker.start()
    outcomes = [results.get(timeout=120) for _ in workers]
    for worker in workers:
        worker.join(timeout=30)

    assert outcomes == [("ok", 2000), ("ok", 2000)]
    assert [worker.exitcode for worker in workers] == [0, 0]
    assert backend.unwrap(backend.wrap(ref.key_id, DEK, CONTEXT), CONTEXT) == DEK


# -- configuration and secrets --------------------------------------------------------------------


@pytest.fixture
def inline_pin_options(harness) -> dict[str, object]:
    options: dict[str, object] = dict(harness.token.options())
    del options["PIN_FILE"]
    options["PIN"] = harness.token.pin
    return options


def test_it_rejects_unknown_options_and_two_pins(harness) -> None:
    options = harness.token.options()
    with pytest.raises(ConfigurationError, match="unknown option"):
        Pkcs11KeyBackend("hsm", {**options, "SLOT": 0})
    with pytest.raises(ConfigurationError, match="exactly one of PIN and PIN_FILE") as caught:
        Pkcs11KeyBackend("hsm", {**options, "PIN": harness.token.pin})
    assert harness.token.pin not in str(caught.value)
    without_pin = {k: v for k, v in options.items() if k != "PIN_FILE"}
    with pytest.raises(ConfigurationError, match="exactly one"):
        Pkcs11KeyBackend("hsm", without_pin)
    with pytest.raises(ConfigurationError, match="MODULE"):
        Pkcs11KeyBackend("hsm", {**options, "MODULE": "/nonexistent/libp11.so"})
    with pytest.raises(ConfigurationError, match="PIN_FILE"):
        Pkcs11KeyBackend("hsm", {**options, "PIN_FILE": "/nonexistent/pin"})


def test_it_never_shows_the_pin(
    backend: Pkcs11KeyBackend, harness, inline_pin_options, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    inline = Pkcs11KeyBackend("inline", inline_pin_options)
    texts = [repr(backend), str(backend), repr(inline), str(inline)]
    errors: list[BaseException] = []

    fresh = harness.new_backend()
    try:
        ref = fresh.create_key()
        wrapped = fresh.wrap(ref.key_id, DEK, CONTEXT)
        for attempt in (
            lambda: fresh.unwrap(wrapped, {"tenant": "other"}),
            lambda: fresh.describe(key_uri(harness.token.label, "cv-" + "1" * 24)),
            lambda: Pkcs11KeyBackend("x", {**harness.token.options(), "PIN": "p"}),
        ):
            with pytest.raises(KeyBackendError) as caught:
                attempt()
            errors.append(caught.value)
        with harness.outage("move"), pytest.raises(BackendUnavailable) as caught:
            fresh.unwrap(wrapped, CONTEXT)
        errors.append(caught.value)
        texts.append(fresh.health().detail)
    finally:
        fresh.close()

    for error in errors:
        chained: BaseException | None = error
        while chained is not None:
            texts += [str(chained), repr(chained)]
            chained = chained.__cause__ or chained.__context__
    texts += [record.getMessage() for record in caplog.records]
    texts += [str(record.args) for record in caplog.records]
    assert caplog.records, "the backend logs its connections and key operations"
    for secret in harness.secrets:
        for text in texts:
            assert secret not in text


def test_it_accepts_the_pin_inline_and_redacts_it(inline_pin_options, harness) -> None:
    inline = Pkcs11KeyBackend("inline", inline_pin_options)
    try:
        assert harness.token.pin not in repr(inline)
        assert "'PIN': '***'" in repr(inline)
        assert inline.health().ok
    finally:
        inline.close()


def test_it_keeps_the_pin_file_private(harness) -> None:
    mode = pathlib.Path(harness.token.pin_file).stat().st_mode & 0o777
    assert mode == 0o600


def _change_in_child(backend: Pkcs11KeyBackend, ref: KeyRef, results) -> None:
    try:
        backend.set_state(KeyRef(ref.key_id, 2), KeyState.DEACTIVATED)
        backend.destroy(ref)
        results.put("ok")
    except BaseException as exc:
        results.put(f"{type(exc).__name__}: {exc}")


def test_it_sees_state_changes_made_by_another_process(backend: Pkcs11KeyBackend) -> None:
    ref = backend.create_key()
    old = backend.wrap(ref.key_id, DEK, CONTEXT)
    backend.rotate(ref.key_id)
    new = backend.wrap(ref.key_id, DEK, CONTEXT)
    assert backend.unwrap(old, CONTEXT) == DEK  # handles now cached in this process

    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()
    child = ctx.Process(target=_change_in_child, args=(backend, ref, results))
    child.start()
    assert results.get(timeout=60) == "ok"
    child.join(timeout=30)

    with pytest.raises(KeyDestroyed):
        backend.unwrap(old, CONTEXT)
    with pytest.raises(KeyStateError):
        backend.wrap(ref.key_id, DEK, CONTEXT)
    assert backend.unwrap(new, CONTEXT) == DEK


def test_it_survives_threads_on_two_instances_of_one_module(
    backend: Pkcs11KeyBackend, harness
) -> None:
    # The per-instance lock alone would let these two instances call SoftHSM at once (a crash).
    other = harness.new_backend()
    ref = backend.create_key()
    failures: list[str] = []

    def work(instance: Pkcs11KeyBackend) -> None:
        try:
            for i in range(300):
                context = {**CONTEXT, "round": str(i)}
                assert instance.unwrap(instance.wrap(ref.key_id, DEK, context), context) == DEK
            instance.describe(ref.key_id)
        except BaseException as exc:
            failures.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=work, args=(b,)) for b in (backend, other) * 4]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
    finally:
        other.close()
    assert failures == []

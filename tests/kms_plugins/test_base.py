"""The backend base class and the alias configuration, with the local keystore as the subject."""

from __future__ import annotations

import json
import multiprocessing
import os

import pytest

from kms_plugins.base import KeyBackend
from kms_plugins.config import KeyBackends, backend_class
from kms_plugins.context import canonical_context, wrap_aad
from kms_plugins.errors import ConfigurationError, UnsupportedCapability
from kms_plugins.local import LocalKeyBackend
from kms_plugins.types import KeyRef

CONTEXT = {"tenant": "t", "object": "o", "version": "1"}


@pytest.fixture
def config(tmp_path):
    return {
        "soft": {
            "BACKEND": "local",
            "OPTIONS": {"PATH": str(tmp_path / "k.json"), "PASSPHRASE": "correct horse battery"},
        }
    }


def test_it_resolves_aliases_lazily_and_once(config) -> None:
    backends = KeyBackends(config)
    assert "soft" in backends
    assert backends["soft"] is backends["soft"]
    assert isinstance(backends["soft"], LocalKeyBackend)
    with pytest.raises(ConfigurationError, match="no key backend 'hard'"):
        backends["hard"]


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ([], "must be a JSON object"),
        ({"x": {}}, "needs a BACKEND"),
        ({"x": {"BACKEND": "local", "OPTION": {}}}, "unknown keys"),
        ({"x": {"BACKEND": "local", "OPTIONS": []}}, "OPTIONS must be an object"),
    ],
)
def test_it_rejects_malformed_configurations(config, message) -> None:
    with pytest.raises(ConfigurationError, match=message):
        KeyBackends(config)


def test_it_names_what_cannot_be_imported() -> None:
    with pytest.raises(ConfigurationError, match="cannot import"):
        backend_class("no_such_package.Backend")
    with pytest.raises(ConfigurationError, match="not a KeyBackend"):
        backend_class("json.JSONDecoder")
    assert backend_class("local") is LocalKeyBackend


def test_unknown_and_missing_options_are_refused(tmp_path) -> None:
    with pytest.raises(ConfigurationError, match=r"unknown option\(s\) \['COLOUR'\]"):
        LocalKeyBackend("x", {"PATH": str(tmp_path / "k"), "PASSPHRASE": "p" * 12, "COLOUR": "red"})
    with pytest.raises(ConfigurationError, match=r"missing option\(s\) \['PATH'\]"):
        LocalKeyBackend("x", {"PASSPHRASE": "p" * 12})
    with pytest.raises(ConfigurationError, match="exactly one of KEY_FILE and PASSPHRASE"):
        LocalKeyBackend("x", {"PATH": str(tmp_path / "k")})


def test_sensitive_options_never_show(config) -> None:
    backend = KeyBackends(config)["soft"]
    for text in (repr(backend), str(backend), repr(backend.redacted_options())):
        assert "correct horse battery" not in text
        assert "***" in text


def test_a_wrong_passphrase_is_a_configuration_error(config) -> None:
    backend = KeyBackends(config)["soft"]
    backend.create_key()
    wrong = LocalKeyBackend("soft", {**config["soft"]["OPTIONS"], "PASSPHRASE": "wrong"})
    with pytest.raises(ConfigurationError, match="wrong passphrase") as caught:
        wrong.describe("anything")
    assert "correct horse" not in str(caught.value)


def test_the_keystore_holds_no_key_in_clear(tmp_path) -> None:
    backend = LocalKeyBackend(
        "x", {"PATH": str(tmp_path / "k.json"), "KEY_FILE": str(tmp_path / "m")}
    )
    ref = backend.create_key()
    material = backend._material  # populated by use
    backend.wrap(ref.key_id, b"d" * 32, CONTEXT)
    (kek,) = material.values()
    stored = (tmp_path / "k.json").read_bytes()
    assert kek not in stored
    assert kek.hex().encode() not in stored
    assert oct((tmp_path / "k.json").stat().st_mode & 0o777) == "0o600"
    assert oct((tmp_path / "m").stat().st_mode & 0o777) == "0o600"


class CountingLocal(LocalKeyBackend):
    """Records which processes opened it."""

    def _connect(self) -> None:
        with open(self._options["CONNECTS"], "a") as log:
            log.write(f"{os.getpid()}\n")
        super()._connect()

    option_names = LocalKeyBackend.option_names | {"CONNECTS"}


def _use_in_child(backend: KeyBackend, key_id: str, out: multiprocessing.Queue) -> None:
    dek = os.urandom(32)
    out.put(backend.unwrap(backend.wrap(key_id, dek, CONTEXT), CONTEXT) == dek and os.getpid())


def test_a_forked_process_reopens_the_backend(config, tmp_path) -> None:
    connects = tmp_path / "connects"
    options = {**config["soft"]["OPTIONS"], "CONNECTS": str(connects)}
    backend = CountingLocal("soft", options)
    ref = backend.create_key()
    backend.wrap(ref.key_id, b"x" * 32, CONTEXT)  # the parent has it open
    context = multiprocessing.get_context("fork")
    out: multiprocessing.Queue = context.Queue()
    children = [
        context.Process(target=_use_in_child, args=(backend, ref.key_id, out)) for _ in range(2)
    ]
    for child in children:
        child.start()
    results = [out.get(timeout=60) for _ in children]
    for child in children:
        child.join(timeout=60)
    assert all(isinstance(pid, int) and pid != os.getpid() for pid in results), results
    assert all(child.exitcode == 0 for child in children)
    opened_by = [int(line) for line in connects.read_text().split()]
    assert opened_by[0] == os.getpid()
    assert sorted(opened_by[1:]) == sorted(results), "each child opened its own connection"
    rotated = backend.rotate(ref.key_id)  # the parent still works after its children ran
    assert rotated.version == 2


def test_a_backend_that_cannot_sign_says_so(tmp_path) -> None:
    class WrapOnly(LocalKeyBackend):
        capabilities = LocalKeyBackend.capabilities & ~LocalKeyBackend.capabilities.SIGN

    backend = WrapOnly("w", {"PATH": str(tmp_path / "k.json"), "PASSPHRASE": "p" * 12})
    with pytest.raises(UnsupportedCapability, match="cannot sign"):
        backend.sign("k", b"data")


def test_the_context_is_canonical_and_binds_the_key_version() -> None:
    assert (
        canonical_context({"b": "2", "a": "ü"})
        == json.dumps({"a": "ü", "b": "2"}, separators=(",", ":"), ensure_ascii=False).encode()
    )
    assert canonical_context({"b": "2", "a": "1"}) == canonical_context({"a": "1", "b": "2"})
    one = wrap_aad(KeyRef("k", 1), "A256GCM", CONTEXT)
    assert one != wrap_aad(KeyRef("k", 2), "A256GCM", CONTEXT)
    assert one != wrap_aad(KeyRef("k", 1), "KW", CONTEXT)
    assert one != wrap_aad(KeyRef("k", 1), "A256GCM", {**CONTEXT, "version": "2"})


def test_kms_plugins_imports_without_django() -> None:
    """The client and third-party backends use kms_plugins on machines without Django."""
    import subprocess
    import sys

    script = (
        "import sys; sys.modules['django'] = None\n"
        "import kms_plugins, kms_plugins.base, kms_plugins.config, kms_plugins.local\n"
        "import kms_plugins.pkcs11, kms_plugins.kmip, kms_plugins.tpm, kms_plugins.testing\n"
        "print('ok')"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_the_wrap_binds_the_version_even_where_versions_share_material(config, monkeypatch) -> None:
    """Relabelling a wrapped key as another version fails because of the associated data alone."""
    import dataclasses

    from kms_plugins.errors import UnwrapFailed

    backend = KeyBackends(config)["soft"]
    ref = backend.create_key()
    backend.rotate(ref.key_id)
    same = os.urandom(32)
    monkeypatch.setattr(backend, "_secret", lambda ref, version: same)
    wrapped = backend.wrap(ref.key_id, b"d" * 32, CONTEXT)
    assert backend.unwrap(wrapped, CONTEXT) == b"d" * 32
    relabelled = dataclasses.replace(wrapped, key=KeyRef(ref.key_id, 1))
    with pytest.raises(UnwrapFailed):
        backend.unwrap(relabelled, CONTEXT)


def test_a_library_exception_is_reported_by_type_only(config, monkeypatch) -> None:
    from kms_plugins.errors import KeyBackendError

    backend = KeyBackends(config)["soft"]
    ref = backend.create_key()

    def explode(*args):
        raise ValueError("secret-looking detail 1234")

    monkeypatch.setattr(backend, "_wrap", explode)
    with pytest.raises(KeyBackendError) as caught:
        backend.wrap(ref.key_id, b"d" * 32, CONTEXT)
    assert "ValueError" in str(caught.value)
    assert "1234" not in str(caught.value)

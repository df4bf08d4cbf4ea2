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


def _use_in_child(backend: KeyBackend, key_id: str, out: multiprocessing.Queue) -> None:
    dek = os.urandom(32)
    out.put(backend.unwrap(backend.wrap(key_id, dek, CONTEXT), CONTEXT) == dek and os.getpid())


def test_a_forked_process_reopens_the_backend(config) -> None:
    backend = KeyBackends(config)["soft"]
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

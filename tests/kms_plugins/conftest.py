"""Real key-backend components for the tests: a SoftHSM token, swtpm, a PyKMIP server.

Each is started once per test session on loopback, under a temporary directory, with keys,
PINs and certificates generated for the run, and stopped at the end.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator
from typing import Any

import pytest

from kms_plugins.testing import BackendHarness

# test id -> (module with available() and session_harness(), component marker)
HARNESSES = {
    "local": ("kms_plugins.testing.local", None),
    "pkcs11": ("kms_plugins.testing.softhsm", "softhsm"),
    "tpm": ("kms_plugins.testing.swtpm", "tpm"),
    "kmip": ("kms_plugins.testing.kmip_server", "kmip"),
}


def harness_params() -> list[Any]:
    params = []
    for name, (_, marker) in HARNESSES.items():
        marks = [getattr(pytest.mark, marker)] if marker else []
        params.append(pytest.param(name, marks=marks, id=name))
    return params


@pytest.fixture(scope="session")
def _harness_stack() -> Iterator[contextlib.ExitStack]:
    with contextlib.ExitStack() as stack:
        yield stack


@pytest.fixture(scope="session")
def _harnesses(
    _harness_stack: contextlib.ExitStack, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, BackendHarness]:
    return {}


@pytest.fixture(params=harness_params())
def backend_harness(
    request: pytest.FixtureRequest,
    _harnesses: dict[str, BackendHarness],
    _harness_stack: contextlib.ExitStack,
    tmp_path_factory: pytest.TempPathFactory,
) -> BackendHarness:
    """The harness of one backend; components start on first use and live for the session."""
    name = request.param
    if name not in _harnesses:
        module = importlib.import_module(HARNESSES[name][0])
        reason = module.available()
        if reason is not None:
            pytest.skip(f"[{HARNESSES[name][1]}] {reason}")
        _harnesses[name] = _harness_stack.enter_context(
            module.session_harness(tmp_path_factory.mktemp(name))
        )
    return _harnesses[name]

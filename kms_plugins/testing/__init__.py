"""The key-backend conformance suite, reusable by third-party backends.

A test module imports the tests of ``kms_plugins.testing.conformance`` and provides a
``backend_harness`` fixture returning a ``BackendHarness`` for the backend under test::

    from kms_plugins.testing.conformance import *  # noqa: F403

    @pytest.fixture
    def backend_harness(my_hsm):
        return MyHarness(...)

The harness says how to make the backend go away (stop the server process, freeze it with
SIGSTOP, move its files away) and bring it back, and which strings are secret.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from kms_plugins.base import KeyBackend

OUTAGE_STOP = "stop"  # the backend's server process is stopped, then started again
OUTAGE_FREEZE = "freeze"  # the backend's server process is frozen (SIGSTOP), then thawed
OUTAGE_MOVE = "move"  # an in-process backend's files are moved away, then back


class BackendHarness:
    """What the conformance suite needs to know about one backend under test.

    Attributes:
        name: the test id ("local", "pkcs11", "tpm", "kmip").
        backend: a configured backend instance.
        secrets: strings (PINs, passphrases, key file contents) that must never appear in a repr,
            a str, a log line or an exception message.
        expect_non_extractable: whether ``describe`` must report KEKs as non-extractable.
        outage_kinds: the kinds of outage ``outage`` can cause.
    """

    name = ""
    secrets: tuple[str, ...] = ()
    expect_non_extractable = True
    outage_kinds: tuple[str, ...] = ()

    def __init__(self, backend: KeyBackend) -> None:
        self.backend = backend

    def new_backend(self) -> KeyBackend:
        """A new instance with the same configuration (as a restarted process would make)."""
        return type(self.backend)(self.backend.alias, self.backend._options)

    @contextlib.contextmanager
    def outage(self, kind: str) -> Iterator[None]:
        """Make the backend unavailable in the given way; on exit, restore it."""
        raise NotImplementedError(kind)
        yield  # pragma: no cover

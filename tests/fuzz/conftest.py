"""Hypothesis settings for the fuzz tests: the CI size by default, the torture size when
``VAULT_TORTURE=1`` (``make torture``).

The profiles are registered here and applied per test through ``tests.fuzz.mutations.sized``
(never with ``settings.load_profile``, which would change the defaults of every other
hypothesis test in the same session).

- ``vault-fuzz-ci``: derandomized (the same examples on every run, so CI is reproducible), no
  example database, no deadline (a loaded CI machine is slow), ``print_blob`` so a failure
  prints the ``@reproduce_failure`` line.
- ``vault-fuzz-torture``: random (``--hypothesis-seed=N`` picks the run), otherwise the same.

Run one size or the other::

    .venv/bin/pytest tests/fuzz -q --hypothesis-show-statistics
    VAULT_TORTURE=1 .venv/bin/pytest tests/fuzz -q --hypothesis-show-statistics --hypothesis-seed=7
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings

_COMMON = {
    "deadline": None,
    "database": None,
    "print_blob": True,
    "suppress_health_check": [
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
        HealthCheck.large_base_example,
    ],
}

settings.register_profile("vault-fuzz-ci", derandomize=True, **_COMMON)  # type: ignore[arg-type]
settings.register_profile(
    "vault-fuzz-torture",
    derandomize=False,
    **_COMMON,  # type: ignore[arg-type]
)

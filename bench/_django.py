"""Shared set-up of the benchmarks that need Django: settings on a temporary data directory."""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def setup(data_dir: Path) -> None:
    """Configure Django with ``data_dir`` as ``VAULT_DATA_DIR`` (quiet logs) and set it up."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "vault.settings")
    os.environ["VAULT_DATA_DIR"] = str(data_dir)
    os.environ.setdefault("VAULT_LOG_LEVEL", "WARNING")
    import django

    django.setup()

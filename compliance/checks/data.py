"""Checks (see docs/compliance.md and the catalogue in compliance/catalog.py)."""

from __future__ import annotations

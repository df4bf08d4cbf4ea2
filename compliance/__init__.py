"""Compliance engine: PCI-DSS v4.0.1 checks, runs and signed reports.

It reads the vault apps; nothing under ``vault/`` imports it.
"""

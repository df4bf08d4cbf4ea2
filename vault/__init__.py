"""Ciphervault: a vault that keeps data as ciphertext while the keys stay with the customer.

This package must stay importable without Django: the ``cvault`` client lives under
``vault.client`` and the envelope code under ``vault.crypto``. Django apps live in the
sub-packages and are wired together by ``vault.settings`` and ``vault.urls``.
"""

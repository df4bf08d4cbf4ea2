"""Governance checks (PCI-DSS 12.3): the inventory of the cryptography the vault uses.

GOV-002 to GOV-004 need people and live in ``compliance/checks/manual.py``.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from typing import Any

from django.conf import settings
from django.utils.module_loading import import_string

from compliance.checks import register
from compliance.checks.base import Check, Context, Outcome
from kms_plugins.errors import KeyBackendError
from kms_plugins.types import KeyPurpose
from vault.crypto import envelope
from vault.crypto.auditbundle import format_time
from vault.crypto.checkpoint import SIGNATURE_TYPE_ECDSA

# Password hashers no longer acceptable for new hashes (unsalted or broken digests).
DEPRECATED_HASHERS = frozenset({"md5", "sha1", "unsalted_md5", "unsalted_sha1", "crypt"})
ACCEPTED_TLS = frozenset({"TLSv1.2", "TLSv1.3"})
MIN_BITS = {"AES": 128, "EC": 256}  # below these, a key is too weak to count as strong crypto
ATTESTATION_KIND = "crypto_inventory_review"
REQUIREMENT = "12.3.3"


def _password_hashing() -> dict[str, Any]:
    algorithms = [import_string(path).algorithm for path in settings.PASSWORD_HASHERS]
    return {"preferred": algorithms[0] if algorithms else "", "accepted": algorithms}


def _wrap_mechanism(kind_module: str) -> str:
    """The mechanism name a backend's module records in envelope stanzas (``MECHANISM``)."""
    return str(getattr(importlib.import_module(kind_module), "MECHANISM", ""))


class _Inventory:
    """The inventory being built, with what is deprecated and what could not be read."""

    def __init__(self) -> None:
        self.deprecated: list[str] = []
        self.unreadable: list[str] = []
        self.keys: list[dict[str, Any]] = []
        self.kmip_tls: list[dict[str, Any]] = []

    def add_key(self, ctx: Context, binding: Any, owner: str) -> None:
        name = f"{owner}:{binding.role}:{binding.key_id}"
        try:
            backend = ctx.backend(binding.backend_alias)
            description = ctx.describe(binding)
        except KeyBackendError as exc:
            self.unreadable.append(f"key {name} ({exc.__class__.__name__})")
            return
        info = description.primary or (description.versions[-1] if description.versions else None)
        if info is None:
            self.unreadable.append(f"key {name} (no versions)")
            return
        signing = info.purpose == KeyPurpose.SIGN
        self.keys.append(
            {
                "key": name,
                "backend": binding.backend_alias,
                "kind": backend.kind,
                "algorithm": info.algorithm,
                "bits": info.size,
                "use": "ECDSA P-256/SHA-256 signatures"
                if signing
                else _wrap_mechanism(type(backend).__module__),
            }
        )
        floor = MIN_BITS.get(info.algorithm)
        if floor is None or info.size < floor:
            self.deprecated.append(f"key {name} is {info.algorithm}-{info.size}")

    def add_kmip(self, ctx: Context, alias: str) -> None:
        from kms_plugins import kmip

        try:
            session = ctx.backend(alias).tls_session()  # type: ignore[attr-defined]
        except KeyBackendError as exc:
            self.unreadable.append(f"KMIP backend {alias} TLS ({exc.__class__.__name__})")
            return
        row = {
            "backend": alias,
            "policy_versions": ["TLSv1.2"],
            "policy_ciphers": list(kmip.ECDHE_CIPHERS),
            "negotiated_version": session["version"],
            "negotiated_cipher": session["cipher"],
        }
        self.kmip_tls.append(row)
        if session["version"] not in ACCEPTED_TLS:
            self.deprecated.append(f"KMIP backend {alias} speaks {session['version']}")
        elif session["version"] == "TLSv1.2" and session["cipher"] not in kmip.ECDHE_CIPHERS:
            self.deprecated.append(f"KMIP backend {alias} negotiated {session['cipher']}")


@register
class CryptoInventoryReviewed(Check):
    """GOV-001: the cipher and protocol inventory is free of deprecated items and reviewed."""

    id = "GOV-001"
    title = "The inventory of ciphers and protocols in use has nothing deprecated and was reviewed"
    description = (
        "Builds the inventory of the cryptography serving the tenant: the envelope AEAD, each "
        "key's algorithm, size and wrap mechanism (from its backend), checkpoint and report "
        "signatures, the password hasher, token and audit HMACs, and the TLS of KMIP backends "
        "(policy and the negotiated session). Fails when something deprecated is in use (an "
        "MD5, SHA-1 or unsalted password hasher first in PASSWORD_HASHERS, TLS below 1.2, a "
        "key below AES-128 or P-256); passes when a valid signed crypto_inventory_review "
        "attestation for 12.3.3 exists, and otherwise asks for one."
    )
    risk = "Deprecated cryptography stays in use because nobody looks at the whole inventory."
    scope = "tenant"
    requirements = (REQUIREMENT,)
    remediation = (
        "Replace what is deprecated (PASSWORD_HASHERS with PBKDF2 or Argon2 first; KMIP "
        "servers speaking TLS 1.2 or later with ECDHE AEAD suites), then review this check's "
        "evidence and attest it: POST /api/v1/compliance/attestations/ with kind "
        "crypto_inventory_review, requirement 12.3.3, valid at most a year."
    )
    evidence_captured = "The crypto inventory (algorithms, sizes, mechanisms, protocols)."

    def run(self, ctx: Context) -> Iterator[Outcome]:
        found = _Inventory()
        for binding in ctx.bindings:
            found.add_key(ctx, binding, ctx.tenant.slug)
        for binding in ctx.platform_bindings:
            found.add_key(ctx, binding, "platform")
        for alias in sorted({b.backend_alias for b in ctx.bindings if b.backend_kind == "kmip"}):
            found.add_kmip(ctx, alias)
        hashing = _password_hashing()
        if hashing["preferred"] in DEPRECATED_HASHERS:
            found.deprecated.append(f"passwords are hashed with {hashing['preferred']}")
        inventory = {
            "envelope": {
                "format_version": envelope.FORMAT_VERSION,
                "aead": "AES-256-GCM, STREAM segments",
                "subkeys": "HKDF-SHA256",
                "key_commitment": "HKDF-SHA256",
            },
            "keys": found.keys,
            "checkpoint_signature": (
                f"ECDSA P-256/SHA-256 (signed note type {SIGNATURE_TYPE_ECDSA})"
            ),
            "password_hashing": hashing,
            "token_digest": "HMAC-SHA256",
            "audit_sensitive_values": "HMAC-SHA256 under HKDF-SHA256 derived keys",
            "kmip_tls": found.kmip_tls,
            "deprecated": found.deprecated,
            "unreadable": found.unreadable,
        }
        digest = ctx.evidence("crypto_inventory", inventory)
        slug = ctx.tenant.slug
        if found.deprecated:
            yield self.failed(
                "tenant",
                slug,
                f"Tenant {slug} relies on deprecated cryptography: {'; '.join(found.deprecated)}.",
                digest,
                deprecated=found.deprecated,
            )
        elif found.unreadable:
            yield self.error(
                "tenant",
                slug,
                f"The crypto inventory of tenant {slug} is incomplete: could not read "
                f"{'; '.join(found.unreadable)}.",
                digest,
            )
        else:
            yield self._review(ctx, digest)

    def _review(self, ctx: Context, digest: str) -> Outcome:
        from compliance.models import Attestation
        from compliance.services import attestation_verifies

        slug = ctx.tenant.slug
        candidates = Attestation.objects.filter(
            tenant=ctx.tenant,
            requirement=REQUIREMENT,
            kind=ATTESTATION_KIND,
            signed_at__lte=ctx.now,
            valid_until__gt=ctx.now,
        ).order_by("-signed_at")
        review = next((a for a in candidates if attestation_verifies(a)), None)
        if review is None:
            return self.manual(
                "tenant",
                slug,
                f"Tenant {slug}'s crypto inventory has nothing deprecated; review the inventory "
                "and attest it.",
                digest,
            )
        return self.passed(
            "tenant",
            slug,
            f"Tenant {slug}'s crypto inventory has nothing deprecated and was reviewed by "
            f"{review.signer.email} on {review.signed_at:%Y-%m-%d}.",
            digest,
            attestation=review.pk,
            valid_until=format_time(review.valid_until),
        )

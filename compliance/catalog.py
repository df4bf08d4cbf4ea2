"""The PCI-DSS v4.0.1 requirements this product reports on, and the guardrails on settings.

Titles are our own short paraphrases; the normative text is the PCI SSC's "Requirements and
Testing Procedures v4.0.1". Every requirement a check names must be listed here (a test checks
it), and requirements no check can answer are listed too, so that a report's totals do not
flatter: they show as Not Tested until someone attests them.
"""

from __future__ import annotations

import hashlib
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.conf import settings

from vault.crypto import canonical

FRAMEWORK = {"name": "PCI DSS", "version": "4.0.1"}

REQUIREMENTS: dict[str, str] = {
    "3.5.1": "Stored account data is unreadable wherever it is kept",
    "3.5.1.1": "Hashes that render account data unreadable are keyed",
    "3.6.1": "Keys are protected: few custodians, wrapping keys at least as strong as the keys "
    "they wrap and stored apart from them, keys in as few places as possible",
    "3.6.1.1": "A documented cryptographic architecture, with no key shared between production "
    "and test (service providers)",
    "3.6.1.2": "Secret keys are stored encrypted under a separate key, inside a secure "
    "cryptographic device, or as key shares",
    "3.6.1.3": "Access to cleartext key components is limited to the fewest custodians",
    "3.7.1": "Keys are generated strong",
    "3.7.2": "Keys are distributed securely",
    "3.7.3": "Keys are stored securely",
    "3.7.4": "Keys change at the end of a defined cryptoperiod",
    "3.7.5": "Retired, replaced or compromised keys are no longer used to encrypt",
    "3.7.6": "Manual cleartext key operations use split knowledge and dual control",
    "3.7.7": "Unauthorized substitution of keys is prevented",
    "3.7.8": "Key custodians acknowledge their responsibilities",
    "3.7.9": "Customers get guidance on handling keys shared with them (service providers)",
    "4.2.1": "Strong cryptography protects data in transit",
    "7.2.1": "An access control model is defined",
    "7.2.2": "Access is assigned by job function with least privilege",
    "7.2.3": "Privileges are approved by authorized personnel",
    "7.2.4": "User accounts and their privileges are reviewed at least every six months",
    "7.2.5": "System and application accounts have least privilege",
    "7.2.5.1": "System and application accounts' access is reviewed periodically",
    "8.2.1": "Every user has a unique ID",
    "8.2.2": "Shared or generic accounts are used only by documented exception",
    "8.2.6": "Inactive accounts are removed or disabled within 90 days",
    "8.2.8": "Sessions idle for more than 15 minutes require re-authentication",
    "8.3.4": "Accounts lock after at most 10 failed attempts, for at least 30 minutes",
    "8.3.6": "Passwords have at least 12 characters with letters and digits",
    "8.3.7": "A new password differs from the last four",
    "8.4.1": "Multi-factor authentication for administrative access",
    "8.4.2": "Multi-factor authentication for all access into the cardholder data environment",
    "8.4.3": "Multi-factor authentication for remote network access",
    "8.5.1": "Multi-factor authentication cannot be replayed or bypassed",
    "8.6.1": "Interactive use of system and application accounts is controlled",
    "8.6.2": "No passwords or secrets are hard-coded for system and application accounts",
    "8.6.3": "System and application account credentials are protected and changed periodically",
    "10.2.1": "Audit logs capture the events of 10.2.1.1 to 10.2.1.7",
    "10.2.1.3": "Audit logs capture all access to audit logs",
    "10.2.2": "Each audit event records who, what, when, outcome, origin and target",
    "10.3.1": "Read access to audit logs is limited to those with a job need",
    "10.3.2": "Audit logs are protected from modification",
    "10.3.3": "Audit logs are promptly copied to a central store that is hard to modify",
    "10.3.4": "Changes to existing audit logs raise alerts",
    "10.4.1.1": "Audit log reviews are automated",
    "10.5.1": "Audit history is kept for 12 months, 3 months of it at hand",
    "10.6.1": "System clocks are synchronized",
    "10.7.2": "Failures of critical security controls are detected and acted on",
    "12.3.1": "Targeted risk analyses exist for every flexible-frequency requirement",
    "12.3.3": "Cipher suites and protocols in use are inventoried and reviewed every year",
    "12.3.4": "Hardware and software technologies are reviewed every year",
}


def _tenant_cryptoperiod(tenant: Any) -> int:
    own = getattr(tenant, "kek_cryptoperiod_days", None)
    return int(own if own is not None else settings.VAULT_KEK_CRYPTOPERIOD_DAYS)


def _setting(name: str) -> Callable[[Any], Any]:
    return lambda tenant: getattr(settings, name)


OPERATORS: dict[str, Callable[[Any, Any], bool]] = {
    "lte": operator.le,
    "gte": operator.ge,
    "eq": operator.eq,
}


@dataclass(frozen=True)
class Guardrail:
    """The loosest value of a setting a requirement tolerates."""

    requirement: str
    setting: str
    operator: str
    value: Any
    read: Callable[[Any], Any]

    def evaluate(self, tenant: Any) -> dict[str, Any]:
        """{"setting", "operator", "value", "actual", "violated"} for ``tenant``."""
        actual = self.read(tenant)
        violated = not OPERATORS[self.operator](actual, self.value)
        return {
            "setting": self.setting,
            "operator": self.operator,
            "value": self.value,
            "actual": actual,
            "violated": violated,
        }


# NIST SP 800-57 Part 1 suggests at most two years of originator use for a key-wrapping key.
GUARDRAILS: tuple[Guardrail, ...] = (
    Guardrail("3.7.4", "tenant.kek_cryptoperiod_days", "lte", 730, _tenant_cryptoperiod),
    Guardrail(
        "3.7.4",
        "VAULT_KEK_CRYPTOPERIOD_DAYS",
        "lte",
        730,
        _setting("VAULT_KEK_CRYPTOPERIOD_DAYS"),
    ),
    Guardrail("3.7.6", "VAULT_APPROVALS_REQUIRED", "gte", 2, _setting("VAULT_APPROVALS_REQUIRED")),
    Guardrail(
        "8.2.8", "VAULT_SESSION_IDLE_MINUTES", "lte", 15, _setting("VAULT_SESSION_IDLE_MINUTES")
    ),
    Guardrail("8.3.4", "VAULT_LOCKOUT_THRESHOLD", "lte", 10, _setting("VAULT_LOCKOUT_THRESHOLD")),
    Guardrail("8.3.4", "VAULT_LOCKOUT_MINUTES", "gte", 30, _setting("VAULT_LOCKOUT_MINUTES")),
    Guardrail(
        "8.3.6", "VAULT_PASSWORD_MIN_LENGTH", "gte", 12, _setting("VAULT_PASSWORD_MIN_LENGTH")
    ),
    Guardrail("8.3.7", "VAULT_PASSWORD_HISTORY", "gte", 4, _setting("VAULT_PASSWORD_HISTORY")),
    Guardrail(
        "10.5.1", "VAULT_AUDIT_RETENTION_DAYS", "gte", 365, _setting("VAULT_AUDIT_RETENTION_DAYS")
    ),
)


def guardrails_for(ref: str) -> list[Guardrail]:
    return [g for g in GUARDRAILS if g.requirement == ref]


def catalog_digest() -> str:
    """SHA-256 over the catalogue: requirements, guardrails and every check's metadata.

    A result means something only with the check version that produced it; this digest names
    the whole catalogue a run used.
    """
    from compliance.checks import all_checks

    document = {
        "framework": FRAMEWORK,
        "requirements": REQUIREMENTS,
        "guardrails": [[g.requirement, g.setting, g.operator, g.value] for g in GUARDRAILS],
        "checks": [check.metadata() for check in all_checks()],
    }
    return hashlib.sha256(canonical.canonical_json(document)).hexdigest()

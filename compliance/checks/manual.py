"""Requirements that need people: they report MANUAL, and a valid signed attestation for the
requirement (``compliance.services.attestation_create``) lets the requirement count as In Place.
"""

from __future__ import annotations

from compliance.checks import register
from compliance.checks.base import Check


def _manual(
    check_id: str,
    requirements: tuple[str, ...],
    title: str,
    description: str,
    risk: str,
    remediation: str,
    severity: str = "medium",
    scope: str = "tenant",
) -> type[Check]:
    cls = type(
        check_id.replace("-", "_"),
        (Check,),
        {
            "id": check_id,
            "kind": "manual",
            "requirements": requirements,
            "title": title,
            "description": description,
            "risk": risk,
            "remediation": remediation,
            "severity": severity,
            "scope": scope,
            "evidence_captured": "A signed attestation (statement, signer, validity, document "
            "hash).",
            "__module__": __name__,
        },
    )
    return register(cls)


_manual(
    "KEY-011",
    ("3.7.5",),
    "Compromised keys were replaced and their data rewrapped within the agreed time",
    "For each key marked compromised, a replacement exists and the rewrap campaign finished "
    "within the incident's service level.",
    "Data stays protected by a key an attacker may hold.",
    "Mark the key compromised (POST /api/v1/keys/campaigns/ with compromised=true) and attest "
    "the incident's handling.",
    severity="high",
    scope="key",
)
_manual(
    "KEY-012",
    ("3.7.5",),
    "Keys known to departed custodians were replaced",
    "When a custodian who knew cleartext key components leaves, the keys they knew are replaced.",
    "A former custodian could still use what they knew.",
    "Rotate the keys the person had access to and attest it.",
    scope="user",
)
_manual(
    "KEY-015",
    ("3.7.8",),
    "Every key custodian has acknowledged their responsibilities",
    "Each custodian signed the current custodian responsibilities document.",
    "Custodians unaware of their duties mishandle keys.",
    "Have every custodian sign an attestation of kind custodian_ack for requirement 3.7.8.",
    scope="user",
)
_manual(
    "KEY-016",
    ("3.6.1.1",),
    "The cryptographic architecture document is current and reviewed",
    "The architecture section of the report (generated from the key inventory) was reviewed "
    "by a responsible person within the last year.",
    "An undocumented architecture hides weak or forgotten keys.",
    "Review the report's architecture section and attest it for requirement 3.6.1.1.",
    scope="platform",
)
_manual(
    "KEY-019",
    ("3.7.9",),
    "Customers have current guidance on the keys shared with them",
    "Published guidance on transmitting, storing and updating keys shared with customers.",
    "Customers mishandle keys they were given.",
    "Publish docs/key-lifecycle.md to customers and attest the publication.",
    severity="low",
    scope="platform",
)
_manual(
    "IAM-002",
    ("7.2.4",),
    "User accounts and their access were reviewed in the last six months",
    "A person reviewed every member's role and every live token, and fixed what was wrong.",
    "Access nobody needs any more stays open.",
    "Review the members and tokens (the report's populations appendix) and attest the review "
    "for requirement 7.2.4, valid for 183 days.",
    severity="high",
)
_manual(
    "IAM-003",
    ("7.2.5", "7.2.5.1"),
    "Integration tokens have least privilege and were reviewed",
    "Tokens used by integrations carry only the role they need and were reviewed at the "
    "frequency the targeted risk analysis sets.",
    "An integration's token can do more than it needs.",
    "Review integration tokens and attest the review for requirement 7.2.5.1.",
)
_manual(
    "IAM-010",
    ("8.5.1",),
    "Multi-factor authentication cannot be replayed or bypassed",
    "TOTP codes are single-use and no sign-in skips the second factor outside an approved, "
    "time-limited exception.",
    "A stolen code or a bypass defeats the second factor.",
    "Attest the MFA configuration and exception register for requirement 8.5.1.",
    scope="platform",
)
_manual(
    "LOG-005",
    ("10.3.3",),
    "Audit logs are copied promptly to a store that is hard to modify",
    "Audit exports (manage.py audit_export --archive) reach write-once storage promptly and "
    "checkpoints are published outside the vault.",
    "An attacker with the database rewrites history unnoticed.",
    "Schedule audit_export --archive to object-locked storage and attest it.",
    scope="platform",
)
_manual(
    "LOG-007",
    ("10.6.1",),
    "System clocks are synchronized to designated time sources",
    "Every node synchronizes its clock with NTP and time settings changes are logged.",
    "Event times cannot be trusted or correlated.",
    "Configure chrony or systemd-timesyncd and attest it.",
    severity="low",
    scope="platform",
)
_manual(
    "LOG-009",
    ("10.4.1.1",),
    "Audit log review is automated",
    "Alerting rules over the audit log run at least daily.",
    "Attacks recorded in the log go unnoticed.",
    "Feed the audit export to your SIEM and attest its daily review rules.",
    scope="platform",
)
_manual(
    "GOV-002",
    ("12.3.1",),
    "Targeted risk analyses are current",
    "Each requirement with an entity-defined frequency has a risk analysis reviewed in the "
    "last 12 months.",
    "Frequencies are picked without reason.",
    "Keep the risk analyses and attest them for requirement 12.3.1.",
    severity="low",
    scope="platform",
)
_manual(
    "GOV-003",
    ("12.3.4",),
    "Hardware and software in use were reviewed in the last year",
    "HSM firmware, key backend libraries and the vault's dependencies are supported versions.",
    "Unsupported components get no security fixes.",
    "Review the backend inventory (report appendix) and attest it for requirement 12.3.4.",
    severity="low",
    scope="platform",
)
_manual(
    "GOV-004",
    ("4.2.1",),
    "Connections to the vault and its key backends use strong TLS",
    "The API is served behind TLS 1.2 or newer with strong suites; KMIP uses mutual TLS.",
    "Data and credentials cross networks readable.",
    "Terminate TLS 1.2+ in front of the vault and attest the configuration.",
    scope="platform",
)

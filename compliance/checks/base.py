"""What a check is, what it yields, and what it gets to look at.

A check is a class with metadata and a ``run(ctx)`` generator. It yields one ``Outcome`` per
resource it judged, through the helpers ``passed``, ``failed``, ``manual``, ``error`` and
``not_applicable``. The engine turns an exception escaping ``run`` into one ``ERROR`` result:
a check that could not read its data never reports ``FAIL``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar

from django.conf import settings

from kms_plugins.errors import KeyBackendError
from kms_plugins.types import KeyDescription
from vault.crypto import canonical

if TYPE_CHECKING:
    from kms_plugins.base import KeyBackend
    from vault.keys.models import KeyBinding
    from vault.tenants.models import Tenant

SEVERITIES = ("critical", "high", "medium", "low", "informational")
SCOPES = ("platform", "tenant", "key", "user")


@dataclass(frozen=True)
class Outcome:
    """A check's verdict on one resource."""

    status: str
    resource_type: str
    resource_id: str
    detail: str
    observed: dict[str, Any] = field(default_factory=dict)
    evidence: tuple[str, ...] = ()  # digests returned by ``Context.evidence``


class Context:
    """What checks look at for one tenant's run, with the expensive reads done once.

    Attributes:
        tenant: the tenant under assessment.
        now: the run's time (every "how old" question is asked against it).
        shared: results one check leaves for another or for the engine (``audit_verify``).
    """

    def __init__(self, tenant: Tenant, now: datetime) -> None:
        self.tenant = tenant
        self.now = now
        self.shared: dict[str, Any] = {}
        self.evidence_bodies: dict[str, tuple[str, bytes]] = {}
        self._descriptions: dict[tuple[str, str], KeyDescription | KeyBackendError] = {}

    # -- evidence ---------------------------------------------------------------------------------

    def evidence(self, kind: str, data: Any) -> str:
        """Keep ``data`` (JSON-shaped, no floats) as evidence; returns its SHA-256 in hex.

        The body is canonical JSON, so the same facts give the same digest in every run.
        """
        body = canonical.canonical_json({"kind": kind, "data": data})
        digest = hashlib.sha256(body).hexdigest()
        self.evidence_bodies[digest] = (kind, body)
        return digest

    # -- the tenant's keys ------------------------------------------------------------------------

    @cached_property
    def bindings(self) -> list[KeyBinding]:
        """The tenant's key bindings (primary, recovery, signing)."""
        from vault.keys.models import KeyBinding

        return list(KeyBinding.objects.filter(tenant=self.tenant).order_by("role"))

    @cached_property
    def platform_bindings(self) -> list[KeyBinding]:
        """The platform's own keys (audit signing, report CA, report signing)."""
        from vault.keys.models import KeyBinding

        return list(KeyBinding.objects.filter(tenant__isnull=True).order_by("role"))

    def backend(self, alias: str) -> KeyBackend:
        """The configured backend ``alias`` (``ConfigurationError`` when it is not configured)."""
        from vault.keys.registry import key_backend

        return key_backend(alias)

    def describe(self, binding: KeyBinding) -> KeyDescription:
        """The backend's description of a bound key, asked once per run.

        Raises:
            KeyBackendError: the backend did not answer (the check reports ERROR).
        """
        key = (binding.backend_alias, binding.key_id)
        if key not in self._descriptions:
            try:
                self._descriptions[key] = self.backend(binding.backend_alias).describe(
                    binding.key_id
                )
            except KeyBackendError as exc:
                self._descriptions[key] = exc
        found = self._descriptions[key]
        if isinstance(found, KeyBackendError):
            raise found
        return found

    def days_ago(self, days: int) -> datetime:
        return self.now - timedelta(days=days)

    def setting(self, name: str) -> Any:
        """A platform setting as the run sees it."""
        return getattr(settings, name)


class Check:
    """A compliance check: metadata plus ``run``.

    Subclasses set the class attributes and implement ``run``; ``kind = "manual"`` checks have
    no code of their own and report MANUAL (an attestation can satisfy their requirements).
    """

    id: ClassVar[str]
    version: ClassVar[str] = "1.0.0"
    title: ClassVar[str]  # the passing state, e.g. "Keys are held in a secure device"
    description: ClassVar[str]
    risk: ClassVar[str]
    severity: ClassVar[str] = "medium"
    scope: ClassVar[str] = "tenant"
    kind: ClassVar[str] = "automated"
    requirements: ClassVar[tuple[str, ...]]
    remediation: ClassVar[str]
    evidence_captured: ClassVar[str] = ""

    def run(self, ctx: Context) -> Iterator[Outcome]:
        """Yield one outcome per resource judged."""
        yield self.manual(
            "tenant",
            ctx.tenant.slug,
            "This requirement needs people: attach a signed attestation.",
        )

    # -- helpers ----------------------------------------------------------------------------------

    def _outcome(
        self,
        status: str,
        resource_type: str,
        resource_id: object,
        detail: str,
        evidence: tuple[str, ...] | list[str] | str = (),
        **observed: Any,
    ) -> Outcome:
        digests = (evidence,) if isinstance(evidence, str) else tuple(evidence)
        return Outcome(status, resource_type, str(resource_id), detail, dict(observed), digests)

    def passed(
        self, rtype: str, rid: object, detail: str, evidence: Any = (), **kw: Any
    ) -> Outcome:
        return self._outcome("PASS", rtype, rid, detail, evidence, **kw)

    def failed(
        self, rtype: str, rid: object, detail: str, evidence: Any = (), **kw: Any
    ) -> Outcome:
        return self._outcome("FAIL", rtype, rid, detail, evidence, **kw)

    def manual(
        self, rtype: str, rid: object, detail: str, evidence: Any = (), **kw: Any
    ) -> Outcome:
        return self._outcome("MANUAL", rtype, rid, detail, evidence, **kw)

    def error(self, rtype: str, rid: object, detail: str, evidence: Any = (), **kw: Any) -> Outcome:
        return self._outcome("ERROR", rtype, rid, detail, evidence, **kw)

    def not_applicable(
        self, rtype: str, rid: object, detail: str, evidence: Any = (), **kw: Any
    ) -> Outcome:
        return self._outcome("NOT_APPLICABLE", rtype, rid, detail, evidence, **kw)

    @classmethod
    def metadata(cls) -> dict[str, Any]:
        """The check's metadata as reports carry it."""
        return {
            "id": cls.id,
            "version": cls.version,
            "title": cls.title,
            "description": cls.description,
            "risk": cls.risk,
            "severity": cls.severity,
            "scope": cls.scope,
            "kind": cls.kind,
            "requirements": list(cls.requirements),
            "remediation": cls.remediation,
            "evidence": cls.evidence_captured,
        }

"""Binding tenants to key backends, and finding the key that signs for a tenant."""

from __future__ import annotations

import contextlib
import logging

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from kms_plugins.base import KeyBackend
from kms_plugins.types import Capability, KeyPurpose, KeyState
from vault.audit.services import audit_record
from vault.keys.models import KeyBinding, KeyRole
from vault.keys.registry import key_backend
from vault.tenants.models import Tenant

logger = logging.getLogger(__name__)


class KeyServiceError(Exception):
    """Base of the key services' errors; ``code`` is the stable error code."""

    code = "key_error"


class AlreadyBound(KeyServiceError):
    code = "tenant_already_bound"


class NoSigningBackend(KeyServiceError):
    code = "no_signing_backend"


def _new_binding(
    *, tenant: Tenant | None, role: str, alias: str, backend: KeyBackend, purpose: KeyPurpose
) -> KeyBinding:
    ref = backend.create_key(purpose=purpose)
    info = backend.describe(ref.key_id).version(ref.version)
    assert info is not None  # noqa: S101  (the backend just created it)
    binding = KeyBinding.objects.create(
        tenant=tenant,
        role=role,
        backend_alias=alias,
        backend_kind=backend.kind,
        key_id=ref.key_id,
        fingerprint=info.fingerprint,
    )
    _audit_key_created(binding)
    return binding


def _audit_key_created(binding: KeyBinding) -> None:
    audit_record(
        "key.create",
        tenant=binding.tenant,
        resource_type="key",
        resource_id=binding.key_id,
        details={
            "role": binding.role,
            "backend": binding.backend_alias,
            "kind": binding.backend_kind,
            "fingerprint": binding.fingerprint,
        },
    )


def platform_signing_binding(*, create: bool = True) -> KeyBinding:
    """The platform's signing key in ``VAULT_SIGNING_BACKEND``, created on first need."""
    return platform_key_binding(KeyRole.SIGNING, create=create)


def platform_key_binding(role: str, *, create: bool = True) -> KeyBinding:
    """A platform signing key (``role``: signing, report-ca or report-signing), made on first need.

    The audit log's key lives in ``VAULT_SIGNING_BACKEND``; the report keys in
    ``VAULT_REPORT_SIGNING_BACKEND`` (by default the same backend).

    Raises:
        NoSigningBackend: none exists and ``create`` is false, or no backend that signs is set.
    """
    existing = KeyBinding.objects.filter(tenant__isnull=True, role=role).first()
    if existing is not None or not create:
        if existing is None:
            raise NoSigningBackend(f"no platform {role} key exists")
        return existing
    setting = "VAULT_SIGNING_BACKEND" if role == KeyRole.SIGNING else "VAULT_REPORT_SIGNING_BACKEND"
    alias = getattr(settings, setting, "") or settings.VAULT_SIGNING_BACKEND
    if not alias:
        raise NoSigningBackend(f"{setting} is not set")
    backend = key_backend(alias)
    if Capability.SIGN not in backend.capabilities:
        raise NoSigningBackend(f"{setting} {alias!r} ({backend.kind}) cannot sign")
    ref = backend.create_key(purpose=KeyPurpose.SIGN)
    info = backend.describe(ref.key_id).version(ref.version)
    assert info is not None  # noqa: S101  (the backend just created it)
    try:
        with transaction.atomic():
            binding = KeyBinding.objects.create(
                tenant=None,
                role=role,
                backend_alias=alias,
                backend_kind=backend.kind,
                key_id=ref.key_id,
                fingerprint=info.fingerprint,
            )
            _audit_key_created(binding)
            return binding
    except IntegrityError:
        # Another process made the platform key at the same moment: use theirs, drop ours.
        with contextlib.suppress(Exception):
            backend.destroy(ref)
        return KeyBinding.objects.get(tenant__isnull=True, role=role)


def _destroy_quietly(backend: KeyBackend, binding: KeyBinding) -> None:
    """Undo a key made for a binding that did not complete (it never protected anything)."""
    try:
        for info in backend.describe(binding.key_id).versions:
            backend.destroy(info.ref)
    except Exception:
        logger.exception(
            "could not destroy the unused key %s in %s", binding.key_id, binding.backend_alias
        )


@transaction.atomic
def tenant_bind_backend(
    *, tenant: Tenant, backend_alias: str, recovery_alias: str | None = None
) -> list[KeyBinding]:
    """Create the tenant's key-encryption key (and recovery key) in their backends.

    A signing key is created in the tenant's backend when it can sign; otherwise the tenant's
    audit log and reports will sign with the platform's key in ``VAULT_SIGNING_BACKEND``.

    Raises:
        AlreadyBound: the tenant already has a primary key (changing backends is a rotation).
        kms_plugins.errors.KeyBackendError: the backend refused or is unavailable.
    """
    # The tenant row's lock serializes concurrent binds of one tenant.
    Tenant.objects.select_for_update().filter(pk=tenant.pk).first()
    if KeyBinding.objects.filter(tenant=tenant, role=KeyRole.PRIMARY).exists():
        raise AlreadyBound(f"tenant {tenant.slug} is already bound to a key backend")
    backend = key_backend(backend_alias)
    wanted = [(KeyRole.PRIMARY, backend_alias, backend, KeyPurpose.WRAP)]
    if recovery_alias:
        wanted.append(
            (KeyRole.RECOVERY, recovery_alias, key_backend(recovery_alias), KeyPurpose.WRAP)
        )
    if Capability.SIGN in backend.capabilities:
        wanted.append((KeyRole.SIGNING, backend_alias, backend, KeyPurpose.SIGN))
    bindings: list[tuple[KeyBackend, KeyBinding]] = []
    try:
        for role, alias, holder, purpose in wanted:
            binding = _new_binding(
                tenant=tenant, role=role, alias=alias, backend=holder, purpose=purpose
            )
            bindings.append((holder, binding))
    except BaseException:
        # The rows roll back with the transaction; the keys already made in backends do not.
        for holder, binding in bindings:
            _destroy_quietly(holder, binding)
        raise
    logger.info("tenant %s bound to key backend %s", tenant.slug, backend_alias)
    return [binding for _, binding in bindings]


def signing_binding_for(*, tenant: Tenant) -> KeyBinding:
    """The key that signs for ``tenant``: its own when its backend can sign, else the platform's.

    Raises:
        NoSigningBackend: the tenant's backend cannot sign and no platform signing backend is set.
    """
    own = KeyBinding.objects.filter(tenant=tenant, role=KeyRole.SIGNING).first()
    return own if own is not None else platform_signing_binding()


class KeySuspended(KeyServiceError):
    code = "key_suspended"


def binding_check_usable(binding: KeyBinding) -> None:
    """Refuse a key whose pinned fingerprint no longer matches its backend (PCI-DSS 3.7.7).

    Raises:
        KeySuspended: the key was suspended by a health check.
    """
    if binding.suspended_at is not None:
        why = binding.suspended_reason or "see the audit log"
        raise KeySuspended(f"the {binding.role} key is suspended: {why}")


def _substitution(binding: KeyBinding, backend: KeyBackend) -> str | None:
    """Why the backend's view of the key no longer matches what the vault pinned, or None."""
    listed = {info.ref.version: info for info in backend.describe(binding.key_id).versions}
    pins = {1: binding.fingerprint, **{int(v): f for v, f in binding.pins.items()}}
    for version, info in sorted(listed.items()):
        if info.state == KeyState.DESTROYED:
            continue
        if version not in pins:
            return f"the backend lists a version {version} that the vault did not make"
        if info.fingerprint != pins[version]:
            return f"version {version} reports another fingerprint than the one pinned"
    current = listed.get(binding.current_version)
    if current is None or current.state == KeyState.DESTROYED:
        return f"the current version {binding.current_version} is gone from the backend"
    return None


def keys_health_check() -> list[tuple[KeyBinding, str]]:
    """Check every bound key against its backend (PCI-DSS 3.7.7): reachable, and every live
    version's fingerprint the one pinned when the vault made it (at binding, or at a rotation);
    a version the vault did not make, or a changed fingerprint, suspends the key and records a
    ``key.substitution`` event. Returns ``(binding, problem)`` for each key that is not fine."""
    problems: list[tuple[KeyBinding, str]] = []
    for binding in KeyBinding.objects.select_related("tenant").exclude(
        tenant__shredded_at__isnull=False, role__in=(KeyRole.PRIMARY, KeyRole.RECOVERY)
    ):
        try:
            reason = _substitution(binding, key_backend(binding.backend_alias))
        except Exception as exc:  # an unreachable backend is a problem, not a substitution
            problems.append((binding, f"cannot describe the key ({type(exc).__name__})"))
            continue
        if reason is None:
            continue
        problems.append((binding, reason))
        if binding.suspended_at is None:
            with transaction.atomic():
                KeyBinding.objects.filter(pk=binding.pk).update(
                    suspended_at=timezone.now(), suspended_reason=reason
                )
                audit_record(
                    "key.substitution",
                    tenant=binding.tenant,
                    outcome="failure",
                    resource_type="key",
                    resource_id=binding.key_id,
                    details={"role": binding.role, "reason": reason},
                )
            logger.error("key %s suspended: %s", binding, reason)
    return problems

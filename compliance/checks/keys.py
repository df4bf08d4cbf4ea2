"""Key-management checks: PCI-DSS v4.0.1 3.6.1 to 3.7.7, with 10.7.2 and 12.3.3/12.3.4.

They read the tenant's key bindings (``ctx.bindings``; the platform's signing keys too where the
question is about every key that protects or signs the tenant's records), what each backend says
about those keys (``ctx.describe``: attributes, never material), the stored envelope headers
(which key version wrapped each data key), the memberships and the dual-control requests.

A backend that does not answer makes the checks that need it report ERROR for that key; only
KEY-020, whose subject is the backend's health, reports it as a FAIL.
"""

from __future__ import annotations

import importlib.metadata
import os
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.core.files.storage import storages
from django.db import connections

from compliance.checks import register
from compliance.checks.base import Check, Context, Outcome
from kms_plugins.errors import KeyBackendError
from kms_plugins.types import KeyDescription, KeyInfo, KeyPurpose, KeyState
from vault.crypto import envelope
from vault.crypto.auditbundle import format_time
from vault.crypto.errors import EnvelopeError
from vault.keys.models import KeyBinding, KeyRole

if TYPE_CHECKING:
    from kms_plugins.base import KeyBackend

WRAP_ROLES = (KeyRole.PRIMARY, KeyRole.RECOVERY)
# Every data key (and the deduplication key) is AES-256: envelope format 1.
DEK_STRENGTH = envelope.DEK_SIZE * 8
# NIST SP 800-57 Part 1, Table 1: at most two years of originator use for a key-wrapping key.
NIST_KEK_CRYPTOPERIOD_DAYS = 730
RETIRED_STATES = frozenset({KeyState.DEACTIVATED, KeyState.COMPROMISED, KeyState.DESTROYED})
# Backends whose class is production-safe but whose device here is software: a PKCS#11 module
# (by file name) or a TPM connection (by TCTI) that is known to emulate the device in files.
SOFTWARE_PKCS11_MODULES = ("softhsm", "kryoptic")
SOFTWARE_TCTIS = ("swtpm", "mssim")
# The wrap mechanisms of the built-in backends: AEADs with the context in the associated data.
ALLOWED_MECHANISMS = frozenset(
    {"A256GCM", "AES-256-GCM", "kmip-aes256-gcm", "tpm2-seal-aes256kek-v1"}
)
# Mailbox names that designate a role or a group, not a person (PCI-DSS 8.2.2, 3.6.1.3). Matched
# against the local part of an e-mail address, without any "+tag".
GENERIC_MAILBOXES = frozenset(
    {
        "admin",
        "administrator",
        "root",
        "shared",
        "team",
        "group",
        "all",
        "staff",
        "ops",
        "operations",
        "devops",
        "it",
        "security",
        "secops",
        "sysadmin",
        "support",
        "helpdesk",
        "info",
        "office",
        "service",
        "keys",
        "custodian",
        "custodians",
        "vault",
        "test",
        "noreply",
        "no-reply",
    }
)
# Backend options that name files or directories holding key material (or what unlocks it).
KEY_LOCATION_OPTIONS = ("PATH", "KEY_FILE", "STATE_DIR", "PIN_FILE")
# Python distributions behind the built-in backends, for the version inventory (12.3.4).
BACKEND_LIBRARIES = {
    "local": "cryptography",
    "pkcs11": "python-pkcs11",
    "tpm": "tpm2-pytss",
    "kmip": "pykmip",
}
_CENSUS = "keys.stanza_census"


# -- small helpers ---------------------------------------------------------------------------


def key_resource(binding: KeyBinding) -> str:
    """The resource id of a key in results: ``<tenant or platform>:<role>:<key id>`` (the
    finding id adds the tenant's slug)."""
    owner = "tenant" if binding.tenant_id else "platform"
    return f"{owner}:{binding.role}:{binding.key_id}"


def _keys(
    ctx: Context, *, roles: Iterable[str] | None = None, platform: bool = True
) -> list[KeyBinding]:
    wanted = set(roles) if roles is not None else None
    found = [*ctx.bindings, *(ctx.platform_bindings if platform else [])]
    return [b for b in found if wanted is None or b.role in wanted]


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _time(moment: datetime | None) -> str | None:
    return format_time(_aware(moment)) if moment is not None else None


def _live(description: KeyDescription) -> list[KeyInfo]:
    return [v for v in description.versions if v.state != KeyState.DESTROYED]


def _facts(info: KeyInfo) -> dict[str, Any]:
    """What a backend says about one version (attributes only; the fingerprint reveals nothing)."""
    return {
        "version": info.ref.version,
        "purpose": str(info.purpose),
        "algorithm": info.algorithm,
        "size": info.size,
        "state": str(info.state),
        "created": _time(info.created),
        "activated": _time(info.activated),
        "deactivated": _time(info.deactivated),
        "extractable": info.extractable,
        "sensitive": info.sensitive,
        "generated_in_backend": info.generated_in_backend,
        "fingerprint": info.fingerprint,
    }


def _key_facts(binding: KeyBinding, description: KeyDescription | None = None) -> dict[str, Any]:
    facts: dict[str, Any] = {
        "key": key_resource(binding),
        "backend": binding.backend_alias,
        "kind": binding.backend_kind,
        "current_version": binding.current_version,
    }
    if description is not None:
        facts["versions"] = [_facts(v) for v in description.versions]
    return facts


def _unreadable(check: Check, binding: KeyBinding, exc: KeyBackendError) -> Outcome:
    return check.error(
        "key",
        key_resource(binding),
        f"The {binding.backend_alias} backend did not answer for key {key_resource(binding)} "
        f"({exc.code}); the check could not read its data.",
    )


def _described(
    check: Check, ctx: Context, bindings: Iterable[KeyBinding]
) -> Iterator[tuple[KeyBinding, KeyDescription | Outcome]]:
    """Each binding with the backend's description of its key, or the ERROR outcome to yield."""
    for binding in bindings:
        try:
            yield binding, ctx.describe(binding)
        except KeyBackendError as exc:
            yield binding, _unreadable(check, binding, exc)


def _words(items: Iterable[str]) -> str:
    return "; ".join(items)


def security_strength(algorithm: str, size: int) -> int | None:
    """Bits of security of a key (NIST SP 800-57 Part 1, Table 2), None when unknown.

    AES-n gives n; EC gives half the curve size, in the table's bands (P-256: 128); RSA and
    three-key TDEA by the table; anything else is unknown.
    """
    name = algorithm.upper().replace("-", "").replace("_", "")
    if name.startswith("AES") and size in (128, 192, 256):
        return size
    if name in ("EC", "ECC", "ECDSA", "ECDH", "P256", "P384", "P521"):
        for floor, bits in ((512, 256), (384, 192), (256, 128), (224, 112)):
            if size >= floor:
                return bits
        return size // 2 if size else None
    if name == "RSA":
        for floor, bits in ((15360, 256), (7680, 192), (3072, 128), (2048, 112), (1024, 80)):
            if size >= floor:
                return bits
        return 0 if size else None
    if name in ("TRIPLEDES", "3DES", "DESEDE", "TDEA", "TDES"):
        return 112 if size >= 168 else 80
    if name == "DES":
        return 56
    return None


def algorithm_problem(info: KeyInfo, now: datetime) -> str | None:
    """Why a key version's algorithm and size are not on the allow-list, or None.

    Wrapping keys: AES-128, -192 or -256. Signing keys: EC P-256 or larger, RSA of 3072 bits
    or more (2048 until the end of 2030, NIST SP 800-131A). Nothing else (3DES, DES, short RSA).
    """
    name = info.algorithm.upper().replace("-", "").replace("_", "")
    label = f"{info.algorithm}-{info.size}"
    if info.purpose == KeyPurpose.WRAP:
        if name == "AES" and info.size in (128, 192, 256):
            return None
        return f"version {info.ref.version} is {label}, not AES-128/192/256"
    if name in ("EC", "ECDSA") and info.size >= 256:
        return None
    if name == "RSA" and (info.size >= 3072 or (info.size >= 2048 and now.year <= 2030)):
        return None
    return f"version {info.ref.version} is {label}, not EC P-256+ or RSA-3072+"


def _software_device(backend: KeyBackend) -> str | None:
    """Why a production-safe backend class is nonetheless a software device here, or None."""
    options = backend.redacted_options()
    if backend.kind == "pkcs11":
        module = os.path.basename(str(options.get("MODULE", ""))).lower()
        if any(name in module for name in SOFTWARE_PKCS11_MODULES):
            return f"its PKCS#11 module {module} is a software token, not a secure device"
    if backend.kind == "tpm":
        tcti = str(options.get("TCTI", "")).lower()
        if tcti.startswith(SOFTWARE_TCTIS):
            return f"its TPM ({tcti.split(':')[0]}) is a software emulator, not a secure device"
    return None


def _backend_facts(backend: KeyBackend) -> dict[str, Any]:
    cls = type(backend)
    facts: dict[str, Any] = {
        "alias": backend.alias,
        "kind": backend.kind,
        "class": f"{cls.__module__}.{cls.__qualname__}",
        "production_safe": bool(backend.production_safe),
    }
    options = backend.redacted_options()
    if "MODULE" in options:
        facts["module"] = os.path.basename(str(options["MODULE"]))
    if "TCTI" in options:
        facts["tcti"] = str(options["TCTI"]).split(":")[0]
    if "HOST" in options:
        facts["host"] = str(options["HOST"])
    return facts


def _fresh_cryptoperiod(ctx: Context) -> int | None:
    """The tenant's own cryptoperiod as stored now (a run may hold an older copy of the row)."""
    from vault.tenants.models import Tenant

    row = Tenant.objects.filter(pk=ctx.tenant.pk).values_list("kek_cryptoperiod_days", flat=True)
    value = row.first()
    return int(value) if value is not None else None


# -- the stored headers: which key version wrapped which data key ------------------------------


@dataclass
class StanzaStats:
    """The recipient stanzas of one key version found in the tenant's stored headers."""

    count: int = 0
    short: int = 0  # wrapped keys too short to hold a data key and an authentication tag
    mechanisms: Counter[str] = field(default_factory=Counter)
    late: int = 0  # stored after the version was retired or replaced
    late_samples: list[str] = field(default_factory=list)


@dataclass
class StanzaCensus:
    """Every stored header of the tenant that the vault made, reduced to its stanzas."""

    headers: int = 0
    malformed: int = 0
    stats: dict[tuple[str, int], StanzaStats] = field(default_factory=dict)
    retired_at: dict[tuple[str, int], datetime] = field(default_factory=dict)

    def of_key(self, key_id: str) -> dict[int, StanzaStats]:
        return {v: s for (k, v), s in self.stats.items() if k == key_id}


def retirements(description: KeyDescription) -> dict[int, datetime]:
    """When each version stopped being one that may wrap (PCI-DSS 3.7.5: retired or replaced).

    A version is retired from its deactivation (deactivated, compromised, destroyed) or from
    the activation of a newer version, whichever came first. Versions still wrapping are absent.
    """
    moments: dict[int, datetime] = {}
    starts = [
        (v.ref.version, _aware(start))
        for v in description.versions
        if (start := v.activated or v.created) is not None and v.state != KeyState.PRE_ACTIVE
    ]
    for info in description.versions:
        found = [start for number, start in starts if number > info.ref.version]
        if info.state in RETIRED_STATES and info.deactivated is not None:
            found.append(_aware(info.deactivated))
        if found:
            moments[info.ref.version] = min(found)
    return moments


def _header_rows(ctx: Context) -> Iterator[tuple[str, Iterable[tuple[int, datetime, Any]]]]:
    """The headers whose stanzas the vault made: gateway versions, blobs, the dedup key."""
    from vault.objects.models import Blob, DedupKey, ObjectMode, ObjectVersion

    fields = ("pk", "created_at", "header")
    yield (
        "version",
        ObjectVersion.objects.filter(
            object__tenant=ctx.tenant, object__mode=ObjectMode.GATEWAY, blob__isnull=True
        )
        .exclude(header=b"")
        .values_list(*fields)
        .iterator(chunk_size=2000),
    )
    yield "blob", Blob.objects.filter(tenant=ctx.tenant).values_list(*fields).iterator(2000)
    yield "dedup", DedupKey.objects.filter(tenant=ctx.tenant).values_list(*fields)


def stanza_census(ctx: Context) -> StanzaCensus:
    """Read every header once per run (shared by KEY-003, KEY-007 and KEY-010)."""
    cached = ctx.shared.get(_CENSUS)
    if isinstance(cached, StanzaCensus):
        return cached
    census = StanzaCensus()
    for binding in _keys(ctx, roles=WRAP_ROLES, platform=False):
        try:
            description = ctx.describe(binding)
        except KeyBackendError:
            continue  # KEY-010 reports that key as ERROR
        for version, moment in retirements(description).items():
            census.retired_at[(binding.key_id, version)] = moment
    floor = envelope.DEK_SIZE + envelope.TAG_SIZE
    for source, rows in _header_rows(ctx):
        for pk, created_at, header in rows:
            census.headers += 1
            try:
                parsed = envelope.parse_header(bytes(header))
            except EnvelopeError:
                census.malformed += 1
                continue
            for stanza in parsed.stanzas:
                ref = (stanza.key.key_id, stanza.key.version)
                stats = census.stats.setdefault(ref, StanzaStats())
                stats.count += 1
                stats.mechanisms[stanza.mechanism] += 1
                if len(stanza.ciphertext) < floor:
                    stats.short += 1
                retired = census.retired_at.get(ref)
                if retired is not None and _aware(created_at) > retired:
                    stats.late += 1
                    if len(stats.late_samples) < 20:
                        stats.late_samples.append(f"{source}:{pk}")
    ctx.shared[_CENSUS] = census
    return census


# -- the checks ------------------------------------------------------------------------------


@register
class KeysInSecureDevice(Check):
    """KEY-001: every key is held in a backend that is a secure cryptographic device."""

    id = "KEY-001"
    title = "Keys are held in a secure cryptographic device, never in a software keystore"
    description = (
        "For each of the tenant's keys and the platform's signing keys: the backend class is "
        "production-safe (an HSM over PKCS#11, a TPM, a KMS over KMIP), not the local software "
        "keystore. SoftHSM and software TPMs are software devices: they fail when the "
        "deployment is production (settings.PRODUCTION) and pass outside it, with a detail "
        "saying the token is acceptable only outside production (no cardholder data is "
        "expected there). A KMS over KMIP passes: its device assurance (CMVP certificate) is "
        "the KMS operator's evidence under shared responsibility."
    )
    risk = (
        "Keys kept in files on a general-purpose host can be copied by anyone who reads the "
        "disk or a backup, with nothing to detect it."
    )
    severity = "critical"
    scope = "key"
    requirements = ("3.6.1.2", "3.7.3")
    remediation = (
        "Configure an HSM (kms_plugins.pkcs11.Pkcs11KeyBackend), a TPM or a KMIP KMS in "
        "VAULT_KEY_BACKENDS, bind new tenants to it (manage.py tenant_bind_backend --backend "
        "<alias>) and set VAULT_SIGNING_BACKEND to it; never run the local keystore or SoftHSM "
        "with VAULT_ENV=production."
    )
    evidence_captured = (
        "Per key: backend alias, kind, class, production_safe, PKCS#11 module or TPM TCTI kind, "
        "KMIP host, and the deployment's PRODUCTION flag."
    )

    def run(self, ctx: Context) -> Iterator[Outcome]:
        production = bool(getattr(settings, "PRODUCTION", False))
        for binding in _keys(ctx):
            rid = key_resource(binding)
            try:
                backend = ctx.backend(binding.backend_alias)
            except KeyBackendError as exc:
                yield _unreadable(self, binding, exc)
                continue
            software = _software_device(backend)
            facts = {
                **_backend_facts(backend),
                "software_device": software,
                "production": production,
            }
            evidence = ctx.evidence("key-storage", {"key": rid, **facts})
            where = f"Key {rid} is held by the {binding.backend_alias} backend ({backend.kind})"
            if not backend.production_safe:
                yield self.failed(
                    "key",
                    rid,
                    f"{where}, a software keystore that keeps keys in files on this host.",
                    evidence,
                    backend=binding.backend_alias,
                    production_safe=False,
                )
            elif software and production:
                yield self.failed(
                    "key", rid, f"{where}, but {software} in production.", evidence, software=True
                )
            elif software:
                yield self.passed(
                    "key",
                    rid,
                    f"{where}; {software}, acceptable only outside production, and this "
                    "deployment is not production.",
                    evidence,
                    software=True,
                )
            else:
                yield self.passed(
                    "key",
                    rid,
                    f"{where}, a device class that keeps keys inside it.",
                    evidence,
                    software=False,
                )


@register
class KekStrength(Check):
    """KEY-002: every key-encryption key is at least as strong as the data keys it wraps."""

    id = "KEY-002"
    title = "Every key-encryption key is at least as strong as the data keys it wraps"
    description = (
        "The tenant's primary and recovery keys wrap AES-256 data keys (envelope format 1). Each "
        "version of them that is not destroyed must offer at least 256 bits of security by NIST "
        "SP 800-57 Part 1 Table 2 (AES-n: n bits; EC P-256: 128). A version whose algorithm "
        "the table does not cover is reported MANUAL."
    )
    risk = "A weaker wrapping key is the shortest path to every data key under it."
    severity = "high"
    scope = "key"
    requirements = ("3.6.1",)
    remediation = (
        "Rotate the key (POST /api/v1/keys/campaigns/ or manage.py key_rotate) in a backend "
        "that creates AES-256 keys, and let the rewrap campaign finish; then destroy the weak "
        "version."
    )
    evidence_captured = (
        "Wrap graph: each wrapping key version's algorithm, size and strength, and the data "
        "keys' algorithm and strength."
    )

    def run(self, ctx: Context) -> Iterator[Outcome]:
        for binding, found in _described(self, ctx, _keys(ctx, roles=WRAP_ROLES, platform=False)):
            if isinstance(found, Outcome):
                yield found
                continue
            rid = key_resource(binding)
            rows = [(v, security_strength(v.algorithm, v.size)) for v in _live(found)]
            evidence = ctx.evidence(
                "wrap-graph",
                {
                    "kek": _key_facts(binding),
                    "versions": [[v.ref.version, v.algorithm, v.size, bits] for v, bits in rows],
                    "children": {"algorithm": "AES-256 data keys", "strength": DEK_STRENGTH},
                },
            )
            known = [bits for _, bits in rows if bits is not None]
            weak = [(v, bits) for v, bits in rows if bits is not None and bits < DEK_STRENGTH]
            unknown = [v.algorithm for v, bits in rows if bits is None]
            if weak:
                described = ", ".join(
                    f"v{v.ref.version} {v.algorithm}-{v.size} ({bits} bits)" for v, bits in weak
                )
                yield self.failed(
                    "key",
                    rid,
                    f"Key {rid} wraps {DEK_STRENGTH}-bit data keys with weaker versions: "
                    f"{described}.",
                    evidence,
                    weakest=min(known),
                    required=DEK_STRENGTH,
                )
            elif unknown:
                yield self.manual(
                    "key",
                    rid,
                    f"Key {rid} has versions whose strength the SP 800-57 table does not give "
                    f"({', '.join(unknown)}); confirm it by hand.",
                    evidence,
                )
            elif known:
                yield self.passed(
                    "key",
                    rid,
                    f"Every live version of key {rid} gives at least {DEK_STRENGTH} bits, as "
                    "strong as the data keys it wraps.",
                    evidence,
                    weakest=min(known),
                    required=DEK_STRENGTH,
                )
            else:
                yield self.not_applicable(
                    "key", rid, f"Key {rid} has no live version: it wraps nothing.", evidence
                )


def _data_places() -> dict[str, Path]:
    """Where the vault keeps wrapped data keys and ciphertext on this host's file system."""
    places: dict[str, Path] = {}
    location = getattr(storages["default"], "location", None)
    if location:
        places["object storage"] = Path(str(location)).resolve()
    database = connections["default"].settings_dict
    name = str(database.get("NAME") or "")
    if (
        "sqlite" in str(database.get("ENGINE", ""))
        and name
        and not name.startswith((":memory:", "file:"))
    ):
        places["database directory"] = Path(name).resolve().parent
    return places


def _key_files(backend: KeyBackend) -> dict[str, Path]:
    """The directories a backend keeps its keys (or what unlocks them) in, by option."""
    options = backend.redacted_options()
    found = {}
    for name in KEY_LOCATION_OPTIONS:
        value = options.get(name)
        if isinstance(value, str) and value:
            path = Path(value).resolve()
            found[name] = path if name == "STATE_DIR" else path.parent
    return found


@register
class KekSeparation(Check):
    """KEY-003: KEKs are stored apart from the data keys they wrap, which are only ciphertext."""

    id = "KEY-003"
    title = "Key-encryption keys are kept apart from the data, which holds data keys only wrapped"
    description = (
        "For each of the tenant's wrapping keys: the files its backend keeps keys in (PATH, "
        "KEY_FILE, STATE_DIR, PIN_FILE options) are not inside the object storage location nor "
        "inside the directory of the SQLite database; and every recipient stanza of the key in "
        "the stored headers the vault made (gateway versions, blobs, deduplication key) is long "
        "enough to be a wrapped key (data key plus an authentication tag), never a bare data key."
    )
    risk = (
        "A key stored with the data it protects is copied with every backup of that data; a "
        "data key stored in clear protects nothing."
    )
    severity = "high"
    scope = "key"
    requirements = ("3.6.1",)
    remediation = (
        "Move the keystore (the backend's PATH and KEY_FILE options in VAULT_KEY_BACKENDS) out "
        "of VAULT_DATA_DIR, the storage location and the database directory, or bind the tenant "
        "to an HSM or KMS; investigate any stanza reported as not wrapped."
    )
    evidence_captured = (
        "Storage-location map (key directories, storage location, database directory) and the "
        "count of stanzas per key version, with those too short to be wrapped."
    )

    def run(self, ctx: Context) -> Iterator[Outcome]:
        places = _data_places()
        bindings = _keys(ctx, roles=WRAP_ROLES, platform=False)
        census = stanza_census(ctx) if bindings else None
        for binding in bindings:
            rid = key_resource(binding)
            try:
                backend = ctx.backend(binding.backend_alias)
            except KeyBackendError as exc:
                yield _unreadable(self, binding, exc)
                continue
            assert census is not None  # noqa: S101  (made above when there are bindings)
            files = _key_files(backend)
            shared = [
                f"{option} {directory} is inside the {place}"
                for option, directory in sorted(files.items())
                for place, root in sorted(places.items())
                if directory == root or directory.is_relative_to(root)
            ]
            stanzas = census.of_key(binding.key_id)
            count = sum(s.count for s in stanzas.values())
            short = sum(s.short for s in stanzas.values())
            evidence = ctx.evidence(
                "storage-location-map",
                {
                    "key": rid,
                    "backend": _backend_facts(backend),
                    "key_directories": {k: str(v) for k, v in sorted(files.items())},
                    "data_places": {k: str(v) for k, v in sorted(places.items())},
                    "headers": census.headers,
                    "malformed_headers": census.malformed,
                    "stanzas": {str(v): [s.count, s.short] for v, s in sorted(stanzas.items())},
                },
            )
            problems = list(shared)
            if short:
                problems.append(f"{short} of its {count} stanzas are too short to be wrapped")
            if problems:
                yield self.failed(
                    "key",
                    rid,
                    f"Key {rid} is not kept apart from the data: {_words(problems)}.",
                    evidence,
                    colocated=len(shared),
                    unwrapped=short,
                )
            else:
                yield self.passed(
                    "key",
                    rid,
                    f"Key {rid} is held by the {binding.backend_alias} backend outside the "
                    f"storage and database, and its {count} stanzas hold wrapped data keys only.",
                    evidence,
                    stanzas=count,
                )


@register
class KeyLocations(Check):
    """KEY-004: a key exists in its backend only in the versions the vault made."""

    id = "KEY-004"
    title = "Each key exists only in the versions the vault made, with no extra copies"
    description = (
        "For each key: the versions its backend lists (destroyed ones aside) are exactly those "
        "the vault pinned when it created or rotated the key (KeyBinding.fingerprint and pins); "
        "a version made elsewhere, or two live versions with one fingerprint (a copy of the "
        "same material), fails."
    )
    risk = (
        "A copy or a version made outside the vault is a key nobody accounts for, and may be "
        "held by whoever made it."
    )
    severity = "high"
    scope = "key"
    requirements = ("3.6.1",)
    remediation = (
        "Find who created the extra version in the backend (its own audit trail), destroy it "
        "there if it protects nothing, or rotate the key (manage.py key_rotate) so the vault "
        "makes and pins a clean version; then run the key health check."
    )
    evidence_captured = "Location census: versions listed by the backend against versions pinned."

    def run(self, ctx: Context) -> Iterator[Outcome]:
        for binding, found in _described(self, ctx, _keys(ctx)):
            if isinstance(found, Outcome):
                yield found
                continue
            rid = key_resource(binding)
            pinned = {1, *(int(v) for v in (binding.pins or {}))}
            live = _live(found)
            extra = sorted(v.ref.version for v in live if v.ref.version not in pinned)
            copies = sorted(
                fp
                for fp, n in Counter(v.fingerprint for v in live if v.fingerprint).items()
                if n > 1
            )
            evidence = ctx.evidence(
                "location-census",
                {
                    "key": rid,
                    "pinned": sorted(pinned),
                    "listed": [[v.ref.version, str(v.state)] for v in found.versions],
                    "unexpected": extra,
                    "duplicated_fingerprints": copies,
                },
            )
            problems = []
            if extra:
                problems.append(
                    f"the backend lists version(s) {', '.join(map(str, extra))} the vault did "
                    "not make"
                )
            if copies:
                problems.append(f"{len(copies)} fingerprint(s) appear in more than one version")
            if problems:
                yield self.failed(
                    "key",
                    rid,
                    f"Key {rid} exists in more places than the vault made: {_words(problems)}.",
                    evidence,
                    unexpected=extra,
                )
            else:
                yield self.passed(
                    "key",
                    rid,
                    f"Key {rid} has {len(live)} live version(s) in the {binding.backend_alias} "
                    "backend, each one the vault made.",
                    evidence,
                    live=len(live),
                )


def _generic(email: str) -> bool:
    local = email.split("@", 1)[0].split("+", 1)[0].lower()
    return local in GENERIC_MAILBOXES


@register
class CustodianCount(Check):
    """KEY-005: few custodians, each a named person."""

    id = "KEY-005"
    title = "Key custodians are few and each is a named person"
    description = (
        "The tenant's principals with key-management rights (active owners and custodians, "
        "and live integration tokens with either role, which act for no person) number at "
        "most VAULT_MAX_CUSTODIANS (default 5); none is a shared or generic mailbox (local part "
        "such as admin, team, shared, security, ops: see GENERIC_MAILBOXES) or an integration "
        "token."
    )
    risk = (
        "Every extra custodian is another person who can rotate, destroy or approve; a shared "
        "account makes their actions unattributable."
    )
    severity = "medium"
    scope = "tenant"
    requirements = ("3.6.1", "3.6.1.3")
    remediation = (
        "Demote people who do not need key rights (PATCH /api/v1/tenants/<slug>/members/<id>/ "
        "with role member), replace shared mailboxes by named accounts, revoke integration "
        "tokens with the owner or custodian role, or raise VAULT_MAX_CUSTODIANS after a "
        "documented review."
    )
    evidence_captured = "Custodian list: e-mail and role of each, integration token prefixes."

    def run(self, ctx: Context) -> Iterator[Outcome]:
        from vault.tenants.models import Membership, Role
        from vault.tokens.models import ApiToken

        roles = (Role.OWNER, Role.CUSTODIAN)
        people = sorted(
            Membership.objects.filter(
                tenant=ctx.tenant, role__in=roles, user__is_active=True
            ).values_list("user__email", "role")
        )
        tokens = sorted(
            ApiToken.objects.filter(
                tenant=ctx.tenant,
                user__isnull=True,
                role__in=roles,
                revoked_at__isnull=True,
                expires_at__gt=ctx.now,
            ).values_list("key_id", "role")
        )
        limit = int(getattr(settings, "VAULT_MAX_CUSTODIANS", 5))
        generic = [email for email, _ in people if _generic(email)]
        integrations = [f"cvt_{key_id}" for key_id, _ in tokens]
        total = len(people) + len(tokens)
        evidence = ctx.evidence(
            "custodians",
            {
                "people": [[e, r] for e, r in people],
                "integration_tokens": [[f"cvt_{k}", r] for k, r in tokens],
                "maximum": limit,
                "generic_mailboxes": sorted(GENERIC_MAILBOXES),
            },
        )
        problems = []
        if total > limit:
            problems.append(f"{total} principals hold key rights, more than the {limit} allowed")
        if generic:
            problems.append(f"shared or generic account(s) {', '.join(generic)}")
        if integrations:
            problems.append(f"integration token(s) {', '.join(integrations)} act for no person")
        slug = ctx.tenant.slug
        if problems:
            yield self.failed(
                "tenant",
                slug,
                f"Tenant {slug} has unsuitable key custodians: {_words(problems)}.",
                evidence,
                custodians=total,
                maximum=limit,
                generic=generic + integrations,
            )
        else:
            yield self.passed(
                "tenant",
                slug,
                f"Tenant {slug} has {total} key custodian(s), at most {limit}, each a named "
                "person.",
                evidence,
                custodians=total,
                maximum=limit,
            )


@register
class GeneratedInBackend(Check):
    """KEY-006: keys were generated in their backend and cannot leave it."""

    id = "KEY-006"
    title = "Keys were generated inside their backend, sensitive and never extractable"
    description = (
        "For each key, every version that is not destroyed is reported by its backend as "
        "generated there (PKCS#11 CKA_LOCAL), not extractable (CKA_EXTRACTABLE false and "
        "CKA_NEVER_EXTRACTABLE true) and sensitive (CKA_SENSITIVE and CKA_ALWAYS_SENSITIVE), "
        "or the KMIP/TPM equivalents. The product never imports keys, so no ceremony record "
        "can excuse an imported one."
    )
    risk = (
        "A key made outside the device, or one the device would hand out, may exist in clear "
        "somewhere else."
    )
    severity = "high"
    scope = "key"
    requirements = ("3.7.1",)
    remediation = (
        "Bind the tenant to an HSM, TPM or KMS backend (manage.py tenant_bind_backend) and "
        "rotate keys there (manage.py key_rotate); the local keystore always reports its keys "
        "as extractable and not sensitive."
    )
    evidence_captured = "Attribute dump of every version (no key material)."

    def run(self, ctx: Context) -> Iterator[Outcome]:
        for binding, found in _described(self, ctx, _keys(ctx)):
            if isinstance(found, Outcome):
                yield found
                continue
            rid = key_resource(binding)
            evidence = ctx.evidence("key-attributes", _key_facts(binding, found))
            problems = []
            for info in _live(found):
                flaws = [
                    flaw
                    for flaw, present in (
                        ("not generated in the backend", not info.generated_in_backend),
                        ("extractable", info.extractable),
                        ("not sensitive", not info.sensitive),
                    )
                    if present
                ]
                if flaws:
                    problems.append(f"version {info.ref.version} is {', '.join(flaws)}")
            if problems:
                yield self.failed(
                    "key",
                    rid,
                    f"Key {rid} in the {binding.backend_alias} backend: {_words(problems)}.",
                    evidence,
                    flawed=len(problems),
                )
            else:
                yield self.passed(
                    "key",
                    rid,
                    f"Every live version of key {rid} was generated in the "
                    f"{binding.backend_alias} backend, is sensitive and cannot be extracted.",
                    evidence,
                )


@register
class AlgorithmAllowList(Check):
    """KEY-007: keys and wrap mechanisms are on the allow-list."""

    id = "KEY-007"
    title = "Every key uses an allowed algorithm and size, and wraps with an allowed mechanism"
    description = (
        "Wrapping keys are AES-128, -192 or -256; signing keys EC P-256 or larger, or RSA-3072+ "
        "(RSA-2048 until the end of 2030); no 3DES, DES or short RSA. The mechanisms of the "
        "key's stanzas in the stored headers are the built-in backends' AEADs (A256GCM, "
        "AES-256-GCM, kmip-aes256-gcm, tpm2-seal-aes256kek-v1), never ECB or another mode."
    )
    risk = "A deprecated algorithm or mode can be broken, exposing what the key protects."
    severity = "high"
    scope = "key"
    requirements = ("3.7.1", "12.3.3")
    remediation = (
        "Rotate the key (manage.py key_rotate) in a backend that creates AES-256 (wrapping) or "
        "EC P-256 (signing) keys, and let the rewrap campaign finish."
    )
    evidence_captured = "Crypto inventory rows: per version algorithm, size, purpose; mechanisms."

    def run(self, ctx: Context) -> Iterator[Outcome]:
        census = None
        for binding, found in _described(self, ctx, _keys(ctx)):
            if isinstance(found, Outcome):
                yield found
                continue
            rid = key_resource(binding)
            problems = [p for v in _live(found) if (p := algorithm_problem(v, ctx.now))]
            mechanisms: Counter[str] = Counter()
            if binding.role in WRAP_ROLES:
                census = census or stanza_census(ctx)
                for stats in census.of_key(binding.key_id).values():
                    mechanisms.update(stats.mechanisms)
            odd = sorted(m for m in mechanisms if m not in ALLOWED_MECHANISMS)
            if odd:
                problems.append(f"its stanzas use mechanism(s) {', '.join(odd)}")
            evidence = ctx.evidence(
                "crypto-inventory",
                {
                    "key": rid,
                    "versions": [
                        [v.ref.version, str(v.purpose), v.algorithm, v.size, str(v.state)]
                        for v in found.versions
                    ],
                    "mechanisms": dict(sorted(mechanisms.items())),
                },
            )
            if problems:
                yield self.failed(
                    "key",
                    rid,
                    f"Key {rid} is off the allow-list: {_words(problems)}.",
                    evidence,
                    problems=len(problems),
                )
            else:
                algorithms = sorted({f"{v.algorithm}-{v.size}" for v in _live(found)})
                yield self.passed(
                    "key",
                    rid,
                    f"Key {rid} uses {', '.join(algorithms) or 'no live version'}"
                    f"{' with ' + ', '.join(sorted(mechanisms)) if mechanisms else ''}, all "
                    "on the allow-list.",
                    evidence,
                )


def effective_cryptoperiod(ctx: Context) -> int:
    """The cryptoperiod the product applies to the tenant's wrapping keys (as
    ``vault.tenants.services.tenant_cryptoperiod_days``, on the row as it is now)."""
    ceiling = int(settings.VAULT_KEK_CRYPTOPERIOD_DAYS)
    return min(_fresh_cryptoperiod(ctx) or ceiling, ceiling)


@register
class CryptoperiodHonoured(Check):
    """KEY-008: no wrapping key wraps past its cryptoperiod."""

    id = "KEY-008"
    title = "No key-encryption key has wrapped for longer than its cryptoperiod"
    description = (
        "For each of the tenant's primary and recovery keys, the version that wraps now (the "
        "backend's active primary) was activated less than the tenant's effective cryptoperiod "
        "ago: the smaller of tenant.kek_cryptoperiod_days and VAULT_KEK_CRYPTOPERIOD_DAYS, as "
        "keys_rotate_due applies it (activation, else creation, else the binding's creation). "
        "Signing keys are not rotated by the product and are outside this check."
    )
    risk = "A key used past its cryptoperiod protects more data for longer than planned."
    severity = "high"
    scope = "key"
    requirements = ("3.7.4",)
    remediation = (
        "Rotate the key now (manage.py key_rotate --tenant <slug>) and make sure the scheduled "
        "task vault.lifecycle.rotate_due (keys_rotate_due) runs daily."
    )
    evidence_captured = "Key lifecycle rows: activation, cryptoperiod, due date, age."

    def run(self, ctx: Context) -> Iterator[Outcome]:
        limit = effective_cryptoperiod(ctx)
        bindings = _keys(ctx, roles=WRAP_ROLES, platform=False)
        for binding, found in _described(self, ctx, bindings):
            if isinstance(found, Outcome):
                yield found
                continue
            rid = key_resource(binding)
            primary = found.primary
            if primary is None:
                yield self.not_applicable(
                    "key", rid, f"Key {rid} has no active version: it wraps nothing."
                )
                continue
            born = _aware(primary.activated or primary.created or binding.created_at)
            due = born + timedelta(days=limit)
            age = (ctx.now - born).days
            evidence = ctx.evidence(
                "key-lifecycle",
                {
                    "key": rid,
                    "version": primary.ref.version,
                    "activated": _time(born),
                    "cryptoperiod_days": limit,
                    "due": _time(due),
                    "checked_at": _time(ctx.now),
                },
            )
            observed = {"version": primary.ref.version, "age_days": age, "limit_days": limit}
            if ctx.now >= due:
                yield self.failed(
                    "key",
                    rid,
                    f"Version {primary.ref.version} of key {rid} has wrapped for {age} days, past "
                    f"its cryptoperiod of {limit} days (due {_time(due)}).",
                    evidence,
                    **observed,
                )
            else:
                yield self.passed(
                    "key",
                    rid,
                    f"Version {primary.ref.version} of key {rid} is {age} days old, within its "
                    f"cryptoperiod of {limit} days (due {_time(due)}).",
                    evidence,
                    **observed,
                )


@register
class CryptoperiodPolicy(Check):
    """KEY-009: the configured cryptoperiod is no looser than the ceiling."""

    id = "KEY-009"
    title = "The tenant's cryptoperiod for key-encryption keys is within the platform's ceiling"
    description = (
        "The tenant's stored kek_cryptoperiod_days (when set) is at most the platform's "
        "VAULT_KEK_CRYPTOPERIOD_DAYS, and that is at most 730 days (NIST SP 800-57 Part 1: two "
        "years of originator use for a key-wrapping key). The product caps the tenant's value "
        "when it rotates, so a looser stored value shows a change made around the API."
    )
    risk = "A loosened policy lets keys live longer than the assessed cryptoperiod."
    severity = "medium"
    scope = "tenant"
    requirements = ("3.7.4",)
    remediation = (
        "Set the tenant's cryptoperiod within the ceiling (PATCH /api/v1/tenants/<slug>/ with "
        "kek_cryptoperiod_days) and VAULT_KEK_CRYPTOPERIOD_DAYS to 730 or less; find out who "
        "changed the row."
    )
    evidence_captured = "Effective policy against the ceilings."

    def run(self, ctx: Context) -> Iterator[Outcome]:
        own = _fresh_cryptoperiod(ctx)
        platform = int(settings.VAULT_KEK_CRYPTOPERIOD_DAYS)
        ceiling = min(platform, NIST_KEK_CRYPTOPERIOD_DAYS)
        evidence = ctx.evidence(
            "cryptoperiod-policy",
            {
                "tenant_kek_cryptoperiod_days": own,
                "VAULT_KEK_CRYPTOPERIOD_DAYS": platform,
                "nist_ceiling_days": NIST_KEK_CRYPTOPERIOD_DAYS,
            },
        )
        problems = []
        if platform > NIST_KEK_CRYPTOPERIOD_DAYS:
            problems.append(
                f"VAULT_KEK_CRYPTOPERIOD_DAYS is {platform}, more than the "
                f"{NIST_KEK_CRYPTOPERIOD_DAYS} days NIST allows"
            )
        if own is not None and own > ceiling:
            problems.append(f"its kek_cryptoperiod_days is {own}, more than the {ceiling} allowed")
        slug = ctx.tenant.slug
        configured = own if own is not None else platform
        if problems:
            yield self.failed(
                "tenant",
                slug,
                f"Tenant {slug}'s cryptoperiod policy is too loose: {_words(problems)}.",
                evidence,
                configured=configured,
                ceiling=ceiling,
            )
        else:
            yield self.passed(
                "tenant",
                slug,
                f"Tenant {slug}'s key-encryption keys change at least every {configured} days, "
                f"within the ceiling of {ceiling} days.",
                evidence,
                configured=configured,
                ceiling=ceiling,
            )


@register
class RetiredKeysNotWrapping(Check):
    """KEY-010: no data key is wrapped under a retired or replaced key version."""

    id = "KEY-010"
    title = "Retired and replaced key versions wrap no new data keys"
    description = (
        "For each of the tenant's wrapping keys: no header the vault stored (gateway versions, "
        "blobs, deduplication key) has a stanza under a version that was already retired "
        "(deactivated, compromised or destroyed) or replaced (a newer version was active) when "
        "the header was stored; and the version the backend wraps with now is not older than "
        "the one the vault's last rotation made. Headers rewrapped in place by a campaign keep "
        "their storage time and only move to newer versions. Client-side headers are made by "
        "the client and are not judged here. The key.wrap events name no version, so the "
        "headers are the evidence."
    )
    risk = "A key taken out of service, perhaps because it was compromised, keeps protecting data."
    severity = "high"
    scope = "key"
    requirements = ("3.7.5",)
    remediation = (
        "Rotate the key (manage.py key_rotate) and run its campaign (manage.py "
        "key_campaigns_run) so every header moves to the current version; investigate how a "
        "header under a retired version was stored (the object's write event in the audit log)."
    )
    evidence_captured = (
        "Retirement time of each version, stanzas per version, and up to 20 offending headers."
    )

    def run(self, ctx: Context) -> Iterator[Outcome]:
        bindings = _keys(ctx, roles=WRAP_ROLES, platform=False)
        census = stanza_census(ctx) if bindings else None
        for binding, found in _described(self, ctx, bindings):
            if isinstance(found, Outcome):
                yield found
                continue
            assert census is not None  # noqa: S101  (made above when there are bindings)
            rid = key_resource(binding)
            stanzas = census.of_key(binding.key_id)
            retired = retirements(found)
            late = {v: s for v, s in stanzas.items() if s.late}
            primary = found.primary
            behind = primary is not None and primary.ref.version < binding.current_version
            evidence = ctx.evidence(
                "retired-key-use",
                {
                    "key": rid,
                    "current_version": binding.current_version,
                    "backend_primary": primary.ref.version if primary else None,
                    "retired_at": {str(v): _time(t) for v, t in sorted(retired.items())},
                    "stanzas": {str(v): s.count for v, s in sorted(stanzas.items())},
                    "late": {str(v): s.late_samples for v, s in sorted(late.items())},
                },
            )
            problems = [
                f"{s.late} header(s) stored after version {v} was retired or replaced"
                for v, s in sorted(late.items())
            ]
            if behind and primary is not None:
                problems.append(
                    f"the backend wraps with version {primary.ref.version}, replaced by "
                    f"version {binding.current_version}"
                )
            if problems:
                yield self.failed(
                    "key",
                    rid,
                    f"Key {rid} wrapped data keys under retired versions: {_words(problems)}.",
                    evidence,
                    late=sum(s.late for s in late.values()),
                )
            else:
                yield self.passed(
                    "key",
                    rid,
                    f"No data key was wrapped under a retired version of key {rid} "
                    f"({sum(s.count for s in stanzas.values())} stanzas, {len(retired)} retired "
                    "version(s)).",
                    evidence,
                    late=0,
                )


@register
class DualControl(Check):
    """KEY-013: every action under dual control ran with enough independent approvals."""

    id = "KEY-013"
    title = "Every key operation under dual control ran with two or more independent approvals"
    description = (
        "Each dual-control request of the tenant that ran or is running (key destruction, "
        "owner or custodian appointment, policy loosening) has approvals from at least "
        "max(its required count, VAULT_APPROVALS_REQUIRED) distinct people, none of them the "
        "requester (nor, for an appointment, the person appointed), and no approval by the "
        "requester at all. Not applicable when no such action ran."
    )
    risk = "One person alone destroyed keys or handed out key rights."
    severity = "critical"
    scope = "key"
    requirements = ("3.7.6",)
    remediation = (
        "Investigate the request and the database change that let it run (the approval.* "
        "events in the audit log); restore VAULT_APPROVALS_REQUIRED to 2 or more and review "
        "what the action changed."
    )
    evidence_captured = "Approval chain per request: requester, approvers, required count."

    def run(self, ctx: Context) -> Iterator[Outcome]:
        from vault.lifecycle.models import Approval, ApprovalRequest, Decision, RequestState

        requests = list(
            ApprovalRequest.objects.filter(
                tenant=ctx.tenant, state__in=(RequestState.EXECUTED, RequestState.EXECUTING)
            )
            .order_by("pk")
            .values_list("pk", "action", "required", "requested_by_id", "params", "state")
        )
        if not requests:
            yield self.not_applicable(
                "tenant",
                ctx.tenant.slug,
                f"No action under dual control has run for tenant {ctx.tenant.slug}.",
            )
            return
        votes: dict[int, list[tuple[int, str]]] = defaultdict(list)
        for request_id, approver, email in Approval.objects.filter(
            request_id__in=[r[0] for r in requests], decision=Decision.APPROVE
        ).values_list("request_id", "approver_id", "approver__email"):
            votes[request_id].append((approver, email))
        floor = int(settings.VAULT_APPROVALS_REQUIRED)
        from vault.audit.models import AuditEvent
        from vault.tenants.models import Membership, Role

        # Only the tenant's own people count: its owners and custodians now, and anyone its
        # audit log shows as a member once (removed since). An outsider's vote counts for nothing.
        insiders = {
            email.lower()
            for email in Membership.objects.filter(
                tenant=ctx.tenant, role__in=(Role.OWNER, Role.CUSTODIAN)
            ).values_list("user__email", flat=True)
        } | {
            str(email).lower()
            for email in AuditEvent.objects.filter(
                tenant=ctx.tenant, type__startswith="member.", resource_type="member"
            ).values_list("resource_id", flat=True)
        }
        for pk, action, required, requester, params, state in requests:
            appointee = str((params or {}).get("email", "")).lower()
            approvers = sorted(
                {
                    a
                    for a, email in votes[pk]
                    if a != requester and email.lower() != appointee and email.lower() in insiders
                }
            )
            own = any(a == requester for a, _ in votes[pk])
            needed = max(int(required), floor)
            evidence = ctx.evidence(
                "approval-chain",
                {
                    "request": pk,
                    "action": action,
                    "state": state,
                    "requested_by": requester,
                    "approvals": sorted(a for a, _ in votes[pk]),
                    "independent": approvers,
                    "required": needed,
                },
            )
            observed = {"action": action, "approvers": len(approvers), "required": needed}
            if len(approvers) < needed or own:
                why = f"{len(approvers)} independent approval(s) of the {needed} required"
                if own:
                    why += ", and the requester approved it"
                yield self.failed(
                    "approval",
                    pk,
                    f"Request {pk} ({action}) ran with {why}.",
                    evidence,
                    **observed,
                )
            else:
                yield self.passed(
                    "approval",
                    pk,
                    f"Request {pk} ({action}) ran with {len(approvers)} approvals from people "
                    f"other than its requester ({needed} required).",
                    evidence,
                    **observed,
                )


@register
class NoSubstitution(Check):
    """KEY-014: the backend's keys are those the vault pinned."""

    id = "KEY-014"
    title = "Every key's versions still have the fingerprints pinned when the vault made them"
    description = (
        "For each key: the binding is not suspended by the key health check, every pinned "
        "version the backend still holds reports the fingerprint pinned at creation or "
        "rotation, and the current version is still there. A new fingerprint means the "
        "backend now holds other material under the same name (a substituted key)."
    )
    risk = "A substituted key lets whoever made it read everything wrapped from then on."
    severity = "critical"
    scope = "key"
    requirements = ("3.7.7",)
    remediation = (
        "Treat it as a compromise: find who changed the key in the backend, mark the key "
        "compromised (POST /api/v1/keys/campaigns/ with compromised=true) once the genuine "
        "material is back or rotate to a new key, and lift the suspension only after review."
    )
    evidence_captured = "Fingerprint diff: pinned against reported, per version; suspension."

    def run(self, ctx: Context) -> Iterator[Outcome]:
        for binding, found in _described(self, ctx, _keys(ctx)):
            if isinstance(found, Outcome):
                yield found
                continue
            rid = key_resource(binding)
            pins = {1: binding.fingerprint, **{int(v): f for v, f in (binding.pins or {}).items()}}
            listed = {v.ref.version: v for v in found.versions}
            diff = [
                [number, pin, listed[number].fingerprint]
                for number, pin in sorted(pins.items())
                if number in listed and listed[number].state != KeyState.DESTROYED
            ]
            changed = [row[0] for row in diff if row[1] != row[2]]
            evidence = ctx.evidence(
                "fingerprint-diff",
                {
                    "key": rid,
                    "versions": diff,
                    "current_version": binding.current_version,
                    "suspended_at": _time(binding.suspended_at),
                    "suspended_reason": binding.suspended_reason,
                },
            )
            problems = []
            if binding.suspended_at is not None:
                problems.append(f"it is suspended ({binding.suspended_reason or 'no reason'})")
            if changed:
                problems.append(
                    f"version(s) {', '.join(map(str, changed))} report another fingerprint "
                    "than the one pinned"
                )
            if binding.current_version not in listed:
                problems.append(f"its current version {binding.current_version} is gone")
            if problems:
                yield self.failed(
                    "key",
                    rid,
                    f"Key {rid} may have been substituted: {_words(problems)}.",
                    evidence,
                    changed=changed,
                )
            else:
                yield self.passed(
                    "key",
                    rid,
                    f"Every pinned version of key {rid} still has its pinned fingerprint.",
                    evidence,
                    checked=len(diff),
                )


@register
class NoSharedKeys(Check):
    """KEY-017: no key of the tenant is also another tenant's or the platform's."""

    id = "KEY-017"
    title = "No key is shared with another tenant, environment or role"
    description = (
        "Each of the tenant's keys (its key id in its backend, and every pinned fingerprint) "
        "belongs to no other key binding: not another tenant's (which may be a test or "
        "production tenant of another environment), not the platform's, not another role of "
        "this tenant. The vault has no per-tenant environment flag, so every other binding "
        "counts."
    )
    risk = "A key shared with a test environment is exposed to its weaker controls."
    severity = "high"
    scope = "key"
    requirements = ("3.6.1.1",)
    remediation = (
        "Rotate the tenant's key to a new one of its own (manage.py key_rotate) and correct the "
        "binding that points at another's key."
    )
    evidence_captured = "Overlap query result: the other bindings sharing a key id or fingerprint."

    def run(self, ctx: Context) -> Iterator[Outcome]:
        by_key: dict[tuple[str, str], set[int]] = defaultdict(set)
        by_print: dict[str, set[int]] = defaultdict(set)
        names: dict[int, str] = {}
        for pk, tenant_id, role, alias, key_id, fingerprint, pins in KeyBinding.objects.values_list(
            "pk", "tenant_id", "role", "backend_alias", "key_id", "fingerprint", "pins"
        ):
            # Another tenant is never named in this tenant's report: its binding's number is.
            if tenant_id is None:
                names[pk] = f"the platform's {role} key"
            elif tenant_id == ctx.tenant.pk:
                names[pk] = f"this tenant's {role} key"
            else:
                names[pk] = f"another tenant's {role} key (binding {pk})"
            by_key[(alias, key_id)].add(pk)
            for value in {fingerprint, *(pins or {}).values()} - {""}:
                by_print[str(value)].add(pk)
        for binding in ctx.bindings:
            rid = key_resource(binding)
            prints = {binding.fingerprint, *(binding.pins or {}).values()} - {""}
            sharing = by_key[(binding.backend_alias, binding.key_id)] | {
                pk for fp in prints for pk in by_print[str(fp)]
            }
            others = sorted(names[pk] for pk in sharing - {binding.pk})
            evidence = ctx.evidence(
                "fingerprint-overlap",
                {"key": rid, "fingerprints": sorted(prints), "shared_with": others},
            )
            if others:
                yield self.failed(
                    "key",
                    rid,
                    f"Key {rid} is also the key of {', '.join(others)}.",
                    evidence,
                    shared_with=others,
                )
            else:
                yield self.passed(
                    "key",
                    rid,
                    f"Key {rid} belongs to no other key binding.",
                    evidence,
                    shared_with=[],
                )


@register
class NoPlaintextExport(Check):
    """KEY-018: keys leave their backend only wrapped."""

    id = "KEY-018"
    title = "No key can leave its backend in clear, and none was exported"
    description = (
        "The product has no key export: data keys leave a backend only wrapped, and keys never "
        "leave it. For each key, no version that is not destroyed is reported extractable by "
        "its backend, and the tenant's audit log holds no event of a key export type (none "
        "exists in vault.audit.events today)."
    )
    risk = "An extractable key can be copied out of its device in clear."
    severity = "high"
    scope = "key"
    requirements = ("3.7.2",)
    remediation = (
        "Bind the tenant to a backend that marks keys non-extractable (HSM over PKCS#11, TPM, "
        "KMIP with SERVER_REFUSES_GET and a policy refusing Get) and rotate the key there."
    )
    evidence_captured = "Per key: extractable flag per version; count of key export events."

    def run(self, ctx: Context) -> Iterator[Outcome]:
        from vault.audit.events import EVENT_TYPES
        from vault.audit.models import AuditEvent
        from vault.audit.services import log_of

        export_types = sorted(t for t in EVENT_TYPES if t.startswith("key.export"))
        exports = (
            AuditEvent.objects.filter(log=log_of(ctx.tenant), type__in=export_types).count()
            if export_types
            else 0
        )
        for binding, found in _described(self, ctx, _keys(ctx)):
            if isinstance(found, Outcome):
                yield found
                continue
            rid = key_resource(binding)
            extractable = [v.ref.version for v in _live(found) if v.extractable]
            evidence = ctx.evidence(
                "key-export",
                {
                    "key": rid,
                    "extractable_versions": extractable,
                    "export_event_types": export_types,
                    "export_events": exports,
                },
            )
            problems = []
            if extractable:
                problems.append(
                    f"the {binding.backend_alias} backend reports version(s) "
                    f"{', '.join(map(str, extractable))} extractable"
                )
            if exports:
                problems.append(f"the audit log records {exports} key export(s)")
            if problems:
                yield self.failed(
                    "key",
                    rid,
                    f"Key {rid} can leave its backend in clear: {_words(problems)}.",
                    evidence,
                    extractable=extractable,
                )
            else:
                yield self.passed(
                    "key",
                    rid,
                    f"No version of key {rid} is extractable and no key export was recorded.",
                    evidence,
                    extractable=[],
                )


def _library(kind: str) -> str | None:
    name = BACKEND_LIBRARIES.get(kind)
    if name is None:
        return None
    try:
        return f"{name} {importlib.metadata.version(name)}"
    except importlib.metadata.PackageNotFoundError:
        return None


@register
class BackendHealth(Check):
    """KEY-020: every key backend the tenant depends on answers."""

    id = "KEY-020"
    title = "Every key backend the tenant depends on answers its health check"
    description = (
        "Each backend holding one of the tenant's keys, the platform's signing keys, "
        "VAULT_SIGNING_BACKEND and VAULT_REPORT_SIGNING_BACKEND answers health() now. A backend "
        "that answers not ok is a failed security control (FAIL, with its detail); one that is "
        "not configured is ERROR. The backend class, device kind and library version are "
        "recorded for the annual technology review (12.3.4)."
    )
    risk = (
        "A backend that is down stops every upload and read; unnoticed, it hides a failed "
        "device or a substitution in progress."
    )
    severity = "high"
    scope = "platform"
    requirements = ("10.7.2", "12.3.4")
    remediation = (
        "Restore the backend (HSM, TPM, KMS or keystore file) and check it with manage.py "
        "key_backends; alert on the scheduled key health check's failures."
    )
    evidence_captured = "Health answer, backend class, device kind and library version."

    def run(self, ctx: Context) -> Iterator[Outcome]:
        aliases = {b.backend_alias for b in _keys(ctx)}
        for name in ("VAULT_SIGNING_BACKEND", "VAULT_REPORT_SIGNING_BACKEND"):
            alias = getattr(settings, name, "")
            if alias:
                aliases.add(str(alias))
        for alias in sorted(aliases):
            try:
                backend = ctx.backend(alias)
            except KeyBackendError as exc:
                yield self.error(
                    "backend",
                    alias,
                    f"Key backend {alias} cannot be loaded ({exc.code}); the check could not "
                    "ask it.",
                )
                continue
            health = backend.health()
            facts = {
                **_backend_facts(backend),
                "library": _library(backend.kind),
                "ok": health.ok,
                "detail": health.detail,
                "checked_at": _time(ctx.now),
            }
            evidence = ctx.evidence("backend-health", facts)
            detail = health.detail.rstrip(".")
            if health.ok:
                yield self.passed(
                    "backend",
                    alias,
                    f"Key backend {alias} ({backend.kind}) answers: {detail}.",
                    evidence,
                    ok=True,
                )
            else:
                yield self.failed(
                    "backend",
                    alias,
                    f"Key backend {alias} ({backend.kind}) fails its health check: {detail}.",
                    evidence,
                    ok=False,
                )

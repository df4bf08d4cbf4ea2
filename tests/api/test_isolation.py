"""The tenant-isolation matrix: every API endpoint, every role, every kind of principal.

Two tenants, ``alpha`` (the caller's) and ``bravo`` (the other), each with real data: objects with
versions (gateway and client-side), key bindings, rotation campaigns, approval requests,
destruction certificates, audit events and checkpoints, compliance runs, waivers,
attestations, tokens, members and upload sessions. Every name made for bravo carries a marker.

For each endpoint and method of ``tests/api/endpoints.py``, each role, and each kind of
principal alpha can hold (a person's token, an integration token that acts for nobody, the token
of a person who is also a member of bravo with the same role, and a signed-in console session):

- addressed at bravo's object, the answer is the answer for an id that exists nowhere: the same
  status, the same error code and message (404 for a role that may use the endpoint, 403 for one
  that may not, 401 for a session), so it tells nothing of whether bravo's object exists;
- called on a collection or singleton, nothing of bravo is in the answer;
- no answer holds any of bravo's markers (names, emails, ids, token prefixes, its slug);
- bravo's state is the same after each attempt as before: every row that belongs to bravo (its
  objects, versions, keys, members, tokens, approvals, campaigns, compliance records, its audit
  log and so audit event count) and every stored file of bravo's.

The API has no tenant slug in its URLs (a token names its tenant); the console's slugs are
checked in tests/console/test_console_isolation.py. The world is built once per module inside a
transaction rolled back at the end; each cell runs in a savepoint of its own, so even a cell
that did change bravo leaves the next one a clean world.

Matrix size: with ``VAULT_TORTURE_SUMMARY_DIR`` set, the counts go to ``isolation.json`` there.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from django.db import transaction
from django.test import Client, override_settings
from django.urls import reverse
from django_otp.plugins.otp_totp.models import TOTPDevice
from rest_framework.test import APIClient

from tests.api.endpoints import ENDPOINTS
from tests.api.harness import (
    ROLES,
    Actor,
    Endpoint,
    Side,
    World,
    make_actor,
    tenant_state,
)
from tests.console.conftest import sign_in
from tests.factories import PASSWORD
from vault.accounts.models import User
from vault.keys.services import tenant_bind_backend
from vault.tenants.models import Membership, Role, Tenant

pytestmark = pytest.mark.django_db

MARKER = "zqxb"  # in every name made for bravo; looked for in every answer alpha gets
ALPHA, BRAVO = "alpha", f"bravo-{MARKER}"
# person: a token for someone who is in alpha only; integration: a token that acts for nobody;
# dual: alpha's token of someone who is in bravo too, with the same role (the person's bravo
# tokens, uploads and requests are the ones a scope by person alone would show);
# session: a signed-in console session (both factors), which the API must not take.
# child (torture mode): a token that alpha's person made through the API (it has a parent).
KINDS = ("person", "integration", "dual", "session") + (
    ("child",) if os.environ.get("VAULT_TORTURE") == "1" else ()
)
SESSION = "session"
UNKNOWN_INT = 2_000_000_000  # exists nowhere (the matrix checks it)

_counts: Counter[str] = Counter()


@dataclass
class Universe:
    world: World  # mine: alpha's persons; other: bravo's persons
    alpha: dict[str, Side]  # one side of alpha per kind (session: the persons' side)
    bravo: dict[str, Side]  # bravo's persons, and bravo's side of the dual persons
    sessions: dict[str, dict[str, str]]  # role -> the signed-in console session's cookies
    targets: dict[tuple[str, str, str], Any]  # (endpoint id, role, kind) -> bravo's object
    markers: set[str] = field(default_factory=set)
    storage: Path = Path()
    # Bravo's state once built: each cell runs in a savepoint of the built world, so every cell
    # starts from it, and must leave it so.
    state: dict[str, Any] = field(default_factory=dict)
    counts: dict[str, Any] = field(default_factory=dict)  # the same, as counts and file sizes

    @property
    def tenant(self) -> Tenant:
        return self.world.other.tenant


def _person_side(tenant: Tenant, role_emails: dict[str, str]) -> dict[str, Actor]:
    actors = {}
    for role, email in role_emails.items():
        user = User.objects.filter(email=email).first() or User.objects.create_user(
            email=email, password=PASSWORD
        )
        Membership.objects.create(tenant=tenant, user=user, role=role)
        actors[role] = make_actor(tenant=tenant, role=role, user=user)
    return actors


def _child(parent: Actor) -> Actor:
    from vault.tokens.services import token_create

    issued = token_create(
        tenant=parent.token.tenant, name="child", role=parent.role, parent=parent.token
    )
    return Actor(role=parent.role, user=issued.token.user, token=issued.token, clear=issued.clear)


def _build(tmp: Path) -> Universe:
    alpha = Tenant.objects.create(slug=ALPHA, name="Alpha")
    bravo = Tenant.objects.create(slug=BRAVO, name=f"Bravo {MARKER} Bank")
    persons_a = _person_side(alpha, {r: f"{r}@{ALPHA}.example" for r in ROLES})
    persons_b = _person_side(bravo, {r: f"{r}@{BRAVO}.example" for r in ROLES})
    # Same addresses in both tenants: alpha's member list may show them, so no marker in them.
    dual_emails = {r: f"dual-{r}@{ALPHA}.example" for r in ROLES}
    dual_a = _person_side(alpha, dual_emails)
    dual_b = _person_side(bravo, dual_emails)
    integration_a = {r: make_actor(tenant=alpha, role=r, user=None) for r in ROLES}
    integration_b = {r: make_actor(tenant=bravo, role=r, user=None) for r in ROLES}
    for tenant in (alpha, bravo):
        tenant_bind_backend(tenant=tenant, backend_alias="local")

    side_a, side_b = Side(alpha, persons_a), Side(bravo, persons_b)
    world = World(mine=side_a, other=side_b)
    alpha_sides = {
        "person": side_a,
        "integration": Side(alpha, integration_a),
        "dual": Side(alpha, dual_a),
        SESSION: side_a,
        "child": Side(alpha, {r: _child(persons_a[r]) for r in ROLES}),
    }
    bravo_sides = {
        "person": side_b,
        "integration": Side(bravo, integration_b),
        "dual": Side(bravo, dual_b),
    }

    # Each endpoint's own data (lists: something in each tenant), made once; bravo's names marked.
    for endpoint in ENDPOINTS:
        if endpoint.prepare is not None:
            endpoint.prepare(world)
    # Bravo's objects, as each endpoint addresses them: for each role, one made so the actor of
    # that role in bravo may use it, and one of the bravo side of the dual person of that role.
    world.prefix = f"{MARKER}-"
    targets: dict[tuple[str, str, str], Any] = {}
    made: dict[tuple[Any, str, str], Any] = {}
    for endpoint in ENDPOINTS:
        if endpoint.make_object is None:
            continue
        for role in ROLES:
            for kind in KINDS:
                source = "dual" if kind == "dual" else "person"
                key = (endpoint.make_object, role, source)
                if key not in made:
                    made[key] = endpoint.make_object(world, bravo_sides[source], role)
                targets[(endpoint.id, role, kind)] = made[key]
    for role in ROLES:  # some of bravo's integration tokens' own data too
        for endpoint in ENDPOINTS:
            if endpoint.make_object is not None and endpoint.route == "v1:upload-detail":
                endpoint.make_object(world, bravo_sides["integration"], role)
    _plant_more(world, bravo)
    world.prefix = ""

    sessions = {}
    for role, actor in persons_a.items():
        assert actor.user is not None
        device = TOTPDevice.objects.create(user=actor.user, name="app", confirmed=True)
        client = Client()
        assert sign_in(client, device, email=actor.user.email).status_code == 302
        sessions[role] = {name: morsel.value for name, morsel in client.cookies.items()}

    universe = Universe(
        world=world,
        alpha=alpha_sides,
        bravo=bravo_sides,
        sessions=sessions,
        targets=targets,
        storage=tmp,
    )
    universe.markers = _markers(bravo)
    universe.state = tenant_state(bravo)
    universe.counts = tenant_state(bravo, full=False)
    shutil.copytree(tmp / "storage" / str(bravo.pk), tmp / "pristine")
    return universe


def _plant_more(world: World, bravo: Tenant) -> None:
    """Bravo data that no endpoint's maker makes: audit events with marked details, a
    checkpoint that covers them, the tokens of every kind, a finished compliance run."""
    from compliance.engine import compliance_run
    from vault.audit.services import audit_integrate, audit_record, log_of

    for n in range(3):
        audit_record("tenant.update", tenant=bravo, details={"note": f"{MARKER} event {n}"})
    audit_integrate(log_of(bravo))
    compliance_run(bravo, checks=None)


def _markers(bravo: Tenant) -> set[str]:
    """Strings that only bravo's data holds: its slug and names, and every id that is not a
    small integer (uuids, token prefixes, object names, blob digests, audit origins)."""
    from compliance.models import ComplianceRun, Waiver
    from vault.audit.models import AuditEvent
    from vault.audit.services import log_of, origin_of_log
    from vault.objects.models import StoredObject, UploadSession
    from vault.tokens.models import ApiToken

    found = {MARKER, bravo.slug, origin_of_log(log_of(bravo), bravo)}
    found |= {t.key_id for t in ApiToken.objects.filter(tenant=bravo)}
    found |= {str(e.uuid) for e in AuditEvent.objects.filter(tenant=bravo)}
    found |= {str(r.pk) for r in ComplianceRun.objects.filter(tenant=bravo)}
    found |= {str(s.pk) for s in UploadSession.objects.filter(object__tenant=bravo)}
    found |= {o.name for o in StoredObject.objects.filter(tenant=bravo)}
    found |= {
        w.justification for w in Waiver.objects.filter(tenant=bravo) if MARKER in w.justification
    }
    found |= {
        m.user.email
        for m in Membership.objects.filter(tenant=bravo).select_related("user")
        if m.user.email.endswith(f"@{BRAVO}.example")
    }
    return {m.lower() for m in found if m}


@pytest.fixture(scope="module")
def universe(
    django_db_setup: Any,
    django_db_blocker: Any,
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
) -> Iterator[Universe]:
    """The two tenants, built once for the module in a transaction that is rolled back."""
    tmp = tmp_path_factory.mktemp("isolation")
    with (
        override_settings(**_module_settings(tmp)),
        django_db_blocker.unblock(),
        transaction.atomic(),
    ):
        made = _build(tmp)
        yield made
        transaction.set_rollback(True)
    _report(request)


def _module_settings(tmp: Path) -> dict[str, Any]:
    from django.conf import settings

    return {
        "PASSWORD_HASHERS": ["django.contrib.auth.hashers.MD5PasswordHasher"],
        "STORAGES": {
            **settings.STORAGES,
            "default": {
                "BACKEND": "django.core.files.storage.FileSystemStorage",
                "OPTIONS": {"location": str(tmp / "storage")},
            },
        },
        "VAULT_KEY_BACKENDS": {
            "local": {
                "BACKEND": "kms_plugins.local.LocalKeyBackend",
                "OPTIONS": {
                    "PATH": str(tmp / "keys.json"),
                    "KEY_FILE": str(tmp / "master.key"),
                },
            }
        },
    }


@pytest.fixture(autouse=True)
def _module_storage(universe: Universe, settings: Any) -> Iterator[None]:
    """The per-test storage and keystore of tests/conftest.py would hide the module's.

    Each cell's rows go with its savepoint; its files do not: put bravo's back as they were
    built, so that a cell that wrote some fails alone, not every cell after it too."""
    for name, value in _module_settings(universe.storage).items():
        setattr(settings, name, value)
    yield
    mine = universe.storage / "storage" / str(universe.tenant.pk)
    pristine = universe.storage / "pristine"
    if tenant_state(universe.tenant, full=False)["files"] != universe.counts["files"]:
        shutil.rmtree(mine, ignore_errors=True)
        shutil.copytree(pristine, mine)


def _report(request: pytest.FixtureRequest) -> None:
    """Say how many cells ran; write isolation.json under VAULT_TORTURE_SUMMARY_DIR."""
    matrix = {k: v for k, v in sorted(_counts.items()) if k.startswith(("detail_", "collection_"))}
    summary = {
        "endpoints": len(ENDPOINTS),
        "roles": list(ROLES),
        "kinds": list(KINDS),
        "matrix_cells": sum(matrix.values()),
        "matrix_cells_possible": len(DETAIL_CELLS) + len(COLLECTION_CELLS),
        **matrix,
        "own_object_checks": _counts["own_objects"],
        "probes": _counts["probes"],
    }
    line = f"tenant-isolation matrix: {json.dumps(summary)}"
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line(line)
    directory = os.environ.get("VAULT_TORTURE_SUMMARY_DIR")
    if directory:
        Path(directory).mkdir(parents=True, exist_ok=True)
        (Path(directory) / "isolation.json").write_text(json.dumps(summary, indent=2) + "\n")


# --- calls -------------------------------------------------------------------------------------


def _client(universe: Universe, role: str, kind: str) -> APIClient:
    client = APIClient()
    if kind == SESSION:
        for name, value in universe.sessions[role].items():
            client.cookies[name] = value
    else:
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {universe.alpha[kind].actors[role].clear}")
    return client


def _url(endpoint: Endpoint, pk: Any = None) -> str:
    kwargs = {"pk": pk, **endpoint.url_kwargs} if pk is not None else None
    return reverse(endpoint.route, kwargs=kwargs)


def _send(client: APIClient, endpoint: Endpoint, url: str, payload: Any) -> Any:
    method = getattr(client, endpoint.method.lower())
    if payload is None:
        return method(url)
    if isinstance(payload, bytes):
        return method(url, payload, content_type="application/octet-stream")
    return method(url, payload, format="json")


def _unknown(pk: Any) -> Any:
    return UNKNOWN_INT if isinstance(pk, int) else uuid.uuid4()


def _answer(response: Any) -> tuple[Any, ...]:
    """What a caller can tell from an answer, less the request id every answer differs in."""
    body: Any = response.content
    if response.get("Content-Type", "").startswith("application/json"):
        body = response.json()
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            body = {**body, "error": {k: v for k, v in body["error"].items() if k != "request_id"}}
    return response.status_code, response.get("Content-Type"), response.get("Allow"), body


def _leaks(universe: Universe, response: Any) -> list[str]:
    content = b"".join(response.streaming_content) if response.streaming else response.content
    text = content.decode("utf-8", "replace").lower()
    return sorted(marker for marker in universe.markers if marker in text)


def _changed(universe: Universe, method: str) -> list[str]:
    """What of bravo's state differs from the state it was built with: every row and file after
    a write attempt; after a read, how many rows of each model and which files (a read that
    changed a row of bravo's would have to record something, and that adds a row)."""
    full = method != "GET"
    now = tenant_state(universe.tenant, full=full)
    then = universe.state if full else universe.counts
    return sorted(key for key in now.keys() | then.keys() if now.get(key) != then.get(key))


def _expected(endpoint: Endpoint, role: str, kind: str) -> tuple[int, str]:
    if kind == SESSION:
        return 401, "not_authenticated"
    if role not in endpoint.roles:
        return 403, "role_forbidden"
    return 404, "not_found"


def _cell_id(endpoint: Endpoint, role: str, kind: str) -> str:
    return f"{endpoint.method}-{endpoint.route.removeprefix('v1:')}-{role}-{kind}"


DETAIL_CELLS = [
    pytest.param(e, role, kind, id=_cell_id(e, role, kind))
    for e in ENDPOINTS
    if e.make_object is not None
    for role in ROLES
    for kind in KINDS
]
COLLECTION_CELLS = [
    pytest.param(e, role, kind, id=_cell_id(e, role, kind))
    for e in ENDPOINTS
    if e.make_object is None
    for role in ROLES
    for kind in KINDS
]


# --- the matrix --------------------------------------------------------------------------------


@pytest.mark.parametrize(("endpoint", "role", "kind"), DETAIL_CELLS)
def test_it_answers_another_tenants_object_as_if_it_did_not_exist(
    universe: Universe, endpoint: Endpoint, role: str, kind: str
) -> None:
    target = universe.targets[(endpoint.id, role, kind)]
    side = universe.alpha[kind]
    if endpoint.object_payload is not None:
        payload = endpoint.object_payload(target)
    elif endpoint.payload is not None:
        payload = endpoint.payload(universe.world, side, role)
    else:
        payload = None
    client = _client(universe, role, kind)

    foreign = _send(client, endpoint, _url(endpoint, target), payload)
    nowhere = _send(client, endpoint, _url(endpoint, _unknown(target)), payload)

    changed = _changed(universe, endpoint.method)
    assert not changed, f"the other tenant's state changed: {changed}"
    status, code = _expected(endpoint, role, kind)
    assert foreign.status_code == status, foreign.content
    assert foreign.json()["error"]["code"] == code
    assert _answer(foreign) == _answer(nowhere), "the answer tells that the object exists"
    assert not _leaks(universe, foreign), _leaks(universe, foreign)
    _counts[f"detail_{endpoint.method.lower()}"] += 1


@pytest.mark.parametrize(("endpoint", "role", "kind"), COLLECTION_CELLS)
def test_it_shows_nothing_of_another_tenant_in_collections(
    universe: Universe, endpoint: Endpoint, role: str, kind: str
) -> None:
    side = universe.alpha[kind]
    payload = endpoint.payload(universe.world, side, role) if endpoint.payload else None
    client = _client(universe, role, kind)

    response = _send(client, endpoint, _url(endpoint), payload)

    changed = _changed(universe, endpoint.method)
    assert not changed, f"the other tenant's state changed: {changed}"
    assert not _leaks(universe, response), _leaks(universe, response)
    if kind == SESSION or role not in endpoint.roles:
        status, code = _expected(endpoint, role, kind)
        assert response.status_code == status, response.content
        assert response.json()["error"]["code"] == code
    elif kind == "integration" and response.status_code == 403:
        # Acts of people (approvals, waivers, attestations) need a token that acts for one.
        assert response.json()["error"]["code"] in {"person_required", "not_a_custodian"}
    else:
        assert response.status_code == endpoint.success, response.content
    _counts[f"collection_{endpoint.method.lower()}"] += 1


# --- probes: a request of alpha's that names something of bravo's in its body --------------------


def _owner(universe: Universe) -> APIClient:
    return _client(universe, Role.OWNER, "person")


def _bravo_object(universe: Universe) -> Any:
    from vault.objects.models import StoredObject

    return StoredObject.objects.filter(tenant=universe.tenant).order_by("pk").first()


def test_it_answers_an_upload_for_another_tenants_object_as_for_no_object(
    universe: Universe,
) -> None:
    client = _owner(universe)
    url = reverse("v1:upload-list")
    foreign = client.post(url, {"object": _bravo_object(universe).pk, "length": 10}, format="json")
    nowhere = client.post(url, {"object": UNKNOWN_INT, "length": 10}, format="json")
    assert foreign.status_code == 404
    assert _answer(foreign) == _answer(nowhere)
    assert not _changed(universe, "POST")
    _counts["probes"] += 1


def test_it_lets_a_tenant_use_a_name_another_tenant_uses(universe: Universe) -> None:
    """Names are unique within a tenant: a conflict would tell that another tenant has one."""
    name = _bravo_object(universe).name
    response = _owner(universe).post(reverse("v1:object-list"), {"name": name}, format="json")
    assert response.status_code == 201, response.content
    assert not _changed(universe, "POST")
    _counts["probes"] += 1


def test_it_answers_alike_whether_a_new_members_address_is_known_elsewhere(
    universe: Universe,
) -> None:
    """Adding someone who is a member of bravo, and someone nobody knows, look the same to
    alpha, in the answer and in alpha's own audit log (which its auditors read)."""
    client = _owner(universe)
    url = reverse("v1:member-list")
    known = f"{Role.MEMBER}@{BRAVO}.example"
    unknown = f"nobody-{uuid.uuid4().hex[:8]}@elsewhere.example"
    answers = [
        client.post(url, {"email": e, "role": Role.MEMBER}, format="json") for e in (known, unknown)
    ]
    assert [a.status_code for a in answers] == [201, 201], [a.content for a in answers]

    # The same fields with the same values, but for those naming the member and the moment.
    def _shape(body: dict) -> dict:
        return {k: v for k, v in body.items() if k not in ("id", "email", "created_at", "user")}

    assert _shape(answers[0].json()) == _shape(answers[1].json())
    assert sorted(answers[0].json()) == sorted(answers[1].json())
    events = _owner(universe).get(reverse("v1:audit-event-list"), {"type": "member.add"}).json()
    leaves = {}
    for row in events["results"]:
        leaf = json.loads(base64.b64decode(row["leaf"]))
        leaves[row["resource_id"]] = leaf.get("details")
    assert leaves[known] == leaves[unknown], leaves
    _counts["probes"] += 1


def test_it_answers_alike_a_request_to_appoint_someone_known_elsewhere(universe: Universe) -> None:
    client = _client(universe, Role.OWNER, "person")
    url = reverse("v1:approval-list")
    known = f"{Role.OWNER}@{BRAVO}.example"
    unknown = f"nobody-{uuid.uuid4().hex[:8]}@elsewhere.example"
    answers = [
        client.post(
            url,
            {"action": "member.owner.add", "reason": "new owner", "params": {"email": e}},
            format="json",
        )
        for e in (known, unknown)
    ]
    assert [a.status_code for a in answers] == [201, 201], [a.content for a in answers]
    assert not _changed(universe, "POST")
    _counts["probes"] += 1


@pytest.mark.parametrize(
    "endpoint",
    [e for e in ENDPOINTS if e.make_object is not None and e.method == "GET"],
    ids=lambda e: f"GET-{e.route.removeprefix('v1:')}",
)
def test_it_shows_nothing_of_another_tenant_in_a_tenants_own_objects(
    universe: Universe, endpoint: Endpoint
) -> None:
    """Alpha's own objects (and their exports) mention nothing of bravo's."""
    world = universe.world
    checked = 0
    assert endpoint.make_object is not None
    for role in sorted(endpoint.roles):
        pk = endpoint.make_object(world, world.mine, role)
        response = _send(_client(universe, role, "person"), endpoint, _url(endpoint, pk), None)
        assert response.status_code in (endpoint.success, 409), response.content
        assert not _leaks(universe, response), _leaks(universe, response)
        checked += 1
    assert checked
    _counts["own_objects"] += checked

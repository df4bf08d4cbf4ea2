"""Gateway mode with each server-side key backend against its real component: 64 MiB each."""

# mypy: disable-error-code="attr-defined"

from __future__ import annotations

import contextlib
import hashlib
import importlib
import os
from collections.abc import Iterator
from io import StringIO

import pytest
from django.core.management import call_command
from rest_framework.test import APIClient

from kms_plugins.testing import BackendHarness
from tests.factories import make_membership
from vault.crypto import envelope
from vault.objects.models import ObjectVersion
from vault.tenants.models import Role
from vault.tokens.services import token_create

pytestmark = pytest.mark.django_db
SIZE = 64 * 1024 * 1024

COMPONENTS = {
    "pkcs11": ("kms_plugins.testing.softhsm", "softhsm"),
    "tpm": ("kms_plugins.testing.swtpm", "tpm"),
    "kmip": ("kms_plugins.testing.kmip_server", "kmip"),
}


@pytest.fixture(scope="module")
def harnesses(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, BackendHarness]]:
    with contextlib.ExitStack() as stack:
        made: dict[str, BackendHarness] = {}

        def get(kind: str) -> BackendHarness:
            if kind not in made:
                module = importlib.import_module(COMPONENTS[kind][0])
                reason = module.available()
                if reason is not None:
                    pytest.skip(f"[{COMPONENTS[kind][1]}] {reason}")
                made[kind] = stack.enter_context(
                    module.session_harness(tmp_path_factory.mktemp(f"gw-{kind}"))
                )
            return made[kind]

        yield get  # type: ignore[misc]


@pytest.mark.parametrize(
    "kind",
    [
        pytest.param(kind, marks=getattr(pytest.mark, marker), id=kind)
        for kind, (_, marker) in COMPONENTS.items()
    ],
)
def test_a_64_mib_gateway_object_round_trips_with_the_backend(kind, harnesses, settings) -> None:
    harness = harnesses(kind)
    settings.VAULT_KEY_BACKENDS = {
        **settings.VAULT_KEY_BACKENDS,
        "customer": {"BACKEND": kind, "OPTIONS": dict(harness.backend._options)},
    }
    membership = make_membership(role=Role.MEMBER)
    call_command(
        "tenant_bind_backend",
        "--tenant",
        membership.tenant.slug,
        "--backend",
        "customer",
        stdout=StringIO(),
    )
    issued = token_create(
        tenant=membership.tenant, name="t", role=Role.MEMBER, user=membership.user
    )
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {issued.clear}")
    obj = client.post("/api/v1/objects/", {"name": f"big-{kind}"}, format="json").json()
    data = os.urandom(SIZE)
    stored = client.put(
        f"/api/v1/objects/{obj['id']}/content/", data, content_type="application/octet-stream"
    )
    assert stored.status_code == 201, stored.content
    version = ObjectVersion.objects.get(object_id=obj["id"])
    (stanza,) = envelope.parse_header(bytes(version.header)).stanzas
    assert stanza.backend == kind
    response = client.get(f"/api/v1/objects/{obj['id']}/content/")
    assert response.status_code == 200
    digest = hashlib.sha256()
    received = 0
    for chunk in response.streaming_content:
        digest.update(chunk)
        received += len(chunk)
    assert received == SIZE
    assert digest.digest() == hashlib.sha256(data).digest()

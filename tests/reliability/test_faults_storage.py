"""The storage volume fills up: uploads answer 503 ``storage_full``, nothing partial is left,
nothing stored before is lost, and uploads work again once there is room.

The volume is real: a 1 MiB tmpfs mounted for the test (root only; the ``tmpfs`` component).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.objects.test_objects import _client, _create, _get, _put
from vault.objects.models import ObjectVersion

pytestmark = [pytest.mark.tmpfs, pytest.mark.django_db]


@pytest.fixture
def faults_storage_volume(tmp_path: Path, settings) -> Iterator[Path]:
    """A 1 MiB tmpfs as the object store, unmounted afterwards."""
    mountpoint = tmp_path / "volume"
    mountpoint.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(mountpoint)], check=True
    )
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": str(mountpoint)},
        },
    }
    # (Django's setting_changed handler makes ``storages`` read the new settings.)
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_a_full_volume_answers_503_stores_nothing_and_recovers(
    faults_storage_volume: Path,
) -> None:
    client = _client()
    first = _create(client, name="kept.bin")
    kept = os.urandom(300_000)
    assert _put(client, first["id"], kept).status_code == 201
    files_before = _files(faults_storage_volume)
    versions_before = ObjectVersion.objects.count()

    second = _create(client, name="too-big.bin")
    response = _put(client, second["id"], os.urandom(900_000))
    assert response.status_code == 503, response.content
    error = response.json()["error"]
    assert error["code"] == "storage_full"
    assert error["status"] == 503
    assert error["request_id"]
    assert int(response["Retry-After"]) > 0
    # A new version of an existing object fails the same way and keeps the old one current.
    again = _put(client, first["id"], os.urandom(900_000))
    assert again.status_code == 503
    assert again.json()["error"]["code"] == "storage_full"

    # Nothing partial: no version row, no file left behind, the object shows no content.
    assert ObjectVersion.objects.count() == versions_before
    assert _files(faults_storage_volume) == files_before
    listed = client.get(f"/api/v1/objects/{second['id']}/").json()
    assert listed["latest_version"] is None, listed
    assert _get(client, second["id"])[0].status_code == 404
    # Nothing lost.
    response, body = _get(client, first["id"])
    assert response.status_code == 200
    assert body == kept

    # Room again (the volume grown in place): the same requests now succeed, no restart needed.
    subprocess.run(
        ["mount", "-o", "remount,size=4m", "tmpfs", str(faults_storage_volume)], check=True
    )
    later = os.urandom(900_000)
    assert _put(client, second["id"], later).status_code == 201
    assert _get(client, second["id"])[1] == later
    assert _get(client, first["id"])[1] == kept

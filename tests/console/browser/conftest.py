"""Browser tests of the console: Playwright for Python driving Debian's headless Chromium.

Every test here is marked ``browser`` (a real component: skipped loudly where Chromium or
Playwright is missing, and a failure under ``VAULT_TEST_STRICT=1``). The fixtures:

- ``live_server``: pytest-django's server in a thread, on a transactional database (the audit
  tables' append-only triggers are lifted only for the flush after each test; see below). It
  brings the database: do not mark these tests ``django_db``, which would set the database up
  before the fixture that restores the triggers after the flush.
- ``browser``: one headless Chromium for the tests of this package, ``/usr/bin/chromium`` with
  the flags this machine needs. Playwright starts it with a new, empty profile
  (``--user-data-dir``).
- ``page``: a fresh browser context (no cookies) and page on the live server; relative URLs work
  (``page.goto("/console/")``). ``page_errors`` collects what the page logged as errors, CSP
  violations included.
- ``make_person(email, tenant=..., role=...)``: a user with a password and a confirmed
  authenticator app, optionally a member of a tenant.
- ``sign_in(page, person)``: signs in through the real sign-in and verification pages.
- ``screenshot(page, name)``: saves ``var/test-artifacts/console/<test name>/<name>.png``.
"""

from __future__ import annotations

import importlib
import os
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from django.db import connection, connections
from django_otp.oath import TOTP
from django_otp.plugins.otp_totp.models import TOTPDevice

from tests.conftest import CHROMIUM
from tests.factories import PASSWORD, make_membership, make_user
from vault.accounts.models import User
from vault.tenants.models import Tenant

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

# Without the networking flags Chromium keeps trying to reach Google's hosts, which a CI machine
# with a closed network refuses, many connections at a time.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path("var") / "test-artifacts" / "console"
_TRIGGERS = "vault.audit.migrations.0002_append_only_triggers"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents:
            item.add_marker(pytest.mark.browser)


# --- database ------------------------------------------------------------------------------------


@pytest.fixture
def _audit_triggers_restored(django_db_blocker: Any) -> Iterator[None]:
    """Put the append-only triggers back after the flush (torn down after the database)."""
    yield
    with django_db_blocker.unblock():
        with connection.schema_editor() as editor:
            importlib.import_module(_TRIGGERS)._install(None, editor)
        # While Playwright's event loop runs in this thread, Django's connection handler (an
        # asgiref Local) hands these tests connections of their own; close them, or the
        # PostgreSQL test database cannot be dropped at the end of the session.
        connections.close_all()


@pytest.fixture
def transactional_db(_audit_triggers_restored: None, _django_db_helper: None) -> Iterator[None]:
    """pytest-django's transactional database, able to empty the audit tables afterwards.

    The live server needs committed data, so these tests cannot roll back; Django empties every
    table after them instead, and the audit tables refuse DELETE and TRUNCATE (as they should).
    The triggers are removed just before that flush and installed again just after it.
    """
    yield
    with connection.schema_editor() as editor:
        importlib.import_module(_TRIGGERS)._remove(None, editor)


# --- browser -------------------------------------------------------------------------------------


@pytest.fixture(scope="package")
def browser() -> Iterator[Browser]:
    from playwright.sync_api import sync_playwright

    # Playwright's synchronous API keeps an event loop running in this thread, so Django takes
    # the ORM calls the tests make between browser steps for async code and refuses them. They
    # are ordinary synchronous code all the same: allow them, for this package only (the
    # variable must not reach other tests; `check --deploy` refuses it, for one).
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as playwright:
            chromium = playwright.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
            )
            yield chromium
            chromium.close()
    finally:
        if previous is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


@pytest.fixture
def page_errors() -> list[str]:
    """Errors the page logged (a blocked inline script or style shows up here)."""
    return []


@pytest.fixture
def page(browser: Browser, live_server: Any, page_errors: list[str]) -> Iterator[Page]:
    context = browser.new_context(base_url=live_server.url, locale="en-GB")
    context.set_default_timeout(15_000)
    new_page = context.new_page()
    new_page.on(
        "console",
        lambda message: page_errors.append(message.text) if message.type == "error" else None,
    )
    new_page.on("pageerror", lambda error: page_errors.append(str(error)))
    yield new_page
    context.close()


@pytest.fixture
def screenshot(request: pytest.FixtureRequest) -> Callable[[Page, str], Path]:
    """``screenshot(page, name)`` saves the whole page under the test's own directory."""
    test_name = re.sub(r"[^A-Za-z0-9_.-]+", "-", request.node.name).strip("-")
    directory = Path(request.config.rootpath) / ARTIFACTS / test_name
    shutil.rmtree(directory, ignore_errors=True)

    def save(page: Page, name: str) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        return path

    return save


# --- people --------------------------------------------------------------------------------------


@dataclass
class Person:
    """A console user with a password (``PASSWORD``) and a confirmed authenticator app."""

    user: User
    device: TOTPDevice

    @property
    def email(self) -> str:
        return self.user.email

    def totp_code(self) -> str:
        """The code the person's authenticator app shows now."""
        self.device.refresh_from_db()
        device = self.device
        totp = TOTP(
            device.bin_key, step=device.step, t0=device.t0, digits=device.digits, drift=device.drift
        )
        return f"{totp.token():0{device.digits}d}"


@pytest.fixture
def make_person(live_server: Any) -> Callable[..., Person]:
    def make(email: str, *, tenant: Tenant | None = None, role: str = "") -> Person:
        user = make_user(email=email)
        device = TOTPDevice.objects.create(user=user, name="Authenticator app", confirmed=True)
        if tenant is not None:
            assert role, "a member needs a role"
            make_membership(tenant=tenant, user=user, role=role)
        return Person(user=user, device=device)

    return make


@pytest.fixture
def sign_in() -> Callable[[Page, Person], None]:
    """Sign ``person`` in through the sign-in and verification pages, as a person would.

    A code is accepted once (django-otp refuses a replay), so sign each person in only once per
    30-second step.
    """

    def sign_in_person(page: Page, person: Person) -> None:
        page.goto("/console/login/")
        page.get_by_label("E-mail address").fill(person.email)
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Continue").click()
        page.wait_for_url("**/console/login/verify/**")
        page.get_by_label("Code from your authenticator app").fill(person.totp_code())
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_load_state()
        assert "/console/login/" not in page.url, page.content()

    return sign_in_person

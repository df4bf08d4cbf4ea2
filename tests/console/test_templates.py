"""Every console page works under the CSP, labels its inputs and protects its forms."""

from __future__ import annotations

from html.parser import HTMLParser

import pytest
from django.contrib.staticfiles import finders
from django.urls import reverse

from tests.console.conftest import password_step
from vault.accounts.models import User
from vault.accounts.services import password_setup_url


class PageParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.inputs: list[dict[str, str | None]] = []
        self.labels: set[str] = set()
        self.forms: list[dict[str, str | None]] = []
        self.csrf_fields = 0
        self.scripts = 0
        self.style_attributes = 0
        self.stylesheets: list[str | None] = []

    def handle_starttag(self, tag, attrs):
        named = dict(attrs)
        if "style" in named:
            self.style_attributes += 1
        if tag == "script":
            self.scripts += 1
        elif tag == "label":
            self.labels.add(named.get("for") or "")
        elif tag == "form":
            self.forms.append(named)
        elif tag == "input":
            if named.get("name") == "csrfmiddlewaretoken":
                self.csrf_fields += 1
            else:
                self.inputs.append(named)
        elif tag == "link" and named.get("rel") == "stylesheet":
            self.stylesheets.append(named.get("href"))


def check_page(response) -> PageParser:
    assert response.status_code == 200
    assert "script-src 'self'" in response["Content-Security-Policy"]
    parser = PageParser()
    parser.feed(response.content.decode())
    assert parser.scripts == 0
    assert parser.style_attributes == 0
    assert parser.stylesheets == ["/static/console/console.css"]
    post_forms = [f for f in parser.forms if (f.get("method") or "").lower() == "post"]
    assert len(post_forms) == len(parser.forms)
    assert parser.csrf_fields == len(post_forms)
    for field in parser.inputs:
        if field.get("type") == "hidden":
            continue
        assert field.get("id") in parser.labels, field
        assert field.get("autocomplete"), field
    return parser


@pytest.mark.django_db
def test_it_serves_the_stylesheet():
    assert finders.find("console/console.css")


@pytest.mark.django_db
def test_it_builds_the_sign_in_pages_for_the_csp(client, user):
    parser = check_page(client.get(reverse("console:login")))
    autocompletes = {field.get("autocomplete") for field in parser.inputs}
    assert autocompletes == {"username", "current-password"}

    password_step(client)
    parser = check_page(client.get(reverse("console:enrol")))
    assert [field.get("autocomplete") for field in parser.inputs] == ["one-time-code"]


@pytest.mark.django_db
def test_it_builds_the_verify_page_for_the_csp(client, user, device):
    password_step(client)
    parser = check_page(client.get(reverse("console:verify")))
    assert [field.get("autocomplete") for field in parser.inputs] == ["one-time-code"]


@pytest.mark.django_db
def test_it_builds_the_account_pages_for_the_csp(verified_client):
    check_page(verified_client.get(reverse("console:home")))
    check_page(verified_client.get(reverse("console:password_change")))
    check_page(verified_client.get(reverse("console:recovery_codes")))
    check_page(verified_client.post(reverse("console:recovery_codes")))


@pytest.mark.django_db
def test_it_builds_the_password_setup_page_for_the_csp(client):
    user = User.objects.create_user(email="bob@example.com")
    response = client.get(password_setup_url(None, user), follow=True)
    parser = check_page(response)
    visible = [f.get("autocomplete") for f in parser.inputs if f.get("type") != "hidden"]
    assert visible == ["new-password", "new-password"]

"""Schemathesis against the running service: every operation of docs/openapi.yaml, a real token.

The service is the one ``make run`` starts (``manage.py serve``: gunicorn, SQLite, the local
keystore, tasks in-process) in a private data directory; the token is the demo owner's, which acts
for a person, so the person-only operations (waivers, attestations, approvals) are reachable too.
Before the run, a few resources of every kind are made through the API so that generated paths
reach real objects and not only 404s.

Two runs, each with every check below (a 5xx, a body that breaks its declared schema, an
undocumented status code, content type or header all fail):

* every operation on its own, one test each: schemathesis' examples and fuzzing phases, positive
  and negative inputs, and in the torture run its coverage phase too (deterministic boundary and
  negative values: some thousand requests more);
* linked sequences: the state machine schemathesis builds from the links it infers between
  operations (create an object, then read, write and delete it).

What is kept out, and why: the run never revokes the token it runs with (``DELETE
/api/v1/tokens/{id}/`` on that id is drawn and dropped), since everything after would be a 401.
Nothing else needs excluding: the last owner cannot be removed or demoted (409), loosening the
policy and destroying keys need approvals by other people (409 or a pending request). A request
line longer than gunicorn's limit gets gunicorn's own 414 page before the application sees it;
for that answer only "no 5xx" is checked.

Size: ``VAULT_TORTURE=1`` runs 100 examples per operation and 100 sequences of up to 20 calls;
the default (the CI size) 5 examples and 10 sequences of up to 6. The counts go to
``$VAULT_TORTURE_SUMMARY_DIR/schemathesis.json`` when that is set, and into the terminal summary
as one line.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hypothesis
import hypothesis.errors
import hypothesis.strategies as st
import pytest
import schemathesis
from hypothesis import HealthCheck
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.core.helpers import free_port
from tests.core.test_serve import ROOT, Server

pytestmark = pytest.mark.slow

TORTURE = os.environ.get("VAULT_TORTURE") == "1"
EXAMPLES = 100 if TORTURE else 5
SEQUENCES = 100 if TORTURE else 10
STEPS = 20 if TORTURE else 6
SCHEMA_FILE = ROOT / "docs" / "openapi.yaml"
TOKENS_ITEM = "/api/v1/tokens/{id}/"

CHECKS = [
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
]
# gunicorn's default limit_request_line: a longer request line gets its own 414 (an HTML page)
# before Django sees the request, so only "no 5xx" applies to it; the schema describes the app.
REQUEST_LINE_LIMIT = 4094


def _checks_for(response: schemathesis.Response) -> list[Any]:
    request = response.request
    line = f"{request.method} {request.path_url} HTTP/1.1"
    if response.status_code == 414 and len(line.encode()) > REQUEST_LINE_LIMIT:
        return [not_a_server_error]
    return CHECKS


@dataclass
class Tally:
    """What the runs did, for the summary: per run, operations, requests, statuses, failures."""

    operations: dict[str, set[str]] = field(default_factory=dict)
    requests: Counter[str] = field(default_factory=Counter)
    statuses: Counter[int] = field(default_factory=Counter)
    server_errors: list[str] = field(default_factory=list)
    violations: dict[str, set[str]] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)

    def record(self, run: str, label: str, status: int) -> None:
        self.operations.setdefault(run, set()).add(label)
        self.requests[run] += 1
        self.statuses[status] += 1
        if status >= 500:
            self.server_errors.append(f"{label} -> {status}")

    def fail(self, run: str, label: str, error: BaseException) -> None:
        found = error.exceptions if isinstance(error, FailureGroup) else [error]
        titles = {getattr(item, "title", None) or type(item).__name__ for item in found}
        self.violations.setdefault(run, set()).update(f"{label}: {title}" for title in titles)

    def summary(self) -> dict[str, Any]:
        tested = set().union(*self.operations.values()) if self.operations else set()
        return {
            "mode": "torture" if TORTURE else "ci",
            "examples_per_operation": EXAMPLES,
            "stateful_sequences": SEQUENCES,
            "operations_tested": len(tested),
            "operations_by_run": {run: len(ops) for run, ops in sorted(self.operations.items())},
            "requests": sum(self.requests.values()),
            "requests_by_run": dict(sorted(self.requests.items())),
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "server_errors": len(self.server_errors),
            "violations": sum(len(v) for v in self.violations.values()),
            "violation_list": sorted(set().union(*self.violations.values()))
            if self.violations
            else [],
            "seconds": round(time.monotonic() - self.started, 1),
        }


@dataclass
class Service:
    """The running instance, its token and the resources made before the run."""

    server: Server
    base_url: str
    token: str
    own_token_id: int
    # Collection path (``/api/v1/objects/``) -> ids that operations other than DELETE may use,
    # and ids that DELETE may use (so that deletes do not take the others' resources away).
    keep: dict[str, list[Any]]
    spare: dict[str, list[Any]]


def _api(
    base_url: str,
    token: str,
    method: str,
    path: str,
    body: Any = None,
    *,
    raw: bytes | None = None,
    content_type: str = "application/json",
) -> tuple[int, Any]:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(f"{base_url}{path}", data=data, method=method)  # noqa: S310
    request.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        request.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310
            payload = response.read()
            status = response.status
    except urllib.error.HTTPError as exc:
        payload, status = exc.read(), exc.code
    try:
        return status, json.loads(payload) if payload else None
    except ValueError:
        return status, payload


def _created(result: tuple[int, Any], what: str, key: str = "id") -> Any:
    status, body = result
    assert status in (200, 201, 202), f"seeding {what}: {status} {body!r}"
    return body[key]


def _seed(base_url: str, token: str) -> tuple[dict[str, list[Any]], dict[str, list[Any]]]:
    """Make resources of every kind the API can make with one person's owner token."""
    from compliance.catalog import REQUIREMENTS
    from compliance.checks import all_checks

    def call(method: str, path: str, body: Any = None, **kwargs: Any) -> tuple[int, Any]:
        return _api(base_url, token, method, path, body, **kwargs)

    keep: dict[str, list[Any]] = {}
    spare: dict[str, list[Any]] = {}

    def add(collection: str, value: Any, *, disposable: bool = False) -> None:
        (spare if disposable else keep).setdefault(collection, []).append(value)

    for n in range(4):
        obj = _created(call("POST", "/api/v1/objects/", {"name": f"seed-{n}.txt"}), "an object")
        _created(
            call(
                "PUT",
                f"/api/v1/objects/{obj}/content/",
                raw=f"seed content {n}".encode(),
                content_type="text/plain",
            ),
            "a version",
            key="number",
        )
        add("/api/v1/objects/", obj, disposable=n >= 2)
        upload = _created(
            call("POST", "/api/v1/uploads/", {"object": obj, "length": 20}), "an upload"
        )
        add("/api/v1/uploads/", upload, disposable=n >= 2)
        member = {"email": f"seed-{n}@elsewhere.example", "role": "member"}
        add("/api/v1/members/", _created(call("POST", "/api/v1/members/", member), "a member"))
        child = {"name": f"seed-{n}", "role": "member"}
        add(
            "/api/v1/tokens/",
            _created(call("POST", "/api/v1/tokens/", child), "a token"),
            disposable=n >= 2,
        )
    run = _created(call("POST", "/api/v1/compliance/runs/"), "a compliance run")
    add("/api/v1/compliance/runs/", run)
    check_id = all_checks()[0].id
    for n in range(2):
        waiver = {
            "check_id": check_id,
            "justification": f"seeded for the schemathesis run {n}",
            "days": 30,
        }
        add(
            "/api/v1/compliance/waivers/",
            _created(call("POST", "/api/v1/compliance/waivers/", waiver), "a waiver"),
        )
    attestation = {
        "requirement": next(iter(REQUIREMENTS)),
        "kind": "other",
        "statement": "seeded for the schemathesis run",
        "valid_days": 30,
    }
    add(
        "/api/v1/compliance/attestations/",
        _created(call("POST", "/api/v1/compliance/attestations/", attestation), "an attestation"),
    )
    # Pending for good: the only person of the tenant asked, and a requester cannot approve.
    approvals: dict[str, dict[str, Any]] = {
        "key.destroy": {},
        "tenant.policy.loosen": {"deduplicate": True},
    }
    for action, params in approvals.items():
        body = {"action": action, "reason": "seeded for the schemathesis run", "params": params}
        add("/api/v1/approvals/", _created(call("POST", "/api/v1/approvals/", body), action))
    add(
        "/api/v1/keys/campaigns/",
        _created(call("POST", "/api/v1/keys/campaigns/", {}), "a rotation campaign"),
    )
    # What only the service makes (audit events, certificates): read back from the lists.
    for collection in ("/api/v1/audit/events/", "/api/v1/keys/certificates/"):
        status, body = call("GET", collection)
        assert status == 200, f"listing {collection}: {status} {body!r}"
        keep[collection] = [row["id"] for row in body["results"][:5]]
    return keep, spare


@pytest.fixture(scope="module")
def schemathesis_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """``manage.py serve`` on a fresh data directory, with resources of every kind made."""
    port = free_port()
    server = Server(tmp_path_factory.mktemp("schemathesis"), port)
    try:
        token = server.token()
        server.wait_ready()
        base_url = f"http://127.0.0.1:{port}"
        status, tokens = _api(base_url, token, "GET", "/api/v1/tokens/")
        assert status == 200
        (own,) = [row["id"] for row in tokens["results"] if token.startswith(row["prefix"])]
        keep, spare = _seed(base_url, token)
        yield Service(server, base_url, token, own, keep, spare)
    finally:
        server.stop()
    assert not [line for line in server.lines if "Traceback" in line], "\n".join(server.lines)


@pytest.fixture(scope="module")
def schemathesis_tally(request: pytest.FixtureRequest) -> Iterator[Tally]:
    """Collects both runs' counts; writes the summary when the module is done."""
    tally = Tally()
    yield tally
    summary = tally.summary()
    directory = os.environ.get("VAULT_TORTURE_SUMMARY_DIR")
    if directory:
        Path(directory).mkdir(parents=True, exist_ok=True)
        (Path(directory) / "schemathesis.json").write_text(json.dumps(summary, indent=2) + "\n")
    line = (
        f"schemathesis ({summary['mode']}): {summary['operations_tested']} operations, "
        f"{summary['requests']} requests, {summary['server_errors']} 5xx, "
        f"{summary['violations']} schema violations"
    )
    # Past output capture, as capsys.disabled() does, so the line shows in a passing run too.
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capture is None:  # pragma: no cover (pytest without them)
        print(line)
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line("")
        reporter.write_line(line)


def _collection(path: str) -> str | None:
    """``/api/v1/objects/{id}/content/`` -> ``/api/v1/objects/``; None without an ``{id}``."""
    head, marker, _ = path.partition("{id}")
    return head if marker else None


def _config(**extra: Any) -> schemathesis.Config:
    return schemathesis.Config.from_dict(
        {
            "request-timeout": 60,
            "generation": {
                "mode": "all",
                "max-examples": EXAMPLES,
                "database": "none",
                "with-security-parameters": False,
            },
            "phases": {
                "examples": {"enabled": True},
                # The deterministic boundary and negative values: some thousand requests, so the
                # torture run only; the CI run draws its negative inputs in the fuzzing phase.
                "coverage": {"enabled": TORTURE},
                "fuzzing": {"enabled": True},
                "stateful": {"enabled": True, "max-steps": STEPS},
            },
            **extra,
        }
    )


# Loaded at collection, so that every operation is its own test; the service (its address, token
# and seeded ids) is there only when the tests run, so the path hook reads it through ACTIVE.
schema = schemathesis.openapi.from_path(SCHEMA_FILE, config=_config())
ACTIVE: list[Service] = []


def _existing_ids(operation: schemathesis.APIOperation) -> list[Any]:
    collection = _collection(operation.path)
    if collection is None or not ACTIVE:
        return []
    service = ACTIVE[-1]
    pool = service.spare if operation.method.upper() == "DELETE" else service.keep
    return list(pool.get(collection) or service.keep.get(collection) or [])


@schema.hook
def flatmap_path_parameters(
    context: schemathesis.HookContext, path_parameters: dict[str, Any]
) -> st.SearchStrategy[dict[str, Any]]:
    """Half of the drawn paths name a resource that exists, so the run gets past the 404."""
    ids = _existing_ids(context.operation) if context.operation is not None else []
    # In a sequence the path may come whole from a link (None here): keep it as it is.
    if not ids or not isinstance(path_parameters, dict) or "id" not in path_parameters:
        return st.just(path_parameters)
    return st.one_of(
        st.just(path_parameters),
        st.sampled_from(ids).map(lambda real: {**path_parameters, "id": real}),
    )


@pytest.fixture(scope="module")
def schemathesis_live(schemathesis_service: Service) -> Iterator[Service]:
    """The service, made visible to the path hook for the module's tests."""
    ACTIVE.append(schemathesis_service)
    yield schemathesis_service
    ACTIVE.remove(schemathesis_service)


def _auth(service: Service) -> dict[str, str]:
    return {"Authorization": f"Bearer {service.token}"}


def _guard(service: Service, case: schemathesis.Case) -> None:
    """Drop the one request that would end the run: revoking the token it runs with."""
    if (
        case.operation.method.upper() == "DELETE"
        and case.operation.path == TOKENS_ITEM
        and str((case.path_parameters or {}).get("id")) == str(service.own_token_id)
    ):
        hypothesis.reject()


@schema.parametrize()
@hypothesis.settings(
    deadline=None,
    suppress_health_check=list(HealthCheck),
    max_examples=EXAMPLES,
    database=None,
)
def test_it_answers_every_operation_without_a_5xx_or_a_schema_violation(
    case: schemathesis.Case, schemathesis_live: Service, schemathesis_tally: Tally
) -> None:
    service = schemathesis_live
    _guard(service, case)
    response = case.call(base_url=service.base_url, headers=_auth(service))
    schemathesis_tally.record("operations", case.operation.label, response.status_code)
    try:
        case.validate_response(response, checks=_checks_for(response))
    except (FailureGroup, AssertionError) as exc:
        schemathesis_tally.fail("operations", case.operation.label, exc)
        raise


def test_it_keeps_to_the_schema_through_linked_sequences(
    schemathesis_live: Service, schemathesis_tally: Tally
) -> None:
    service, tally = schemathesis_live, schemathesis_tally
    base: type[Any] = schema.as_state_machine()

    class Machine(base):
        def before_call(self, case: schemathesis.Case) -> None:
            _guard(service, case)

        def get_call_kwargs(self, case: schemathesis.Case) -> dict[str, Any]:
            return {"base_url": service.base_url, "headers": _auth(service)}

        def validate_response(
            self,
            response: schemathesis.Response,
            case: schemathesis.Case,
            additional_checks: Any = None,
            **kwargs: Any,
        ) -> None:
            tally.record("sequences", case.operation.label, response.status_code)
            try:
                case.validate_response(
                    response, checks=_checks_for(response), transport_kwargs=kwargs or None
                )
            except (FailureGroup, AssertionError) as exc:
                tally.fail("sequences", case.operation.label, exc)
                raise

        def teardown(self) -> None:
            completed.append(1)

    # As schemathesis' own runner does: generation only (a replay against a server whose state
    # has moved on is not the same test), and a run that Hypothesis stops as flaky because a
    # response no longer fills the bundle it did before is started again, not reported. A flaky
    # stop after a failed check is still a failure: the tally has recorded it.
    completed: list[int] = []
    for _attempt in range(5):
        if len(completed) >= SEQUENCES:
            break
        try:
            Machine.run(
                settings=hypothesis.settings(
                    max_examples=SEQUENCES - len(completed),
                    stateful_step_count=STEPS,
                    phases=[hypothesis.Phase.generate],
                    deadline=None,
                    suppress_health_check=list(HealthCheck),
                    database=None,
                )
            )
        except hypothesis.errors.Flaky:
            if tally.server_errors or tally.violations.get("sequences"):
                raise
    assert tally.requests["sequences"] > 0, "the state machine made no request"
    assert not tally.server_errors, tally.server_errors
    assert not tally.violations.get("sequences"), tally.violations


def test_it_tested_every_operation_and_found_nothing(schemathesis_tally: Tally) -> None:
    """Runs last: the first run did reach every operation, and neither run found a failure."""
    documented: set[str] = set()
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result
        documented.add(result.ok().label)
    tested = schemathesis_tally.operations.get("operations", set())
    assert documented - tested == set(), f"operations never called: {documented - tested}"
    assert not schemathesis_tally.server_errors, schemathesis_tally.server_errors
    assert not schemathesis_tally.violations, schemathesis_tally.violations

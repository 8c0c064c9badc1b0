"""Schemathesis against the coordinator's own ``/openapi.json`` (a real coordinator on a real mosquitto).

With an admin token: every generated request (valid and invalid run configs, odd run ids) gets a
response that conforms to the documented schema and status codes, and never a 5xx. Without a
token: the same, and every operation except ``/healthz`` answers 401. Examples per operation are
bounded (``MAX_EXAMPLES``) so the module stays within the default suite's budget.
"""

from __future__ import annotations

import pytest
import schemathesis
from brokers import MosquittoBroker
from coordinator_harness import bearer, make_coordinator
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from cloud.app import create_app

MAX_EXAMPLES = 25
FUZZ_SETTINGS = settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, derandomize=True,
                         suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory):
    base = tmp_path_factory.mktemp("fuzz")
    broker = MosquittoBroker(base / "mosquitto").start()
    # broker_admin = none: the fuzzed enroll endpoint issues bundles without a dynsec broker (tested elsewhere)
    coordinator = make_coordinator(broker.url, base / "state", data_roots=[base / "data"], broker_admin="none")
    try:
        app = create_app(coordinator=coordinator)
        yield schemathesis.openapi.from_asgi("/openapi.json", app), bearer(coordinator, "admin")
    finally:
        coordinator.close()
        broker.stop()


@pytest.fixture(scope="module")
def api_schema(fuzzed):
    return fuzzed[0]


@pytest.fixture(scope="module")
def admin_headers(fuzzed):
    return fuzzed[1]


schema = schemathesis.pytest.from_fixture("api_schema")


def _has_authorization(case) -> bool:
    return any(k.lower() == "authorization" for k in case.headers or {})


@schema.parametrize()
@FUZZ_SETTINGS
def test_with_an_admin_token_every_answer_is_documented_and_none_is_a_server_error(case, admin_headers):
    # a negative case may carry a mutated Authorization header: keep it (it must be refused)
    case.call_and_validate(headers=None if _has_authorization(case) else admin_headers)


@schema.parametrize()
@FUZZ_SETTINGS
def test_without_a_token_everything_but_healthz_is_refused(case):
    if case.headers:
        case.headers = {k: v for k, v in case.headers.items() if k.lower() != "authorization"}
    response = case.call()
    case.validate_response(response, checks=[not_a_server_error])
    if case.method.upper() != case.operation.method.upper():  # schemathesis also tries undocumented methods
        assert response.status_code == 405, (case.method, case.path, response.text)
    elif case.path == "/healthz":
        assert response.status_code == 200
    else:
        assert response.status_code == 401, (case.method, case.path, response.text)
        assert response.headers["www-authenticate"] == ["Bearer"]

"""Bearer-token access control of the REST API, against a coordinator on a real mosquitto.

The endpoints checked are read from the app's own OpenAPI document, so an endpoint added later is
covered without editing this file: every operation except /healthz must refuse a request without a
token (401 + ``WWW-Authenticate: Bearer``), GETs need viewer, every other method operator or more.
"""

from __future__ import annotations

import hashlib
import sqlite3

import pytest
from coordinator_harness import bearer, make_coordinator
from fastapi.testclient import TestClient

from cloud.access_tokens import ROLES, TokenStore, role_allows
from cloud.app import create_app

OPEN_PATHS = {"/healthz"}
RUN = {"rounds": 1, "clients_per_round": 1}


@pytest.fixture
def app_and_coordinator(mosquitto, tmp_path):
    coordinator = make_coordinator(mosquitto.url, tmp_path / "state")
    try:
        yield create_app(coordinator=coordinator), coordinator
    finally:
        coordinator.close()


def operations(app) -> list[tuple[str, str]]:
    """(method, path with every {param} filled) for each operation of the OpenAPI document."""
    spec = TestClient(app).get("/openapi.json").json()
    out = []
    for path, item in spec["paths"].items():
        for method in item:
            out.append((method.upper(), path.replace("{run_id}", "run-0000").replace("{device_id}", "dev-x")))
    return out


def needed_role(method: str, path: str) -> str:
    if path.startswith("/api/tokens") or (path.startswith("/api/devices") and method != "GET"):
        return "admin"
    return "viewer" if method == "GET" else "operator"


def test_every_operation_but_healthz_refuses_a_request_without_a_token(app_and_coordinator):
    app, _ = app_and_coordinator
    ops = operations(app)
    assert ("POST", "/api/runs") in ops and ("GET", "/api/devices") in ops
    with TestClient(app) as client:
        for method, path in ops:
            response = client.request(method, path, json=RUN if method == "POST" else None)
            if path in OPEN_PATHS:
                assert response.status_code == 200, (method, path)
                continue
            assert response.status_code == 401, (method, path, response.text)
            assert response.headers["www-authenticate"] == "Bearer"
            assert "Authorization: Bearer" in response.json()["detail"]


@pytest.mark.parametrize("header", [
    "Bearer nonsense", "Basic dXNlcjpwYXNz", "Bearer", "bearer feddst_000000000000_" + "A" * 43,
    "Bearer feddst_zzzzzzzzzzzz_" + "A" * 43,
])
def test_malformed_unknown_or_non_bearer_credentials_are_401(app_and_coordinator, header):
    app, coordinator = app_and_coordinator
    bearer(coordinator, "admin")  # a real token exists; the ones sent are not it
    with TestClient(app) as client:
        for method, path in [("GET", "/api/runs"), ("POST", "/api/runs")]:
            response = client.request(method, path, json=RUN, headers={"Authorization": header})
            assert response.status_code == 401, (header, response.text)
            assert response.headers["www-authenticate"] == "Bearer"


def test_right_id_with_a_wrong_secret_is_401(app_and_coordinator):
    app, coordinator = app_and_coordinator
    token = bearer(coordinator, "admin")["Authorization"].removeprefix("Bearer ")
    prefix, token_id, secret = token.split("_", 2)
    forged = f"{prefix}_{token_id}_{'B' if secret[0] != 'B' else 'C'}{secret[1:]}"
    with TestClient(app) as client:
        assert client.get("/api/runs", headers={"Authorization": f"Bearer {token}"}).status_code == 200
        assert client.get("/api/runs", headers={"Authorization": f"Bearer {forged}"}).status_code == 401


@pytest.mark.parametrize("role", ROLES)
def test_each_role_gets_exactly_what_it_may(app_and_coordinator, role):
    app, coordinator = app_and_coordinator
    with TestClient(app, headers=bearer(coordinator, role)) as client:
        for method, path in operations(app):
            if path in OPEN_PATHS:
                continue
            response = client.request(method, path, json=RUN if method == "POST" else None)
            if ROLES.index(role) >= ROLES.index(needed_role(method, path)):
                assert response.status_code not in (401, 403), (role, method, path, response.text)
            else:
                assert response.status_code == 403, (role, method, path, response.text)
                assert f"needs role {needed_role(method, path)}" in response.json()["detail"]
        if role != "viewer":  # operator and admin can drive a run end to end
            created = client.post("/api/runs", json=RUN)
            assert created.status_code == 201
            assert client.post(f"/api/runs/{created.json()['id']}/stop").json()["status"] == "stopped"


def test_role_order_is_viewer_operator_admin():
    expected = {("viewer", "viewer"), ("operator", "viewer"), ("operator", "operator"), ("admin", "viewer"),
                ("admin", "operator"), ("admin", "admin")}
    assert {(h, n) for h in ROLES for n in ROLES if role_allows(h, n)} == expected
    assert not role_allows("root", "viewer")


def test_revoked_token_is_refused_on_the_next_request_even_when_revoked_by_another_connection(
        app_and_coordinator):
    app, coordinator = app_and_coordinator
    headers = bearer(coordinator, "operator")
    token_id = headers["Authorization"].split("_")[1]
    with TestClient(app, headers=headers) as client:
        assert client.get("/api/runs").status_code == 200
        other = TokenStore(coordinator.store.state_dir)  # as `feddst cloud token revoke` does, from outside
        other.revoke(token_id)
        other.close()
        assert client.get("/api/runs").status_code == 401
        assert client.post("/api/runs", json=RUN).status_code == 401


def test_only_the_hash_of_the_secret_is_stored(app_and_coordinator):
    _, coordinator = app_and_coordinator
    token = bearer(coordinator, "admin")["Authorization"].removeprefix("Bearer ")
    secret = token.split("_", 2)[2]
    db = coordinator.store.state_dir / "coordinator.sqlite3"
    con = sqlite3.connect(db)
    rows = con.execute("SELECT * FROM api_tokens").fetchall()
    con.close()
    assert hashlib.sha256(secret.encode()).hexdigest() in {v for row in rows for v in row}
    assert not any(secret in str(v) for row in rows for v in row)
    assert secret.encode() not in b"".join(p.read_bytes() for p in db.parent.glob("coordinator.sqlite3*"))
    assert coordinator.tokens.get(token.split("_")[1]).last_used_at is None  # not used yet


def test_openapi_documents_the_bearer_scheme_and_the_error_responses(app_and_coordinator):
    app, _ = app_and_coordinator
    spec = TestClient(app).get("/openapi.json").json()
    scheme = spec["components"]["securitySchemes"]["BearerToken"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    assert "feddst cloud token create" in scheme["description"]
    error_ref = {"$ref": "#/components/schemas/ErrorOut"}
    for path, item in spec["paths"].items():
        for method, op in item.items():
            if path in OPEN_PATHS:
                assert "security" not in op
                continue
            assert op["security"] == [{"BearerToken": []}], (method, path)
            for code in ("401", "403"):
                assert op["responses"][code]["content"]["application/json"]["schema"] == error_ref
    runs = spec["paths"]["/api/runs/{run_id}/start"]["post"]["responses"]
    assert {"401", "403", "404", "409", "422", "503"} <= set(runs)
    assert "422" in spec["paths"]["/api/runs"]["post"]["responses"]
    assert set(spec["components"]["schemas"]["ErrorOut"]["properties"]) == {"detail"}
    assert not [name for name in spec["components"]["schemas"] if name.endswith(("-Input", "-Output"))]


@pytest.mark.parametrize("body", [b'{"rounds": ', b"\xff\xfe not utf-8 \x80", b"[1, 2"])
def test_an_unparsable_body_is_refused_before_it_is_judged(app_and_coordinator, body):
    """FastAPI parses JSON before it checks dependencies: the token must still come first."""
    app, coordinator = app_and_coordinator
    roles = {role: bearer(coordinator, role) for role in ROLES}
    with TestClient(app) as client:
        def post(headers: dict[str, str]):
            return client.post("/api/runs", content=body, headers={"content-type": "application/json", **headers})

        anonymous = post({})
        assert anonymous.status_code == 401 and anonymous.headers["www-authenticate"] == "Bearer"
        assert post(roles["viewer"]).status_code == 403
        judged = post(roles["operator"])
        assert judged.status_code == 422
        assert judged.json()["detail"][0]["loc"] == ["body"] and "JSON" in judged.json()["detail"][0]["msg"]


def test_a_wrong_method_is_405_listing_every_method_of_the_path(app_and_coordinator):
    app, _ = app_and_coordinator
    with TestClient(app) as client:
        response = client.delete("/api/runs")
        assert response.status_code == 405 and response.headers["allow"] == "GET, POST"
        assert client.put("/api/runs/run-1/start").headers["allow"] == "POST"

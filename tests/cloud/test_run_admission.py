"""Run configs over REST: strict numbers, eval data only under the data roots, checked at creation.

One coordinator on a real mosquitto for the module (``data_roots`` = one temp directory holding an
.npz of the digits data); a second coordinator without data roots where that matters.
"""

from __future__ import annotations

import numpy as np
import pytest
from brokers import MosquittoBroker
from coordinator_harness import bearer, make_coordinator, wait_until
from fastapi.testclient import TestClient

from cloud.app import create_app
from datasources import load_dataset


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base = tmp_path_factory.mktemp("admission")
    root, outside = base / "data", base / "outside"
    root.mkdir()
    outside.mkdir()
    digits = load_dataset("digits")
    for directory in (root, outside):
        np.savez(directory / "digits.npz", x_train=digits.x_train, y_train=digits.y_train, x_test=digits.x_test,
                 y_test=digits.y_test)
    (root / "escape.npz").symlink_to(outside / "digits.npz")
    broker = MosquittoBroker(base / "mosquitto").start()
    coordinator = make_coordinator(broker.url, base / "state", data_roots=[root])
    try:
        with TestClient(create_app(coordinator=coordinator), headers=bearer(coordinator, "operator")) as client:
            yield client, root, outside
    finally:
        coordinator.close()
        broker.stop()


def npz_eval(path) -> dict:
    return {"eval": {"dataset": "npz", "data_dir": str(path), "clients": 4, "samples_per_class": 10}}


def field_error(response) -> tuple[list, str]:
    assert response.status_code == 422, response.text
    (error,) = response.json()["detail"]
    return error["loc"], error["msg"]


def test_eval_data_under_a_data_root_is_accepted(world):
    client, root, _ = world
    response = client.post("/api/runs", json=npz_eval(root / "digits.npz"))
    assert response.status_code == 201, response.text
    assert response.json()["config"]["eval"]["data_dir"] == str(root / "digits.npz")
    via_dotdot = client.post("/api/runs", json=npz_eval(root / "sub" / ".." / "digits.npz"))
    assert via_dotdot.status_code == 201, via_dotdot.text


@pytest.mark.parametrize("where", ["outside", "missing-outside", "dotdot", "symlink-out", "etc", "relative"])
def test_paths_outside_the_data_roots_are_422_naming_the_setting_without_revealing_existence(world, where):
    client, root, outside = world
    path = {"outside": outside / "digits.npz", "missing-outside": outside / "nothing-here.npz",
            "dotdot": root / ".." / "outside" / "digits.npz", "symlink-out": root / "escape.npz",
            "etc": "/etc/passwd", "relative": "../../../../etc/shadow"}[where]
    before = len(client.get("/api/runs").json())
    loc, msg = field_error(client.post("/api/runs", json=npz_eval(path)))
    assert loc == ["body", "eval", "data_dir"] and "data_roots" in msg and str(root) in msg
    assert len(client.get("/api/runs").json()) == before  # nothing stored
    # the same answer whether or not the path exists or is readable: no file-system oracle
    reference = client.post("/api/runs", json=npz_eval(outside / "nothing-here.npz")).json()
    assert client.post("/api/runs", json=npz_eval(path)).json() == reference


def test_unloadable_data_under_a_root_is_422_at_creation(world):
    client, root, _ = world
    (root / "garbage.npz").write_bytes(b"not a zip")
    for path, words in [(root / "missing.npz", "no such file"), (root / "garbage.npz", "not a readable .npz")]:
        loc, msg = field_error(client.post("/api/runs", json=npz_eval(path)))
        assert loc == ["body", "eval"] and words in msg


@pytest.mark.parametrize("raw, field", [
    ('{"lr": NaN}', "lr"), ('{"round_timeout_s": Infinity}', "round_timeout_s"), ('{"prox_mu": Infinity}', "prox_mu"),
    ('{"device_wait_s": Infinity}', "device_wait_s"), ('{"weight_decay": -Infinity}', "weight_decay"),
    ('{"sparsity": NaN}', "sparsity"), ('{"eval": {"beta": NaN, "partition": "dirichlet"}}', "beta"),
])
def test_non_finite_numbers_are_422_not_500(world, raw, field):
    client, _, _ = world
    response = client.post("/api/runs", content=raw, headers={"content-type": "application/json"})
    loc, msg = field_error(response)
    assert loc[-1] == field and "finite" in msg


@pytest.mark.parametrize("body, field", [
    ({"rounds": True}, "rounds"), ({"clients_per_round": False}, "clients_per_round"), ({"seed": True}, "seed"),
    ({"rounds": "5"}, "rounds"), ({"rounds": 2.0}, "rounds"), ({"lr": True}, "lr"),
    ({"eval": {"clients": True}}, "clients"), ({"select": {"min_cores": True}}, "min_cores"),
    ({"eval": {"clients": 10**9}}, "clients"),
])
def test_booleans_strings_and_floats_for_integers_are_422(world, body, field):
    client, _, _ = world
    loc, _ = field_error(client.post("/api/runs", json=body))
    assert loc[-1] == field


def test_an_empty_config_is_created_on_the_defaults(world):
    client, _, _ = world
    response = client.post("/api/runs", json={})
    assert response.status_code == 201, response.text
    config = response.json()["config"]
    assert (config["model"], config["rounds"], config["clients_per_round"], config["eval"]) == (
        "digits_cnn", 200, 20, None)


@pytest.mark.parametrize("body, loc, words", [
    ({"clients_per_round": 4, "quorum": 3, "min_devices": 2}, ["body"], "quorum (3) exceeds min_devices (2)"),
    ({"model": "mnist_cnn", "eval": {"dataset": "digits"}}, ["body", "eval"], "expects inputs"),
    ({"eval": {"dataset": "digits", "clients": 1000, "samples_per_class": 100}}, ["body", "eval"],
     "pathological partition cannot be satisfied"),
    ({"eval": {"dataset": "mnist"}}, ["body", "eval"], "needs data_dir"),
    ({"eval": {}}, ["body", "eval"], "pathological partition cannot be satisfied"),  # 400 clients x 40 > 1438
])
def test_configs_this_coordinator_cannot_run_are_422_saying_why(world, body, loc, words):
    client, _, _ = world
    before = len(client.get("/api/runs").json())
    got_loc, msg = field_error(client.post("/api/runs", json=body))
    assert got_loc == loc and words in msg
    assert len(client.get("/api/runs").json()) == before


def test_without_data_roots_only_digits_can_be_evaluated(mosquitto, tmp_path):
    coordinator = make_coordinator(mosquitto.url, tmp_path / "state")
    try:
        with TestClient(create_app(coordinator=coordinator), headers=bearer(coordinator, "operator")) as client:
            loc, msg = field_error(client.post("/api/runs", json={"eval": {"dataset": "mnist",
                                                                            "data_dir": "/work/shared/data/mnist"}}))
            assert loc == ["body", "eval", "data_dir"] and "data_roots" in msg and "none configured" in msg
            assert client.post("/api/runs", json={"eval": {"dataset": "digits", "clients": 4}}).status_code == 201
    finally:
        coordinator.close()


def test_data_roots_are_checked_again_when_the_run_starts(mosquitto, tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    digits = load_dataset("digits")
    np.savez(root / "d.npz", x_train=digits.x_train, y_train=digits.y_train, x_test=digits.x_test,
             y_test=digits.y_test)
    first = make_coordinator(mosquitto.url, tmp_path / "state", data_roots=[root])
    from cloud.run_config import RunConfig

    run = first.create_run(RunConfig.model_validate(npz_eval(root / "d.npz")))
    first.close()
    second = make_coordinator(mosquitto.url, tmp_path / "state")  # restarted without data roots
    try:
        second.start_run(run.id)
        final = second.wait_for_run(run.id, 20)
        assert final.status == "failed" and "data_roots" in (final.error or "")
    finally:
        second.close()


def test_starting_a_run_while_the_broker_is_down_is_503(mosquitto, tmp_path):
    coordinator = make_coordinator(mosquitto.url, tmp_path / "state")
    try:
        with TestClient(create_app(coordinator=coordinator), headers=bearer(coordinator, "operator")) as client:
            run_id = client.post("/api/runs", json={}).json()["id"]
            mosquitto.stop()
            wait_until(lambda: client.get("/healthz").json()["broker_connected"] is False, 20, "disconnect")
            response = client.post(f"/api/runs/{run_id}/start")
            assert response.status_code == 503 and "not connected to the MQTT broker" in response.json()["detail"]
            assert client.get(f"/api/runs/{run_id}").json()["status"] == "created"
    finally:
        coordinator.close()

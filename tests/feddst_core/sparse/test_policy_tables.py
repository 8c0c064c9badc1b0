"""Per-device auto-policy tables: derived from calibration points, stored as JSON, driving the policy."""

from __future__ import annotations

import json
import math

import pytest
import torch

from feddst_core.models import MNIST_CNN
from feddst_core.sparse import (
    DEFAULT_THRESHOLDS,
    TORCH_ONLY_THRESHOLDS,
    CalibrationPoint,
    SparseThreshold,
    choose_layer_kernels,
    make_local_trainer,
    thresholds_from_calibration,
    thresholds_from_dict,
    thresholds_to_dict,
)
from feddst_core.training import TrainConfig

DENSITIES = (0.05, 0.1, 0.2, 0.3, 0.5)


def _layer(kind: str, weights: int, ratios: tuple[float, ...]) -> list[CalibrationPoint]:
    """One measured layer: ``ratios[i]`` is sparse/dense time at ``DENSITIES[i]``."""
    return [CalibrationPoint(kind, weights, d, r) for d, r in zip(DENSITIES, ratios, strict=True)]


def _tiers(*pairs: tuple[float, int]) -> tuple[SparseThreshold, ...]:
    return tuple(SparseThreshold(max_density=d, min_weights=n) for d, n in pairs)


# --- thresholds_from_calibration ------------------------------------------------------------------


def test_layer_winning_at_every_density_gets_its_largest_density() -> None:
    table = thresholds_from_calibration(_layer("linear", 1000, (0.2, 0.3, 0.4, 0.5, 0.8)))
    assert table == {"linear": _tiers((0.5, 1000)), "conv": ()}


def test_a_win_stops_at_the_first_loss_even_if_later_densities_win_again() -> None:
    # Non-monotone: wins at 0.05, loses at 0.1, "wins" again at 0.2-0.5. Points given out of order.
    points = _layer("conv", 5000, (0.5, 0.95, 0.6, 0.6, 0.6))[::-1]
    assert thresholds_from_calibration(points)["conv"] == _tiers((0.05, 5000))


def test_small_layer_tier_is_lowered_to_what_larger_layers_win_at() -> None:
    points = (_layer("linear", 1000, (0.3, 0.4, 0.5, 0.6, 0.7))  # small: wins up to 0.5
              + _layer("linear", 100_000, (0.3, 0.4, 0.5, 0.95, 0.99))  # larger: only up to 0.2
              + _layer("linear", 1_000_000, (0.1, 0.2, 0.3, 0.4, 0.5)))  # largest: up to 0.5
    # 1000 -> min(0.5, 0.2, 0.5) = 0.2; 100k -> 0.2, dominated by (0.2, 1000): dropped; 1M -> 0.5.
    assert thresholds_from_calibration(points)["linear"] == _tiers((0.2, 1000), (0.5, 1_000_000))


def test_layer_that_never_wins_gives_no_tier() -> None:
    small_loser = _layer("linear", 5120, (1.6,) * 5)
    big_winner = _layer("linear", 256_000, (0.5, 0.55, 0.6, 0.7, 0.95))
    assert thresholds_from_calibration(small_loser + big_winner)["linear"] == _tiers((0.3, 256_000))
    assert thresholds_from_calibration(small_loser) == {"linear": (), "conv": ()}
    # A larger layer that never wins means no size is safe: a smaller winner gets no tier either.
    big_loser = _layer("conv", 10_000, (1.1,) * 5)
    assert thresholds_from_calibration(_layer("conv", 250, (0.3,) * 5) + big_loser)["conv"] == ()


def test_dominated_tiers_are_dropped() -> None:
    points = _layer("conv", 250, (0.3,) * 5) + _layer("conv", 450, (0.3,) * 5) + _layer("conv", 5000, (0.3,) * 5)
    assert thresholds_from_calibration(points)["conv"] == _tiers((0.5, 250))


def test_margin_is_respected() -> None:
    points = _layer("linear", 1000, (0.5, 0.5, 0.5, 0.95, 0.95))
    assert thresholds_from_calibration(points, margin=0.9)["linear"] == _tiers((0.2, 1000))  # 0.95 > 0.9: a loss
    assert thresholds_from_calibration(points, margin=1.0)["linear"] == _tiers((0.5, 1000))
    exactly = _layer("linear", 1000, (0.9,) * 5)
    assert thresholds_from_calibration(exactly, margin=0.9)["linear"] == _tiers((0.5, 1000))  # <= margin wins


def test_no_points_give_an_empty_table() -> None:
    assert thresholds_from_calibration([]) == {"linear": (), "conv": ()}


def test_bad_calibration_input_raises() -> None:
    with pytest.raises(ValueError, match="unknown kind 'attention'"):
        thresholds_from_calibration([CalibrationPoint("attention", 100, 0.1, 0.5)])
    for margin in (0.0, -0.5, 1.01, 2.0):
        with pytest.raises(ValueError, match="margin must be in"):
            thresholds_from_calibration(_layer("linear", 1000, (0.5,) * 5), margin=margin)


def test_measured_ratios_in_the_docs_give_the_shipped_tiers() -> None:
    """docs/sparse_kernels.md's calibration table (densities 0.5 .. 0.05) -> the shape of DEFAULT_THRESHOLDS:
    linear sparse <= 0.5 for the 2.6M-weight layer and <= 0.3 from 256k weights, convs <= 0.3."""
    measured = {  # (kind, weights): ratios at 0.5, 0.3, 0.2, 0.1, 0.05
        ("linear", 5120 * 512): (0.80, 0.52, 0.39, 0.28, 0.18),
        ("linear", 5120 * 50): (0.93, 0.76, 0.64, 0.57, 0.59),
        ("linear", 512 * 10): (1.66, 1.60, 1.58, 1.62, 1.64),
        ("conv", 20 * 10 * 25): (1.00, 0.69, 0.44, 0.33, 0.23),
        ("conv", 10 * 1 * 25): (0.38, 0.34, 0.29, 0.27, 0.26),
        ("conv", 6 * 3 * 25): (0.38, 0.37, 0.24, 0.21, 0.18),
        ("conv", 16 * 6 * 25): (0.97, 0.66, 0.51, 0.41, 0.30),
    }
    points = [CalibrationPoint(kind, n, d, r) for (kind, n), ratios in measured.items()
              for d, r in zip(DENSITIES, ratios[::-1], strict=True)]
    assert thresholds_from_calibration(points) == {"linear": _tiers((0.3, 256_000), (0.5, 2_621_440)),
                                                   "conv": _tiers((0.3, 250))}


# --- JSON form ------------------------------------------------------------------------------------


@pytest.mark.parametrize("table", [
    DEFAULT_THRESHOLDS,
    TORCH_ONLY_THRESHOLDS,
    {"linear": (), "conv": ()},
    {"linear": _tiers((0.05, 0), (1.0, 123_456_789)), "conv": _tiers((0.0, 7))},
])
def test_round_trip(table) -> None:
    assert thresholds_from_dict(thresholds_to_dict(table)) == table
    assert thresholds_from_dict(json.loads(json.dumps(thresholds_to_dict(table)))) == table


def test_to_dict_form() -> None:
    assert thresholds_to_dict({"linear": _tiers((0.3, 200_000))}) == {
        "version": 1, "linear": [{"max_density": 0.3, "min_weights": 200_000}], "conv": []}


def test_extra_top_level_keys_and_missing_kinds() -> None:
    doc = {"version": 1, "linear": [{"max_density": 0.3, "min_weights": 10}],
           "measured_on": {"machine": "aarch64", "date": "2026-01-01"}}
    assert thresholds_from_dict(doc) == {"linear": _tiers((0.3, 10)), "conv": ()}
    assert thresholds_from_dict({}) == {"linear": (), "conv": ()}  # no version: the current one
    assert thresholds_from_dict({"conv": [{"max_density": 1, "min_weights": 0}]}) == {
        "linear": (), "conv": _tiers((1.0, 0))}


@pytest.mark.parametrize(("doc", "message"), [
    ([], "must be a JSON object"),
    ("linear", "must be a JSON object"),
    (None, "must be a JSON object"),
    (3, "must be a JSON object"),
    ({"version": 2}, r"version 2 is not supported \(expected 1\)"),
    ({"version": "1"}, "version '1' is not supported"),
    ({"linear": {"max_density": 0.3, "min_weights": 0}}, "'linear' must be a list of tiers"),
    ({"conv": "none"}, "'conv' must be a list of tiers"),
    ({"conv": None}, "'conv' must be a list of tiers"),
    ({"linear": [0.3]}, r"linear\[0\] must be an object with exactly 'max_density' and 'min_weights'"),
    ({"linear": [{"max_density": 0.3}]}, r"linear\[0\] must be an object with exactly"),
    ({"linear": [{"min_weights": 0}]}, r"linear\[0\] must be an object with exactly"),
    ({"conv": [{"max_density": 0.3, "min_weights": 0},
               {"max_density": 0.3, "min_weights": 0, "note": "x"}]}, r"conv\[1\] must be an object with exactly"),
    ({"linear": [{"max_density": -0.1, "min_weights": 0}]}, r"linear\[0\]\.max_density must be a number in \[0, 1\]"),
    ({"linear": [{"max_density": 1.5, "min_weights": 0}]}, r"max_density must be a number in \[0, 1\], got 1\.5"),
    ({"linear": [{"max_density": True, "min_weights": 0}]}, r"max_density must be a number in \[0, 1\], got True"),
    ({"linear": [{"max_density": "0.3", "min_weights": 0}]}, r"max_density must be a number .*got '0\.3'"),
    ({"linear": [{"max_density": None, "min_weights": 0}]}, r"max_density must be a number"),
    ({"linear": [{"max_density": math.nan, "min_weights": 0}]}, r"max_density must be a number"),
    ({"conv": [{"max_density": 0.3, "min_weights": -1}]}, r"conv\[0\]\.min_weights must be an integer >= 0, got -1"),
    ({"conv": [{"max_density": 0.3, "min_weights": 1.0}]}, r"min_weights must be an integer >= 0, got 1\.0"),
    ({"conv": [{"max_density": 0.3, "min_weights": 2.5}]}, r"min_weights must be an integer >= 0"),
    ({"conv": [{"max_density": 0.3, "min_weights": True}]}, r"min_weights must be an integer >= 0, got True"),
    ({"conv": [{"max_density": 0.3, "min_weights": "5"}]}, r"min_weights must be an integer >= 0, got '5'"),
])
def test_from_dict_errors_name_the_problem(doc, message) -> None:
    with pytest.raises(ValueError, match=message):
        thresholds_from_dict(doc)


# --- a table from JSON drives the policy ------------------------------------------------------------


def _uniform_masks(density: float) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    shapes = MNIST_CNN.parameter_shapes()
    return {nm: torch.rand(shapes[nm], generator=g) < density for nm in MNIST_CNN.masked_names()}


@pytest.mark.parametrize(("density", "expected"), [
    # conv1 250 weights, conv2 5000, fc1 256k, fc2 500
    (0.45, {"conv1": "dense", "conv2": "dense", "fc1": "dense", "fc2": "dense"}),
    (0.25, {"conv1": "dense", "conv2": "dense", "fc1": "sparse", "fc2": "dense"}),
    (0.1, {"conv1": "dense", "conv2": "sparse", "fc1": "sparse", "fc2": "dense"}),
])
def test_table_from_json_drives_choose_layer_kernels(density: float, expected: dict[str, str]) -> None:
    text = json.dumps({"version": 1, "measured_on": {"machine": "aarch64"},
                       "linear": [{"max_density": 0.3, "min_weights": 100_000}],
                       "conv": [{"max_density": 0.2, "min_weights": 1000}]})
    table = thresholds_from_dict(json.loads(text))
    masks = _uniform_masks(density)
    assert choose_layer_kernels(MNIST_CNN, masks, "auto", table) == expected
    assert make_local_trainer(MNIST_CNN, TrainConfig(), "auto", table).layer_choice(masks) == expected
    # The same masks under a table that leaves a kind out: that kind stays dense.
    linear_only = thresholds_from_dict({"linear": [{"max_density": 1.0, "min_weights": 0}]})
    chosen = choose_layer_kernels(MNIST_CNN, masks, "auto", linear_only)
    assert chosen == {"conv1": "dense", "conv2": "dense", "fc1": "sparse", "fc2": "sparse"}

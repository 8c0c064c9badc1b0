"""Trial spec validation: errors name the file and the key; presets and device expansion."""

from __future__ import annotations

import pytest

from field_trial.spec import PRESETS, TrialSpecError, load_spec

GOOD = """
[trial]
name = "t"
algorithms = ["feddst", "fedavg"]
rounds = 3
clients_per_round = 2

[train]
local_epochs = 1
sparsity = 0.5

[profiles.slow]
uplink_kbps = 50
downlink_kbps = 100
compute_factor = 3
availability = "duty:1/2"

[[devices]]
count = 2
profile = "lte-rural"

[[devices]]
count = 1
profile = "slow"
"""


def _write(tmp_path, text):
    path = tmp_path / "spec.toml"
    path.write_text(text)
    return path


def test_a_good_spec_expands_its_devices_and_builds_run_configs(tmp_path):
    spec = load_spec(_write(tmp_path, GOOD))
    assert spec.device_profiles() == [("lte-rural-000", "lte-rural"), ("lte-rural-001", "lte-rural"),
                                      ("slow-000", "slow")]
    config = spec.run_config("fedavg")
    assert (config.algorithm, config.rounds, config.sparsity, config.local_epochs) == ("fedavg", 3, 0.5, 1)
    assert config.eval is not None and config.eval.clients == 3
    assert spec.profile("slow").online(1, 0.0) and not spec.profile("slow").online(2, 0.0)
    assert PRESETS["lte-rural"].uplink_kbps == 1000 and PRESETS["lte-rural"].loss_pct == 1.0


@pytest.mark.parametrize(("change", "expected"), [
    (("[trial]", "[trial]\nspeed = 3"), r"trial\.speed: unknown key"),
    (("uplink_kbps = 50", "uplink_kbps = 0"), r"profiles\.slow\.uplink_kbps: Input should be greater than 0"),
    (("compute_factor = 3", "compute_factor = 3\nloss_pct = 80"), r"profiles\.slow\.loss_pct"),
    (('availability = "duty:1/2"', 'availability = "sometimes"'), r"profiles\.slow\.availability: 'sometimes'"),
    (('profile = "slow"', 'profile = "fibre"'), r"devices\[1\]\.profile: unknown profile 'fibre'.*lte-rural"),
    (("clients_per_round = 2", "clients_per_round = 9"), r"trial\.clients_per_round: 9 exceeds the 3 devices"),
    (("rounds = 3", "rounds = 3\nupload_budget_mb = -1"), r"trial\.upload_budget_mb: Input should be greater"),
    (("sparsity = 0.5", "sparsity = 1.5"), r"train\.sparsity: Input should be less than 1"),
    (("sparsity = 0.5", "wings = 2"), r"train\.wings: not a RunConfig training field"),
    (("sparsity = 0.5", "rounds = 2"), r"train\.rounds: set by \[trial\]"),
    (('name = "t"', 'name = "t"\nshaper = "tc"'), r"trial\.shaper: Input should be 'agent' or 'netem'"),
    (('name = "t"', 'name = "t"\nbroker = "http://x"'), r"trial\.broker: 'http://x' is neither"),
])
def test_bad_specs_name_the_file_and_the_key(tmp_path, change, expected):
    old, new = change
    assert old in GOOD
    path = _write(tmp_path, GOOD.replace(old, new, 1))
    with pytest.raises(TrialSpecError, match=expected) as info:
        load_spec(path)
    assert str(info.value).startswith(str(path))


def test_unreadable_and_invalid_toml(tmp_path):
    with pytest.raises(TrialSpecError, match="no such file"):
        load_spec(tmp_path / "missing.toml")
    with pytest.raises(TrialSpecError, match="not valid TOML"):
        load_spec(_write(tmp_path, "[trial\n"))
    with pytest.raises(TrialSpecError, match="devices: Field required"):
        load_spec(_write(tmp_path, "[trial]\nrounds = 2\n"))

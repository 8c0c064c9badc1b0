"""``feddst_core.model_file``: the safetensors global-model layout (parameters, ``<name>.mask``, metadata)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load as load_safetensors

from feddst_core.model_file import ModelFileError, decode_model_file, encode_model_file


def test_round_trip_keeps_values_masks_and_metadata():
    params = {"w": torch.randn(3, 4), "b": torch.randn(3)}
    masks = {"w": torch.rand(3, 4) < 0.5}
    data = encode_model_file(params, masks, {"run_id": "r1", "round": 7})
    raw = load_safetensors(data)  # the layout read by anything that speaks safetensors
    assert set(raw) == {"w", "b", "w.mask"} and raw["w.mask"].dtype == torch.bool
    model = decode_model_file(data)
    assert model.metadata == {"run_id": "r1", "round": "7"}
    assert torch.equal(model.params["w"], params["w"]) and torch.equal(model.masks["w"], masks["w"])
    assert set(model.masks) == {"w"}


@pytest.mark.parametrize("data, message", [
    (b"", "too short"),
    (b"\xff" * 64, "not a safetensors model file"),
    (b"\x04\x00\x00\x00\x00\x00\x00\x00{}{}", "not a safetensors model file"),
])
def test_garbage_is_a_clear_error(data, message):
    with pytest.raises(ModelFileError, match=message):
        decode_model_file(data, "upload.safetensors")


def test_a_mask_without_its_parameter_is_refused():
    data = encode_model_file({}, {"w": torch.ones(2, dtype=torch.bool)}, {})
    with pytest.raises(ModelFileError, match="masks without a parameter: w"):
        decode_model_file(data)

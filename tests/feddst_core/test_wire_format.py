import dataclasses
import tracemalloc

import numpy as np
import pytest
import torch

from feddst_core.models import DIGITS_CNN
from feddst_core.readjust import LayerReadjustment
from feddst_core.strategies import FedStrategy, StrategyConfig
from feddst_core.training import ClientData, LocalTrainer, TrainConfig
from feddst_core.wire_format import (
    model_broadcast,
    model_from_tensors,
    update_message,
    update_to_model,
    wire_mask_changes,
)
from protocol import MaskMismatchError, ProtocolError, SparseTensor, decode_message, encode_message

SPEC = DIGITS_CNN
KEY = b"k" * 32


def trained(readjust):
    strategy = FedStrategy(SPEC, StrategyConfig(sparsity=0.8))
    state = strategy.initialize(0)
    g = torch.Generator().manual_seed(1)
    data = ClientData(torch.randn(16, 1, 8, 8, generator=g), torch.randint(0, 10, (16,), generator=g))
    (out,) = LocalTrainer(SPEC, TrainConfig(batch_size=8, local_epochs=1)).train(
        state.params, state.masks, [data], [3], readjust)
    return state, out


def test_broadcast_round_trip_through_the_wire():
    state, _ = trained(0.0)
    msg = decode_message(encode_message(model_broadcast("run-1", 4, state.params, state.masks), KEY), KEY)
    params, masks = model_from_tensors(msg.tensors, SPEC.masked_names())
    assert all(torch.equal(params[n], state.params[n]) for n in params)
    assert all(torch.equal(masks[n], state.masks[n]) for n in masks)


def test_dense_model_goes_without_masks():
    strategy = FedStrategy(SPEC, StrategyConfig(algorithm="fedavg"))
    state = strategy.initialize(0)
    msg = model_broadcast("r", 1, state.params, state.masks)
    assert all(t.mask is None for t in msg.tensors.values())
    params, masks = model_from_tensors(msg.tensors, SPEC.masked_names())
    assert all(bool(m.all()) for m in masks.values())


@pytest.mark.parametrize("readjust", [0.0, 0.3])
def test_update_round_trip_rebuilds_weights_and_new_mask(readjust):
    state, out = trained(readjust)
    msg = update_message("run-1", 1, "dev-1", out.params, state.masks, out.masks, out.num_samples,
                         out.train_loss, 0.5)
    assert bool(msg.mask_changes) == (readjust > 0), "a round without readjustment sends no mask"
    decoded = decode_message(encode_message(msg, KEY), KEY)
    params, masks = update_to_model(decoded, state.masks)
    assert all(torch.equal(params[n], out.params[n]) for n in params)
    assert all(torch.equal(masks[n], out.masks[n]) for n in masks)


def test_update_that_does_not_fit_the_sent_mask_is_a_protocol_error():
    state, out = trained(0.0)
    msg = update_message("run-1", 1, "dev-1", out.params, state.masks, out.masks, 16, 0.1, 0.0)
    other = {n: torch.roll(m, 1) if m.sum() < m.numel() else m for n, m in state.masks.items()}
    other["fc1.weight"] = torch.zeros_like(other["fc1.weight"])
    with pytest.raises(ProtocolError):
        update_to_model(msg, other)
    missing = {**state.masks, "extra.weight": torch.ones(3, dtype=torch.bool)}
    with pytest.raises(MaskMismatchError):
        update_to_model(msg, missing)


@pytest.mark.parametrize("readjust", [0.0, 0.3])
def test_update_from_the_trainers_own_changes_is_byte_identical_to_the_mask_diff(readjust):
    state, out = trained(readjust)
    assert bool(out.mask_changes) == (readjust > 0)
    assert all(isinstance(c.dropped, torch.Tensor) for c in out.mask_changes.values())  # the trainer's form
    from_trainer = update_message("run-1", 1, "dev-1", out.params, state.masks, out.masks, out.num_samples,
                                  out.train_loss, 0.5, mask_changes=out.mask_changes)
    # independent oracle: the change between the sent and the trained mask, as the protocol computes it
    from_diff = update_message("run-1", 1, "dev-1", out.params, state.masks, out.masks, out.num_samples,
                               out.train_loss, 0.5)
    assert encode_message(from_trainer, KEY, timestamp=0) == encode_message(from_diff, KEY, timestamp=0)
    assert set(from_trainer.mask_changes) == set(from_diff.mask_changes)
    for name, change in from_diff.mask_changes.items():
        assert from_trainer.mask_changes[name] == change


def test_wire_mask_changes_drops_layers_that_moved_nothing():
    empty = torch.empty(0, dtype=torch.long)
    changes = {"a.weight": LayerReadjustment(torch.tensor([5, 1]), torch.tensor([0, 9])),
               "b.weight": LayerReadjustment(empty, empty)}
    wire = wire_mask_changes(changes)
    assert list(wire) == ["a.weight"]
    assert wire["a.weight"].dropped.tolist() == [1, 5] and wire["a.weight"].grown.tolist() == [0, 9]


def _peak_numpy_bytes(call) -> tuple[int, BaseException | None]:
    """Peak bytes traced (numpy reports its array buffers to tracemalloc) while ``call`` runs."""
    tracemalloc.start()
    try:
        call()
        error = None
    except Exception as exc:  # noqa: BLE001 - returned for the test to inspect
        error = exc
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak, error


@pytest.mark.parametrize("name", ["fc1.weight", "fc2.bias"])
def test_a_huge_declared_shape_is_refused_before_anything_of_that_shape_is_allocated(name):
    state, out = trained(0.3)
    msg = update_message("run-1", 1, "dev-1", out.params, state.masks, out.masks, 16, 0.1, 0.0,
                         mask_changes=out.mask_changes)
    huge = SparseTensor((1 << 20, 1 << 20), np.zeros(10, np.float32))  # 2**40 elements: 4 TiB as float32
    bad = dataclasses.replace(msg, tensors={**msg.tensors, name: huge},
                              mask_changes={n: c for n, c in msg.mask_changes.items() if n != name})
    peak, error = _peak_numpy_bytes(lambda: update_to_model(bad, state.masks))
    assert isinstance(error, MaskMismatchError) and name in str(error), error
    assert peak < 1 << 20, f"{peak} bytes allocated before the shape was refused"

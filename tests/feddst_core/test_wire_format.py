import pytest
import torch

from feddst_core.models import DIGITS_CNN
from feddst_core.strategies import FedStrategy, StrategyConfig
from feddst_core.training import ClientData, LocalTrainer, TrainConfig
from feddst_core.wire_format import model_broadcast, model_from_tensors, update_message, update_to_model
from protocol import MaskMismatchError, ProtocolError, decode_message, encode_message

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

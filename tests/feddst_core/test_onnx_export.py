"""``feddst_core.onnx_export``: the ONNX graph written from the layer list computes what ``models.forward``
computes (onnxruntime vs torch, two independent implementations), for every built-in model, while the
native kernels are loaded (the torch side runs them: K = 1, NCHW, native max-pool).

Parity: max |logits_onnxruntime - logits_torch| <= 1e-5 and identical argmax, on the digits test set for
digits_cnn (a model trained a few rounds by the simulator), on MNIST test images for mnist_cnn when the
shared copy is present (else seeded normal inputs), and on seeded normal inputs for the others, each with
sparse ERK masks from the strategy's initial model.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from feddst_core import native
from feddst_core.models import MODELS, forward_single, get_model_spec
from feddst_core.onnx_export import OPSET, OnnxExportError, export_model, onnx_bytes, onnx_model
from feddst_core.strategies import FedStrategy, StrategyConfig
from inference.model_card import ModelCard

TOL = 1e-5
MNIST_DIR = Path("/work/shared/data/mnist")
NATIVE_EXPECTED = bool(os.environ.get("FEDDST_NATIVE", "1") != "0" and (native.available() or shutil.which("cc")))


def _initial_model(name: str, seed: int = 0):
    state = FedStrategy(get_model_spec(name), StrategyConfig(sparsity=0.8)).initialize(seed)
    return state.params, state.masks


def _trained_digits_model():
    from simulator.config import SimulationConfig
    from simulator.engine import Simulation

    sim = Simulation(SimulationConfig(dataset="digits", clients=10, clients_per_round=5, samples_per_class=20,
                                      rounds=3, local_epochs=2, eval_every=3, readjust_every=2, out="unused"))
    for _ in sim.run_rounds():
        pass
    return sim.state.params, sim.state.masks, torch.from_numpy(sim.data.x_test)


def _inputs(name: str) -> torch.Tensor:
    spec = get_model_spec(name)
    if name == "mnist_cnn" and MNIST_DIR.is_dir():
        from datasources.loaders import load_mnist

        return torch.from_numpy(load_mnist(MNIST_DIR).x_test[:1000])
    return torch.randn((256, *spec.input_shape), generator=torch.Generator().manual_seed(1))


def _session(data: bytes) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def test_native_kernels_are_loaded_for_the_parity_tests():
    if not NATIVE_EXPECTED:
        pytest.skip("native kernels disabled or no C compiler")
    assert native.available(), native.status()


@pytest.mark.parametrize("name", sorted(MODELS))
def test_onnxruntime_matches_torch(name):
    torch.set_num_threads(1)
    spec = get_model_spec(name)
    if name == "digits_cnn":
        params, masks, x = _trained_digits_model()
    else:
        params, masks = _initial_model(name)
        x = _inputs(name)
    with torch.no_grad():
        expected = torch.cat([forward_single(spec, params, x[i:i + 256]) for i in range(0, len(x), 256)]).numpy()
    for sparse in (False, True):
        logits, probabilities = _session(onnx_bytes(spec, params, masks, sparse_weights=sparse)).run(
            None, {"input": x.numpy()})
        assert np.abs(logits - expected).max() <= TOL, (name, sparse)
        assert (logits.argmax(1) == expected.argmax(1)).all()
        reference = torch.softmax(torch.from_numpy(expected), 1).numpy()
        assert np.abs(probabilities - reference).max() <= TOL


def test_graph_is_checked_opset_17_with_pruned_weights_zero():
    spec = get_model_spec("mnist_cnn")
    params, masks = _initial_model("mnist_cnn")
    params = {n: t + 1.0 for n, t in params.items()}  # off-mask values non-zero: the export must zero them
    model = onnx_model(spec, params, masks)
    onnx.checker.check_model(model, full_check=True)
    assert [o.version for o in model.opset_import if o.domain == ""] == [OPSET] and OPSET >= 17
    weights = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    for name, mask in masks.items():
        w = weights[name]
        assert (w[~mask.numpy()] == 0).all()
        assert (w[mask.numpy()] != 0).all()
    assert [n.op_type for n in model.graph.node][:3] == ["Conv", "MaxPool", "Relu"]


def test_sparse_weights_file_is_smaller_and_holds_only_active_values():
    spec = get_model_spec("mnist_cnn")
    params, masks = _initial_model("mnist_cnn")
    dense, sparse = onnx_bytes(spec, params, masks), onnx_bytes(spec, params, masks, sparse_weights=True)
    assert len(sparse) < 0.7 * len(dense)
    model = onnx.load_from_string(sparse)
    constants = {n.output[0]: n.attribute[0].sparse_tensor for n in model.graph.node if n.op_type == "Constant"}
    assert set(constants) == set(masks)
    for name, tensor in constants.items():
        assert len(tensor.values.float_data) + len(tensor.values.raw_data) // 4 == int(masks[name].sum())


def test_metadata_is_the_model_card():
    spec = get_model_spec("digits_cnn")
    params, masks = _initial_model("digits_cnn")
    model = onnx.load_from_string(export_model(spec, params, masks, run_id="run-7", server_round=12,
                                               accuracy=0.875))
    card = ModelCard.from_properties({p.key: p.value for p in model.metadata_props})
    assert (card.model, card.input_shape, card.num_classes, card.dataset) == ("digits_cnn", (1, 8, 8), 10, "digits")
    assert (card.run_id, card.server_round, card.accuracy) == ("run-7", 12, 0.875)
    assert card.class_labels == tuple("0123456789")
    assert card.density == {n: pytest.approx(float(m.float().mean())) for n, m in masks.items()}
    assert card.normalization is not None and card.normalization.source == "built-in digits train split"


@pytest.mark.parametrize("change, message", [
    (lambda p: p.pop("fc1.bias"), "fc1.bias is missing"),
    (lambda p: p.__setitem__("fc1.weight", torch.zeros(3, 3)), "fc1.weight has shape"),
    (lambda p: p.__setitem__("extra", torch.zeros(1)), "unexpected parameters extra"),
    (lambda p: p["conv1.weight"].view(-1).__setitem__(0, float("nan")), "NaN"),
])
def test_parameters_that_do_not_fit_the_model_are_clear_errors(change, message):
    spec = get_model_spec("digits_cnn")
    params, masks = _initial_model("digits_cnn")
    params = {n: t.clone() for n, t in params.items()}
    masks = {n: torch.ones_like(m) for n, m in masks.items()}
    change(params)
    with pytest.raises(OnnxExportError, match=message):
        onnx_model(spec, params, masks)

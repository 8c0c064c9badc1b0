"""A model as an ONNX graph (opset 17), written node by node from its layer list (no I/O here).

The graph is built with the ``onnx`` helper API straight from ``ModelSpec.layers`` and the parameter
values, not traced through ``torch.onnx``: tracing ``models.forward`` runs the native kernels, which
torch's TorchScript exporter cannot see into (it records the pooled activations as constants and
exports a graph that ignores its input; the torch.export exporter needs onnxscript). Writing the
graph from the layer list works whatever kernels are loaded and needs no torch at all.

Layer -> node: ``Conv`` -> Conv (no padding, stride 1, with bias); ``MaxPool`` -> MaxPool; ``ReLU`` ->
Relu; ``Flatten`` -> Flatten(axis=1) (C, H, W order, as ``models.forward``); ``Linear`` ->
Gemm(transB=1). Input ``input`` (batch, C, H, W) float32; outputs ``logits`` (batch, K) and
``probabilities`` (their softmax). Pruned weights are zeros (weights are multiplied by their masks).
With ``sparse_weights`` every masked weight is stored sparse (its non-zero values and their flat
int64 indices) as a ``Constant`` node's ``sparse_value`` (a sparse tensor in a graph's
``sparse_initializer`` list is typed ``sparse_tensor``, which Conv and Gemm do not accept; the
Constant's output is the dense tensor).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from feddst_core.models import Conv, Flatten, Linear, MaxPool, ModelSpec, ReLU

OPSET = 17
INPUT_NAME, LOGITS_NAME, PROBABILITIES_NAME = "input", "logits", "probabilities"


class OnnxExportError(ValueError):
    """The parameters do not fit the model, or the graph failed ``onnx.checker``."""


def _array(value: object) -> np.ndarray:
    detach = getattr(value, "detach", None)
    if detach is not None:  # a torch tensor
        return detach().cpu().numpy()
    return np.asarray(value)


def pruned_weights(spec: ModelSpec, params: Mapping[str, object],
                   masks: Mapping[str, object]) -> dict[str, np.ndarray]:
    """float32 parameters of one model with every masked-out weight set to 0, checked against ``spec``."""
    out: dict[str, np.ndarray] = {}
    for name, shape in spec.parameter_shapes().items():
        if name not in params:
            raise OnnxExportError(f"{spec.name}: parameter {name} is missing")
        value = _array(params[name]).astype(np.float32)
        if value.shape != shape:
            raise OnnxExportError(f"{spec.name}: {name} has shape {value.shape}, the model needs {shape}")
        if name in masks:
            mask = _array(masks[name]).astype(bool)
            if mask.shape != shape:
                raise OnnxExportError(f"{spec.name}: mask of {name} has shape {mask.shape}, expected {shape}")
            value = np.where(mask, value, np.float32(0))
        if not np.isfinite(value).all():
            raise OnnxExportError(f"{spec.name}: {name} holds NaN or inf")
        out[name] = np.ascontiguousarray(value)
    extra = sorted(set(params) - set(out))
    if extra:
        raise OnnxExportError(f"{spec.name}: unexpected parameters {', '.join(extra)}")
    return out


def _sparse_initializer(name: str, value: np.ndarray) -> onnx.SparseTensorProto:
    flat = value.reshape(-1)
    indices = np.flatnonzero(flat).astype(np.int64)
    return helper.make_sparse_tensor(numpy_helper.from_array(flat[indices], name),
                                     numpy_helper.from_array(indices, name + ".indices"), list(value.shape))


def _nodes(spec: ModelSpec) -> list[onnx.NodeProto]:
    nodes: list[onnx.NodeProto] = []
    act = INPUT_NAME
    for i, layer in enumerate(spec.layers):
        out = f"act{i}"
        if isinstance(layer, Conv):
            k = layer.kernel
            nodes.append(helper.make_node("Conv", [act, f"{layer.name}.weight", f"{layer.name}.bias"], [out],
                                          name=layer.name, kernel_shape=[k, k], strides=[1, 1], pads=[0, 0, 0, 0]))
        elif isinstance(layer, MaxPool):
            nodes.append(helper.make_node("MaxPool", [act], [out], name=f"pool{i}",
                                          kernel_shape=[layer.kernel] * 2, strides=[layer.stride] * 2))
        elif isinstance(layer, ReLU):
            nodes.append(helper.make_node("Relu", [act], [out], name=f"relu{i}"))
        elif isinstance(layer, Flatten):
            nodes.append(helper.make_node("Flatten", [act], [out], name=f"flatten{i}", axis=1))
        elif isinstance(layer, Linear):
            nodes.append(helper.make_node("Gemm", [act, f"{layer.name}.weight", f"{layer.name}.bias"], [out],
                                          name=layer.name, transB=1))
        else:
            raise OnnxExportError(f"{spec.name}: no ONNX node for layer {layer!r}")
        act = out
    if not nodes or nodes[-1].op_type != "Gemm":
        raise OnnxExportError(f"{spec.name}: a model must end in a Linear layer")
    nodes[-1].output[0] = LOGITS_NAME
    nodes.append(helper.make_node("Softmax", [LOGITS_NAME], [PROBABILITIES_NAME], name="softmax", axis=1))
    return nodes


def onnx_model(spec: ModelSpec, params: Mapping[str, object], masks: Mapping[str, object],
               properties: Mapping[str, str] | None = None, *, sparse_weights: bool = False,
               producer_version: str = "") -> onnx.ModelProto:
    """The model as a checked ONNX ``ModelProto``; ``properties`` become its ``metadata_props``.

    ``params``/``masks``: one model's tensors (torch or numpy), shapes as ``spec.parameter_shapes()``.
    Raises :class:`OnnxExportError`.
    """
    weights = pruned_weights(spec, params, masks)
    dense = [numpy_helper.from_array(v, n) for n, v in weights.items() if not (sparse_weights and n in masks)]
    constants = [helper.make_node("Constant", [], [n], name=f"{n}.sparse", sparse_value=_sparse_initializer(n, v))
                 for n, v in weights.items() if sparse_weights and n in masks]
    c, h, w = spec.input_shape
    graph = helper.make_graph(
        constants + _nodes(spec), spec.name,
        inputs=[helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", c, h, w])],
        outputs=[helper.make_tensor_value_info(LOGITS_NAME, TensorProto.FLOAT, ["batch", spec.num_classes]),
                 helper.make_tensor_value_info(PROBABILITIES_NAME, TensorProto.FLOAT, ["batch", spec.num_classes])],
        initializer=dense)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="feddst-edge",
                              producer_version=producer_version, doc_string=f"FedDST Edge {spec.name}")
    model.ir_version = 8  # the IR version of opset 17: readable by onnxruntime >= 1.12
    helper.set_model_props(model, dict(properties or {}))
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise OnnxExportError(f"{spec.name}: the exported graph fails onnx.checker: {exc}") from exc
    return model


def onnx_bytes(spec: ModelSpec, params: Mapping[str, object], masks: Mapping[str, object],
               properties: Mapping[str, str] | None = None, *, sparse_weights: bool = False,
               producer_version: str = "") -> bytes:
    """:func:`onnx_model` serialised (the bytes of a ``.onnx`` file)."""
    return onnx_model(spec, params, masks, properties, sparse_weights=sparse_weights,
                      producer_version=producer_version).SerializeToString()


def export_model(spec: ModelSpec, params: Mapping[str, object], masks: Mapping[str, object], *,
                 dataset: str | None = None, run_id: str = "", server_round: int | None = None,
                 accuracy: float | None = None, sparse_weights: bool = False) -> bytes:
    """The ``.onnx`` bytes of a global model with its model card (``inference.model_card``) as metadata:
    the normalisation and class labels of ``dataset`` (default: the model's usual data source), the run,
    round and accuracy it comes from, and each weight's density."""
    from importlib.metadata import PackageNotFoundError, version

    from inference.model_card import card_for

    try:
        producer = version("feddst-edge")
    except PackageNotFoundError:
        producer = ""
    card = card_for(spec.name, spec.input_shape, spec.num_classes, masks, dataset, run_id, server_round, accuracy)
    return onnx_bytes(spec, params, masks, card.to_properties(), sparse_weights=sparse_weights,
                      producer_version=producer)

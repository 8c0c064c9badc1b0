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
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from feddst_core.models import Conv, Linear, MaxPool, ModelSpec, run_layers

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


class OnnxGraphBuilder:
    """:class:`~feddst_core.models.LayerExecutor` whose activations are ONNX value names: each layer
    :func:`~feddst_core.models.run_layers` walks appends its node(s) to ``nodes`` and returns the
    name of its output (``act<n>``, n = the node's index). Weights are read by name from the
    initializers (``<layer>.weight``, ``<layer>.bias``)."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []

    def _node(self, op_type: str, inputs: list[str], name: str, **attributes: Any) -> str:
        out = f"act{len(self.nodes)}"
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=name, **attributes))
        return out

    def conv(self, layer: Conv, act: str) -> str:
        k = layer.kernel
        return self._node("Conv", [act, f"{layer.name}.weight", f"{layer.name}.bias"], layer.name,
                          kernel_shape=[k, k], strides=[1, 1], pads=[0, 0, 0, 0])

    def fuses_conv_pool(self, layer: Conv) -> bool:
        return False  # ONNX has no fused conv + pool node: Conv, then MaxPool

    def conv_pool(self, layer: Conv, pool: MaxPool, relu: bool, act: str) -> str:
        return self.max_pool(pool, relu, self.conv(layer, act))

    def max_pool(self, pool: MaxPool, relu: bool, act: str) -> str:
        out = self._node("MaxPool", [act], f"pool{len(self.nodes)}", kernel_shape=[pool.kernel] * 2,
                         strides=[pool.stride] * 2)
        return self.relu(out) if relu else out

    def relu(self, act: str) -> str:
        return self._node("Relu", [act], f"relu{len(self.nodes)}")

    def flatten(self, act: str) -> str:
        return self._node("Flatten", [act], f"flatten{len(self.nodes)}", axis=1)

    def linear(self, layer: Linear, act: str) -> str:
        return self._node("Gemm", [act, f"{layer.name}.weight", f"{layer.name}.bias"], layer.name, transB=1)


def _nodes(spec: ModelSpec) -> list[onnx.NodeProto]:
    """The graph's nodes: :func:`~feddst_core.models.run_layers` with :class:`OnnxGraphBuilder`, the last
    Gemm's output renamed ``logits``, then the Softmax giving ``probabilities``."""
    if not spec.layers or not isinstance(spec.layers[-1], Linear):
        raise OnnxExportError(f"{spec.name}: a model must end in a Linear layer")
    builder = OnnxGraphBuilder()
    run_layers(spec, builder, INPUT_NAME)
    nodes = builder.nodes
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

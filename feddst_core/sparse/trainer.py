"""``SparseLocalTrainer``: LocalTrainer's contract and math for one client, with CSR layers.

Layers the policy marks sparse hold only their active weights (``values`` (nnz,), a ``CsrPattern``)
and an ``(nnz,)`` momentum buffer; the others run as masked dense layers exactly as in
``feddst_core.training.LocalTrainer``. Data order, batching, loss, FedProx term, SGD and
readjustment semantics are LocalTrainer's, so results agree to float rounding (tests: 1e-4).

The dense gradient that readjustment needs is computed once, at LocalTrainer's readjustment point
(halfway through the round by default), on dense copies of the weights; the new masks are then
converted back to CSR. When the policy keeps every layer dense, ``train`` simply runs LocalTrainer.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from feddst_core import native
from feddst_core.models import Conv, Flatten, Linear, MaxPool, ModelSpec, forward, forward_plan, row_major, run_layers
from feddst_core.pooling import max_pool2d
from feddst_core.readjust import LayerReadjustment, readjust_masks
from feddst_core.sparse.direct_step import direct_step, supports_direct_step
from feddst_core.sparse.kernels import CsrPattern, FusedSgd, sparse_conv2d, sparse_conv2d_pool, sparse_linear
from feddst_core.sparse.policy import SparseThreshold, choose_layer_kernels, validate_kernels
from feddst_core.training import ClientData, ClientOutcome, LocalTrainer, TrainConfig, sgd_update


class CsrLayers:
    """:class:`~feddst_core.models.LayerExecutor` of one client (no client axis), NCHW throughout (what
    the native sparse convolutions and max-pools take): a layer whose weight is in ``patterns`` runs
    its CSR kernel, a sparse Conv followed by a MaxPool runs fused with it (``sparse_conv2d_pool``).

    ``leaves["<layer>.weight"]`` is the (nnz,) CSR values when ``"<layer>.weight"`` is in ``patterns``,
    else the dense weight; biases are dense. A fused conv + pool whose output goes straight into Flatten
    (``batch_last_convs``) writes it batch-last, so Flatten's ``(features, B)`` layout costs no copy. A sparse
    linear weight named in ``fused_sgd`` takes its SGD step inside its backward (``FusedSgd``).
    """

    def __init__(self, leaves: Mapping[str, torch.Tensor], patterns: Mapping[str, CsrPattern], b: int,
                 batch_last_convs: frozenset[str] = frozenset(), fused_sgd: Mapping[str, FusedSgd] | None = None):
        self.leaves, self.patterns, self.b = leaves, patterns, b
        self.batch_last_convs = batch_last_convs
        self.fused_sgd = fused_sgd or {}

    def conv(self, layer: Conv, act: torch.Tensor) -> torch.Tensor:
        weight, bias = self.leaves[f"{layer.name}.weight"], self.leaves[f"{layer.name}.bias"]
        pattern = self.patterns.get(f"{layer.name}.weight")
        if pattern is None:
            return F.conv2d(act, weight, bias)  # (B, out, H', W')
        return sparse_conv2d(act, weight, bias, pattern)  # (B, out, H', W')

    def fuses_conv_pool(self, layer: Conv) -> bool:
        return f"{layer.name}.weight" in self.patterns

    def conv_pool(self, layer: Conv, pool: MaxPool, relu: bool, act: torch.Tensor) -> torch.Tensor:
        name = f"{layer.name}.weight"
        return sparse_conv2d_pool(act, self.leaves[name], self.leaves[f"{layer.name}.bias"], self.patterns[name],
                                  pool.kernel, pool.stride, relu=relu,
                                  batch_last=layer.name in self.batch_last_convs)

    def max_pool(self, pool: MaxPool, relu: bool, act: torch.Tensor) -> torch.Tensor:
        return max_pool2d(act, pool.kernel, pool.stride, relu=relu)

    def relu(self, act: torch.Tensor) -> torch.Tensor:
        return F.relu(act)

    def flatten(self, act: torch.Tensor) -> torch.Tensor:
        # (B, C*H*W) in per-sample C, H, W order, laid out as a contiguous (C*H*W, B) transposed: one
        # copy (none for a batch-last act), and the (in, B) operand sparse_linear / addmm use is contiguous.
        return act.permute(*range(1, act.dim()), 0).reshape(-1, self.b).contiguous().t()

    def linear(self, layer: Linear, act: torch.Tensor) -> torch.Tensor:
        weight, bias = self.leaves[f"{layer.name}.weight"], self.leaves[f"{layer.name}.bias"]
        pattern = self.patterns.get(f"{layer.name}.weight")
        if pattern is None:
            # W @ x^T: autograd returns a contiguous (out, in) weight gradient (as models.GroupedLayers).
            return torch.addmm(bias.unsqueeze(1), weight, act.t()).t()  # (B, out)
        return sparse_linear(act, weight, bias, pattern, sgd=self.fused_sgd.get(f"{layer.name}.weight"))  # (B, out)


def forward_mixed(spec: ModelSpec, leaves: Mapping[str, torch.Tensor], patterns: Mapping[str, CsrPattern],
                  x: torch.Tensor, fused_sgd: Mapping[str, FusedSgd] | None = None) -> torch.Tensor:
    """Logits of one client's model on x (B, C, H, W) -> (B, classes): ``models.run_layers`` with
    :class:`CsrLayers` (see there for ``leaves``, ``patterns`` and ``fused_sgd``)."""
    layers = CsrLayers(leaves, patterns, x.shape[0], convs_before_flatten(spec), fused_sgd)
    return run_layers(spec, layers, row_major(x))


@functools.lru_cache(maxsize=64)
def linear_weight_names(spec: ModelSpec) -> frozenset[str]:
    """``"<layer>.weight"`` of every Linear layer of the spec."""
    return frozenset(f"{layer.name}.weight" for layer in spec.layers if isinstance(layer, Linear))


@functools.lru_cache(maxsize=64)
def convs_before_flatten(spec: ModelSpec) -> frozenset[str]:
    """Names of the Convs whose pooled output (a MaxPool, or MaxPool + ReLU, right after them in
    ``forward_plan``) is the input of Flatten."""
    plan = forward_plan(spec.layers)
    return frozenset(layer.name for layer, after in zip(plan, plan[2:], strict=False)
                     if isinstance(layer, Conv) and isinstance(after, Flatten))


SMALL_DENSE_LEAF = 1 << 16
"""Values of the largest dense leaf (weight or bias) for which a step runs its torch ops on one thread while
the native kernels keep all of them: fc2 (512 x 10), biases, the loss on (32, 10) logits each cost more in a
2-thread parallel region's fork and join than they gain (measured 2026-12-03: the step's torch-side time
0.44 ms on one thread, 0.66-1.37 ms on two)."""


@dataclass
class ClientState:
    """One client's training state during a round.

    leaves: trainable tensors, ``(nnz,)`` CSR values for names in ``patterns``, dense otherwise.
    buffers: SGD momentum per leaf, same shapes as the leaves (so ``(nnz,)`` for sparse weights).
    """

    leaves: dict[str, torch.Tensor]
    patterns: dict[str, CsrPattern]
    masks: dict[str, torch.Tensor]  # bool masks of the masked *dense* leaves (sparse ones: ``patterns``)
    anchors: dict[str, torch.Tensor] | None  # FedProx anchor per leaf (same shape), None if mu == 0
    buffers: dict[str, torch.Tensor]
    # every dense leaf has at most SMALL_DENSE_LEAF values: the step's torch ops then run on one thread
    small_dense: bool = False

    def all_masks(self) -> dict[str, torch.Tensor]:
        """Bool masks of every masked name, in parameter order; a sparse layer's is rebuilt from its
        pattern (O(numel))."""
        return {nm: self.patterns[nm].mask() if nm in self.patterns else self.masks[nm]
                for nm in self.leaves if nm in self.patterns or nm in self.masks}

    def dense_params(self) -> dict[str, torch.Tensor]:
        """Dense copies of all parameters; masked-out weights exactly 0."""
        return {nm: (self.patterns[nm].scatter(t.detach()) if nm in self.patterns else t.detach().clone())
                for nm, t in self.leaves.items()}


class SparseLocalTrainer:
    """Trains one client (K = 1) with CSR kernels where the policy says they are faster.

    kernels: "auto" | "sparse" | "dense" (see ``feddst_core.sparse.policy``). thresholds: the auto
    policy's table (default: the measured ``DEFAULT_THRESHOLDS``). layer_kernels: per-layer overrides.
    use_direct_step: run a step without autograd (``feddst_core.sparse.direct_step``) when every layer is on
    the native path (the same numbers); False always takes the autograd path.
    """

    def __init__(self, spec: ModelSpec, config: TrainConfig, kernels: str = "auto",
                 thresholds: Mapping[str, Sequence[SparseThreshold]] | None = None,
                 layer_kernels: Mapping[str, str] | None = None, use_direct_step: bool = True):
        if config.batch_size < 1 or config.local_epochs < 0:
            raise ValueError("batch_size must be >= 1 and local_epochs >= 0")
        self.spec = spec
        self.config = config
        self.kernels = validate_kernels(kernels)
        self.thresholds = thresholds
        self.layer_kernels = dict(layer_kernels or {})
        self.use_direct_step = use_direct_step
        self.last_layer_kernels: dict[str, str] = {}  # the choice of the last train() call, for reports

    def layer_choice(self, global_masks: Mapping[str, torch.Tensor]) -> dict[str, str]:
        """The per-layer kernel ("sparse" | "dense") this trainer would use for these masks."""
        return choose_layer_kernels(self.spec, global_masks, self.kernels, self.thresholds,
                                    self.layer_kernels)

    def train(self, global_params: Mapping[str, torch.Tensor], global_masks: Mapping[str, torch.Tensor],
              datasets: Sequence[ClientData], seeds: Sequence[int], readjust_fraction: float = 0.0,
              ) -> list[ClientOutcome]:
        """Same contract as ``LocalTrainer.train`` for exactly one client."""
        if len(datasets) != 1 or len(seeds) != 1:
            raise ValueError(f"SparseLocalTrainer trains one client at a time, got {len(datasets)} datasets "
                             f"and {len(seeds)} seeds; use LocalTrainer to batch clients")
        if all(choice == "dense" for choice in self.layer_choice(global_masks).values()):
            # Nothing is faster sparse for these masks: LocalTrainer is the same math, bit for bit.
            self.last_layer_kernels = self.layer_choice(global_masks)
            return LocalTrainer(self.spec, self.config).train(global_params, global_masks, datasets, seeds,
                                                              readjust_fraction)
        # Row-major once per round, so every batch ``data.x[idx]`` is too (see ``models.row_major``).
        data, seed = ClientData(row_major(datasets[0].x), datasets[0].y), seeds[0]
        cfg = self.config
        n = len(data)
        state = self.start(global_params, global_masks)
        generator = torch.Generator().manual_seed(seed)
        epoch_loss = torch.zeros(())
        changes: dict[str, LayerReadjustment] = {}
        # LocalTrainer's schedule: readjust before epoch ``readjust_epoch()`` (E // 2 by default, E = after).
        readjust_at = LocalTrainer(self.spec, cfg).readjust_epoch() if readjust_fraction > 0 else -1
        for epoch in range(cfg.local_epochs + 1):
            if epoch == readjust_at:
                changes = self._readjust_state(state, global_params, data, readjust_fraction)
            if epoch == cfg.local_epochs:
                break
            order = torch.randperm(n, generator=generator)  # (n,)
            epoch_loss = torch.zeros(())
            for start in range(0, n, cfg.batch_size):
                idx = order[start:start + cfg.batch_size]  # (b,)
                loss = self.step(state, data.x[idx], data.y[idx])
                epoch_loss += loss * idx.shape[0]
            epoch_loss /= max(n, 1)
        params = state.dense_params()
        masks = state.all_masks()
        return [ClientOutcome(params=params, masks=masks, mask_changes=changes, num_samples=n,
                              train_loss=float(epoch_loss))]

    def start(self, global_params: Mapping[str, torch.Tensor],
              global_masks: Mapping[str, torch.Tensor]) -> ClientState:
        """A client's training state at the start of a round (kernels chosen, CSR built)."""
        choice = self.layer_choice(global_masks)
        self.last_layer_kernels = choice
        patterns = {f"{ly}.weight": CsrPattern.from_mask(global_masks[f"{ly}.weight"])
                    for ly, c in choice.items() if c == "sparse"}
        # No dense bool mask is kept for a sparse layer: its pattern is the mask (rebuilt for the outcome).
        masks = {nm: m.clone() for nm, m in global_masks.items() if nm not in patterns}
        leaves = self._initial_leaves(global_params, masks, patterns)
        anchors = ({nm: (patterns[nm].gather(t) if nm in patterns else t).detach()
                    for nm, t in global_params.items()} if self.config.prox_mu > 0 else None)
        small_dense = all(t.numel() <= SMALL_DENSE_LEAF for nm, t in leaves.items() if nm not in patterns)
        return ClientState(leaves, patterns, masks, anchors, {}, small_dense=small_dense)

    def step(self, state: ClientState, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        """One SGD step on a batch xb (b, C, H, W), yb (b,); returns the batch's mean loss (detached).
        With only small dense leaves (``state.small_dense``) and the native kernels, torch runs this step's
        ops on one thread and the kernels on ``torch.get_num_threads()`` (restored afterwards)."""
        threads = torch.get_num_threads()
        if not (state.small_dense and threads > 1 and native.available()):
            return self._step(state, xb, yb)
        with native.kernel_threads(threads):
            torch.set_num_threads(1)
            try:
                return self._step(state, xb, yb)
            finally:
                torch.set_num_threads(threads)

    def _step(self, state: ClientState, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        fused = self._fused_sgd(state)  # these leaves take their step in their layer's backward
        if self.use_direct_step and supports_direct_step(self.spec, state.leaves, state.patterns, fused):
            loss, direct_grads = direct_step(self.spec, state.leaves, state.patterns, fused, xb, yb)
            self._sgd_step(state, {nm: direct_grads[nm] for nm in state.leaves if nm in direct_grads})
            return loss
        names = [nm for nm in state.leaves if nm not in fused]
        logits = forward_mixed(self.spec, state.leaves, state.patterns, xb, fused)  # (b, classes)
        loss = F.cross_entropy(logits, yb)
        grads = torch.autograd.grad(loss, [state.leaves[nm] for nm in names])
        self._sgd_step(state, dict(zip(names, grads, strict=True)))
        return loss.detach()

    def _fused_sgd(self, state: ClientState) -> dict[str, FusedSgd]:
        """The SGD steps the native sparse linear layers run inside their backward (``FusedSgd``: the same
        formula as ``_sgd_step``'s ``native.sgd_step_``, so their (nnz,) gradients are never written): every
        float32 sparse Linear weight when the native kernels are built, else none. Creates a zero momentum
        buffer on first use (a zero buffer plus the gradient is the gradient: the first step's buffer)."""
        if not native.available():
            return {}
        cfg = self.config
        fused = {}
        for name in linear_weight_names(self.spec):
            values = state.leaves.get(name)
            if name not in state.patterns or values is None or values.dtype != torch.float32:
                continue
            buffer = state.buffers.get(name)
            if cfg.momentum and buffer is None:
                buffer = state.buffers[name] = torch.zeros_like(values)
            anchor = state.anchors[name] if state.anchors is not None else None
            fused[name] = FusedSgd(cfg.lr, cfg.momentum, cfg.weight_decay, buffer, False,
                                   None if anchor is None else anchor.contiguous(), cfg.prox_mu)
        return fused

    @staticmethod
    def _initial_leaves(global_params: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor],
                        patterns: Mapping[str, CsrPattern]) -> dict[str, torch.Tensor]:
        """Trainable tensors: CSR values (nnz,) for sparse weights, masked dense copies otherwise."""
        leaves: dict[str, torch.Tensor] = {}
        for nm, t in global_params.items():
            if nm in patterns:
                leaf = patterns[nm].gather(t.detach())
            else:
                leaf = t.detach().clone().contiguous()
                if nm in masks:
                    leaf.mul_(masks[nm])
            leaves[nm] = leaf.requires_grad_(True)
        return leaves

    @torch.no_grad()
    def _sgd_step(self, state: ClientState, grads: Mapping[str, torch.Tensor]) -> None:
        """LocalTrainer's SGD; CSR values need no mask (all of them are active). With the native kernels
        each leaf's FedProx term, mask, decay, momentum and update are one native pass
        (``native.sgd_step_``: the same formula as ``sgd_update``, to float rounding). grads: the leaves to step
        (those whose step was fused into their backward, ``_fused_sgd``, are not in it)."""
        cfg = self.config
        use_native = native.available()
        for name, grad in grads.items():
            p, g = state.leaves[name], grad.contiguous()
            anchor = state.anchors[name] if state.anchors is not None else None
            mask = state.masks.get(name)  # None for sparse values (all active) and unmasked leaves
            if use_native and p.dtype == torch.float32 and (anchor is None or anchor.is_contiguous()):
                buf = state.buffers.get(name)
                first = buf is None
                if cfg.momentum and buf is None:
                    buf = state.buffers[name] = torch.empty_like(p)
                native.sgd_step_(p, g, buf, cfg.lr, cfg.momentum, cfg.weight_decay, mask, anchor, cfg.prox_mu, first)
                continue
            if anchor is not None:
                g = g.add(p - anchor, alpha=cfg.prox_mu)  # d/dp of mu/2 * ||p - p_global||^2
            sgd_update(name, p, g, mask, state.buffers, cfg)

    def _readjust_state(self, state: ClientState, global_params: Mapping[str, torch.Tensor], data: ClientData,
                        fraction: float) -> dict[str, LayerReadjustment]:
        """Prune by magnitude, regrow by the dense gradient of the mean loss on all local data.

        The only dense weight gradient of the round: computed here on dense copies of the weights.
        Afterwards dropped weights are 0 and gone from CSR, grown weights start at 0 with momentum 0,
        and CSR patterns, values, momentum and FedProx anchors are rebuilt for the new masks.
        """
        masks = state.all_masks()
        names = list(masks)
        params = state.dense_params()
        dense = {nm: t.unsqueeze(0).requires_grad_(nm in masks) for nm, t in params.items()}  # (1, ...)
        logits = forward(self.spec, dense, data.x.unsqueeze(0))[0]  # (n, classes)
        loss = F.cross_entropy(logits, data.y)
        dense_grads = torch.autograd.grad(loss, [dense[nm] for nm in names])
        new_masks, changes = readjust_masks(masks, {nm: params[nm] for nm in names},
                                            {nm: g[0] for nm, g in zip(names, dense_grads, strict=True)},
                                            fraction)
        with torch.no_grad():
            for nm in names:
                mask = new_masks[nm]
                if nm in state.patterns:
                    old, new = state.patterns[nm], CsrPattern.from_mask(mask)
                    state.patterns[nm] = new
                    state.leaves[nm] = new.gather(params[nm] * mask).requires_grad_(True)
                    if nm in state.buffers:
                        state.buffers[nm] = new.gather(old.scatter(state.buffers[nm]))  # grown -> 0
                    if state.anchors is not None:
                        state.anchors[nm] = new.gather(global_params[nm].detach())
                else:
                    state.leaves[nm].mul_(mask)
                    if nm in state.buffers:
                        state.buffers[nm].mul_(mask)
                    state.masks[nm] = mask
        return changes


def make_local_trainer(spec: ModelSpec, config: TrainConfig, kernels: str = "dense",
                       thresholds: Mapping[str, Sequence[SparseThreshold]] | None = None,
                       ) -> LocalTrainer | SparseLocalTrainer:
    """The local trainer for a ``--kernels`` flag: "dense" -> LocalTrainer (batches K clients);
    "auto" | "sparse" -> SparseLocalTrainer (one client per call). thresholds: the auto policy's
    table (e.g. a device's own, from ``thresholds_from_dict``); None = the measured default."""
    if validate_kernels(kernels) == "dense":
        return LocalTrainer(spec, config)
    return SparseLocalTrainer(spec, config, kernels=kernels, thresholds=thresholds)

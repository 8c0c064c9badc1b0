"""``SparseLocalTrainer``: LocalTrainer's contract and math for one client, with CSR layers.

Layers the policy marks sparse hold only their active weights (``values`` (nnz,), a ``CsrPattern``)
and an ``(nnz,)`` momentum buffer; the others run as masked dense layers exactly as in
``feddst_core.training.LocalTrainer``. Data order, batching, loss, FedProx term, SGD and
readjustment semantics are LocalTrainer's, so results agree to float rounding (tests: 1e-4).

The dense gradient that readjustment needs is computed once, after the last epoch, on dense copies
of the weights; the new masks are then converted back to CSR.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

from feddst_core.models import Conv, Flatten, Linear, MaxPool, ModelSpec, ReLU, forward
from feddst_core.readjust import MaskChange, readjust_masks
from feddst_core.sparse.kernels import CsrPattern, sparse_conv2d, sparse_linear
from feddst_core.sparse.policy import SparseThreshold, choose_layer_kernels, validate_kernels
from feddst_core.training import ClientData, ClientOutcome, LocalTrainer, TrainConfig


def forward_mixed(spec: ModelSpec, leaves: Mapping[str, torch.Tensor], patterns: Mapping[str, CsrPattern],
                  x: torch.Tensor) -> torch.Tensor:
    """Logits of one client's model on x (B, C, H, W) -> (B, classes).

    ``leaves["<layer>.weight"]`` is the (nnz,) CSR values when ``"<layer>.weight"`` is in
    ``patterns``, else the dense weight; biases are dense.
    """
    b = x.shape[0]
    act = x.contiguous(memory_format=torch.channels_last)  # (B, C, H, W); fast stride-1 max-pools
    for layer in spec.layers:
        if isinstance(layer, Conv):
            weight, bias = leaves[f"{layer.name}.weight"], leaves[f"{layer.name}.bias"]
            pattern = patterns.get(f"{layer.name}.weight")
            if pattern is None:
                act = F.conv2d(act, weight, bias)  # (B, out, H', W')
            else:
                act = sparse_conv2d(act.contiguous(), weight, bias, pattern)
                act = act.contiguous(memory_format=torch.channels_last)
        elif isinstance(layer, MaxPool):
            act = F.max_pool2d(act, layer.kernel, layer.stride)
        elif isinstance(layer, ReLU):
            act = F.relu(act)
        elif isinstance(layer, Flatten):
            act = act.reshape(b, -1)  # (B, C*H*W), per-sample C, H, W order
        elif isinstance(layer, Linear):
            weight, bias = leaves[f"{layer.name}.weight"], leaves[f"{layer.name}.bias"]
            pattern = patterns.get(f"{layer.name}.weight")
            if pattern is None:
                # W @ x^T: autograd returns a contiguous (out, in) weight gradient (as models.forward).
                act = torch.addmm(bias.unsqueeze(1), weight, act.t()).t()  # (B, out)
            else:
                act = sparse_linear(act, weight, bias, pattern)  # (B, out)
    assert act.dim() == 2, "a model must end in Linear layers"
    return act


class SparseLocalTrainer:
    """Trains one client (K = 1) with CSR kernels where the policy says they are faster.

    kernels: "auto" | "sparse" | "dense" (see ``feddst_core.sparse.policy``). thresholds: the auto
    policy's table (default: the measured ``DEFAULT_THRESHOLDS``). layer_kernels: per-layer overrides.
    """

    def __init__(self, spec: ModelSpec, config: TrainConfig, kernels: str = "auto",
                 thresholds: Mapping[str, SparseThreshold] | None = None,
                 layer_kernels: Mapping[str, str] | None = None):
        if config.batch_size < 1 or config.local_epochs < 0:
            raise ValueError("batch_size must be >= 1 and local_epochs >= 0")
        self.spec = spec
        self.config = config
        self.kernels = validate_kernels(kernels)
        self.thresholds = thresholds
        self.layer_kernels = dict(layer_kernels or {})
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
        data, seed = datasets[0], seeds[0]
        cfg = self.config
        n = len(data)
        choice = self.layer_choice(global_masks)
        self.last_layer_kernels = choice
        masks = {nm: m.clone() for nm, m in global_masks.items()}
        patterns = {f"{ly}.weight": CsrPattern.from_mask(masks[f"{ly}.weight"])
                    for ly, c in choice.items() if c == "sparse"}
        leaves = self._initial_leaves(global_params, masks, patterns)
        anchors = ({nm: (patterns[nm].gather(t) if nm in patterns else t).detach()
                    for nm, t in global_params.items()} if cfg.prox_mu > 0 else None)
        names = list(leaves)
        buffers: dict[str, torch.Tensor] = {}
        generator = torch.Generator().manual_seed(seed)
        epoch_loss = torch.zeros(())
        for _ in range(cfg.local_epochs):
            order = torch.randperm(n, generator=generator)  # (n,)
            epoch_loss = torch.zeros(())
            for start in range(0, n, cfg.batch_size):
                idx = order[start:start + cfg.batch_size]  # (b,)
                logits = forward_mixed(self.spec, leaves, patterns, data.x[idx])  # (b, classes)
                loss = F.cross_entropy(logits, data.y[idx])
                grads = torch.autograd.grad(loss, [leaves[nm] for nm in names])
                grad_by_name = dict(zip(names, grads, strict=True))
                self._sgd_step(leaves, grad_by_name, masks, patterns, anchors, buffers)
                epoch_loss += loss.detach() * idx.shape[0]
            epoch_loss /= max(n, 1)

        params = {nm: (patterns[nm].scatter(t.detach()) if nm in patterns else t.detach().clone())
                  for nm, t in leaves.items()}
        changes: dict[str, MaskChange] = {}
        if readjust_fraction > 0:
            masks, changes = self._readjust(params, masks, data, readjust_fraction)
        return [ClientOutcome(params=params, masks=masks, mask_changes=changes, num_samples=n,
                              train_loss=float(epoch_loss))]

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
    def _sgd_step(self, leaves: dict[str, torch.Tensor], grads: Mapping[str, torch.Tensor],
                  masks: Mapping[str, torch.Tensor], patterns: Mapping[str, CsrPattern],
                  anchors: Mapping[str, torch.Tensor] | None, buffers: dict[str, torch.Tensor]) -> None:
        """torch.optim.SGD semantics on masked gradients; CSR values need no mask (all active)."""
        cfg = self.config
        for name, p in leaves.items():
            g = grads[name].contiguous()
            if anchors is not None:
                g = g.add(p - anchors[name], alpha=cfg.prox_mu)  # d/dp of mu/2 * ||p - p_global||^2
            if name in masks and name not in patterns:
                g.mul_(masks[name])  # masked-out: gradient 0, weight 0 => decay 0, momentum stays 0
            if cfg.weight_decay:
                g.add_(p, alpha=cfg.weight_decay)
            if cfg.momentum:
                buf = buffers.get(name)
                if buf is None:
                    buf = buffers[name] = g
                else:
                    torch.add(g, buf, alpha=cfg.momentum, out=buf)  # buf = momentum * buf + g
                g = buf
            p.sub_(g, alpha=cfg.lr)

    def _readjust(self, params: dict[str, torch.Tensor], masks: dict[str, torch.Tensor], data: ClientData,
                  fraction: float) -> tuple[dict[str, torch.Tensor], dict[str, MaskChange]]:
        """Prune by magnitude, regrow by the dense gradient of the mean loss on all local data.

        params: dense weights (updated in place: dropped weights -> 0, grown weights start at 0).
        """
        names = list(masks)
        dense = {nm: t.unsqueeze(0).requires_grad_(nm in masks) for nm, t in params.items()}  # (1, ...)
        logits = forward(self.spec, dense, data.x.unsqueeze(0))[0]  # (n, classes)
        loss = F.cross_entropy(logits, data.y)
        dense_grads = torch.autograd.grad(loss, [dense[nm] for nm in names])
        new_masks, changes = readjust_masks(masks, {nm: params[nm] for nm in names},
                                            {nm: g[0] for nm, g in zip(names, dense_grads, strict=True)},
                                            fraction)
        for nm in names:
            params[nm].mul_(new_masks[nm])
        return new_masks, changes


def make_local_trainer(spec: ModelSpec, config: TrainConfig, kernels: str = "dense",
                       ) -> LocalTrainer | SparseLocalTrainer:
    """The local trainer for a ``--kernels`` flag: "dense" -> LocalTrainer (batches K clients);
    "auto" | "sparse" -> SparseLocalTrainer (one client per call)."""
    if validate_kernels(kernels) == "dense":
        return LocalTrainer(spec, config)
    return SparseLocalTrainer(spec, config, kernels=kernels)

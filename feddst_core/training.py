"""Local training: masked SGD (momentum, weight decay, optional FedProx term) and the local DST step.

``LocalTrainer.train`` trains K clients at once (``K = 1`` on a device). Every client starts from
the same global weights and mask, sees only its own data in its own seeded order, and ends with
its own weights and (after a readjustment) its own mask. Masked-out weights stay exactly zero
through every step: their gradient is masked before momentum and weight decay touch it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from feddst_core.masks import apply_masks
from feddst_core.models import ModelSpec, Params, forward
from feddst_core.readjust import LayerReadjustment, readjust_masks


@dataclass(frozen=True)
class TrainConfig:
    """Client optimiser settings (the paper's defaults)."""

    lr: float = 0.01  # SGD learning rate
    momentum: float = 0.9  # SGD momentum (buffer reset every round)
    weight_decay: float = 0.001  # L2 coefficient, applied to active weights only
    batch_size: int = 32  # local mini-batch size
    local_epochs: int = 10  # passes over the local data per round
    prox_mu: float = 0.0  # FedProx coefficient: loss += mu/2 * ||w - w_global||^2
    # Readjust the mask before this local epoch (None = halfway, E // 2). Readjusting mid-round lets
    # the regrown weights (which start at 0) train before upload; readjusting after the last epoch
    # uploads them as zeros, and the server's magnitude pruning then always drops them again.
    readjust_epoch: int | None = None


@dataclass(frozen=True)
class ClientData:
    """One client's local training set: x (n, C, H, W) float32, y (n,) int64."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])


@dataclass
class ClientOutcome:
    """What one client sends back after a round of local training."""

    params: Params  # trained weights (masked-out entries exactly 0) and biases
    masks: dict[str, torch.Tensor]  # the client's mask after this round
    mask_changes: dict[str, LayerReadjustment]  # empty unless the round readjusted the mask
    num_samples: int
    train_loss: float  # mean cross-entropy over the last local epoch


def client_seed(seed: int, server_round: int, client_id: int) -> int:
    """The seed of one client's data order in one round: the same in the simulator and on a device."""
    digest = hashlib.sha256(f"feddst:{seed}:{server_round}:{client_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


@torch.no_grad()
def sgd_update(name: str, p: torch.Tensor, g: torch.Tensor, mask: torch.Tensor | None,
               buffers: dict[str, torch.Tensor], config: TrainConfig) -> None:
    """One torch.optim.SGD step (dampening 0, no Nesterov) of parameter ``p`` in place.

    ``g`` is a fresh gradient this function may modify. With a ``mask`` the gradient is masked first:
    a masked-out weight (exactly 0) then gets no gradient, no decay and no momentum, so it stays 0.
    """
    if mask is not None:
        g.mul_(mask)
    if config.weight_decay:
        g.add_(p, alpha=config.weight_decay)
    if config.momentum:
        buf = buffers.get(name)
        if buf is None:
            buf = buffers[name] = g
        else:
            torch.add(g, buf, alpha=config.momentum, out=buf)  # buf = momentum * buf + g
        g = buf
    p.sub_(g, alpha=config.lr)


class LocalTrainer:
    """Trains K clients of one round together (grouped convolutions, batched matmuls)."""

    def __init__(self, spec: ModelSpec, config: TrainConfig):
        if config.batch_size < 1 or config.local_epochs < 0:
            raise ValueError("batch_size must be >= 1 and local_epochs >= 0")
        self.spec = spec
        self.config = config

    def train(self, global_params: Mapping[str, torch.Tensor], global_masks: Mapping[str, torch.Tensor],
              datasets: Sequence[ClientData], seeds: Sequence[int], readjust_fraction: float = 0.0,
              ) -> list[ClientOutcome]:
        """Train ``len(datasets)`` clients, all with the same number of samples, from the global model.

        global_params: one client's tensors (no client axis). global_masks: bool, for masked names.
        readjust_fraction: alpha_t of this round; 0 means no mask readjustment.
        """
        k = len(datasets)
        assert k == len(seeds) and k > 0
        n = len(datasets[0])
        if any(len(d) != n for d in datasets):
            raise ValueError("clients trained together must hold the same number of samples")
        cfg = self.config
        x = torch.stack([d.x for d in datasets])  # (K, n, C, H, W)
        y = torch.stack([d.y for d in datasets])  # (K, n)
        masks = {name: m.unsqueeze(0).expand(k, *m.shape).clone() for name, m in global_masks.items()}
        params = {name: t.detach().unsqueeze(0).repeat(k, *([1] * t.dim())).contiguous()
                  for name, t in global_params.items()}  # (K, ...)
        apply_masks(params, masks)  # (K, ...) masks on (K, ...) parameters
        for p in params.values():
            p.requires_grad_(True)
        anchor = ({name: t.detach().unsqueeze(0) for name, t in global_params.items()}
                  if cfg.prox_mu > 0 else None)
        buffers: dict[str, torch.Tensor] = {}
        generators = [torch.Generator().manual_seed(s) for s in seeds]
        rows = torch.arange(k).unsqueeze(1)  # (K, 1) for gathering per-client batches
        names = list(params)
        epoch_loss = torch.zeros(k)
        changes: list[dict[str, LayerReadjustment]] = [{} for _ in range(k)]
        readjust_at = self.readjust_epoch() if readjust_fraction > 0 else -1
        for epoch in range(cfg.local_epochs + 1):
            if epoch == readjust_at:
                masks, changes = self._readjust(params, masks, x, y, readjust_fraction)
                with torch.no_grad():
                    for nm, buf in buffers.items():
                        if nm in masks:
                            buf.mul_(masks[nm])  # momentum of dropped weights gone, grown ones start at 0
            if epoch == cfg.local_epochs:
                break
            order = torch.stack([torch.randperm(n, generator=g) for g in generators])  # (K, n)
            epoch_loss = torch.zeros(k)
            for start in range(0, n, cfg.batch_size):
                idx = order[:, start:start + cfg.batch_size]  # (K, b)
                per_client = self._loss(params, x[rows, idx], y[rows, idx])  # (K,)
                total = per_client.sum()
                if anchor is not None:
                    prox = sum(((params[nm] - anchor[nm]) ** 2).sum() for nm in names)
                    total = total + cfg.prox_mu / 2.0 * prox
                grads = torch.autograd.grad(total, [params[nm] for nm in names])
                self._sgd_step(params, dict(zip(names, grads, strict=True)), masks, buffers)
                epoch_loss += per_client.detach() * idx.shape[1]
            epoch_loss /= max(n, 1)

        out: list[ClientOutcome] = []
        for i in range(k):
            out.append(ClientOutcome(
                params={nm: params[nm][i].detach().clone() for nm in names},
                masks={nm: masks[nm][i].clone() for nm in masks},
                mask_changes=changes[i], num_samples=n, train_loss=float(epoch_loss[i])))
        return out

    def readjust_epoch(self) -> int:
        """Local epoch before which the mask is readjusted (``local_epochs`` = after the last one)."""
        e = self.config.local_epochs
        at = self.config.readjust_epoch
        return e // 2 if at is None else min(max(at, 0), e)

    def _loss(self, params: Mapping[str, torch.Tensor], xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        """Per-client mean cross-entropy on a (K, b, ...) batch -> (K,)."""
        logits = forward(self.spec, params, xb)  # (K, b, classes)
        k, b = yb.shape
        losses = F.cross_entropy(logits.reshape(k * b, -1), yb.reshape(-1), reduction="none")
        return losses.view(k, b).mean(dim=1)

    @torch.no_grad()
    def _sgd_step(self, params: dict[str, torch.Tensor], grads: Mapping[str, torch.Tensor],
                  masks: Mapping[str, torch.Tensor], buffers: dict[str, torch.Tensor]) -> None:
        for name, p in params.items():
            sgd_update(name, p, grads[name].contiguous(), masks.get(name), buffers, self.config)

    def _readjust(self, params: dict[str, torch.Tensor], masks: dict[str, torch.Tensor], x: torch.Tensor,
                  y: torch.Tensor, fraction: float,
                  ) -> tuple[dict[str, torch.Tensor], list[dict[str, LayerReadjustment]]]:
        """Prune by magnitude and regrow by the dense gradient on the full local data (one pass)."""
        k = x.shape[0]
        names = list(masks)
        loss = self._loss(params, x, y).sum()
        dense_grads = torch.autograd.grad(loss, [params[nm] for nm in names])  # (K, ...) each
        new_masks = {nm: masks[nm].clone() for nm in names}
        changes: list[dict[str, LayerReadjustment]] = []
        for i in range(k):
            client_masks, client_changes = readjust_masks(
                {nm: masks[nm][i] for nm in names}, {nm: params[nm][i].detach() for nm in names},
                {nm: g[i] for nm, g in zip(names, dense_grads, strict=True)}, fraction)
            for nm in names:
                new_masks[nm][i] = client_masks[nm]
            changes.append(client_changes)
        with torch.no_grad():
            for nm in names:
                params[nm].mul_(new_masks[nm])  # dropped weights -> 0; grown weights start at 0
        return new_masks, changes

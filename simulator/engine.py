"""The in-process simulator: the same strategy, trainer and byte accounting as the live system,
without a network. ``Simulation.run_rounds()`` yields one ``RoundRecord`` per round."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from datasources import Dataset, load_dataset
from feddst_core.evaluation import client_and_global_accuracy
from feddst_core.masks import density
from feddst_core.models import ModelSpec, get_model_spec
from feddst_core.partition import Partition, make_partition
from feddst_core.sparse import SparseLocalTrainer, make_local_trainer
from feddst_core.strategies import ClientReply, FedStrategy, ServerState, StrategyConfig
from feddst_core.training import ClientData, ClientOutcome, LocalTrainer, TrainConfig, client_seed
from simulator.accounting import ByteMeter
from simulator.config import DATASET_MODELS, SimulationConfig


@dataclass
class RoundRecord:
    """One round's outcome; bytes are cumulative since round 1."""

    round: int
    upload_bytes: int
    download_bytes: int
    density: float
    train_loss: float
    seconds: float
    accuracy: float | None = None  # mean over clients of the global model's local-test accuracy
    global_accuracy: float | None = None  # on the full test set


def model_for(config: SimulationConfig, data: Dataset) -> ModelSpec:
    name = config.model or DATASET_MODELS[config.dataset]
    if name is None:
        # npz data: pick the paper model whose input matches, else fail clearly.
        matches = [m for m in ("mnist_cnn", "cifar10_cnn", "digits_cnn")
                   if get_model_spec(m).input_shape == data.input_shape]
        if not matches:
            raise ValueError(f"no built-in model takes inputs of shape {data.input_shape}; "
                             "supported: (1, 28, 28), (3, 32, 32), (1, 8, 8)")
        name = matches[0]
    spec = get_model_spec(name)
    if spec.input_shape != data.input_shape:
        raise ValueError(f"model {spec.name} expects inputs {spec.input_shape}, data has {data.input_shape}")
    return spec


class Simulation:
    """Holds the data, the partition, the strategy and the global state of one simulated run."""

    def __init__(self, config: SimulationConfig, dataset: Dataset | None = None):
        self.config = config
        self.data = dataset if dataset is not None else load_dataset(config.dataset, config.data_dir)
        self.spec = model_for(config, self.data)
        self.partition: Partition = make_partition(
            config.partition, self.data.y_train, self.data.y_test, config.clients, config.seed,
            config.classes_per_client, config.samples_per_class, config.beta)
        self.strategy = FedStrategy(self.spec, StrategyConfig(
            algorithm=config.algorithm, sparsity=config.sparsity, distribution=config.distribution,
            mask_init=config.mask_init, readjust_ratio=config.readjust_ratio,
            readjust_every=config.readjust_every, readjust_until=config.t_end, prox_mu=config.prox_mu,
            server_momentum=config.server_momentum, min_votes=config.min_votes,
            clients_per_round=config.clients_per_round, aggregation=config.aggregation,
            trim_fraction=config.trim_fraction, clip_update_norm=config.clip_update_norm))
        self.x_train = torch.from_numpy(self.data.x_train)
        self.y_train = torch.from_numpy(self.data.y_train)
        self.x_test = torch.from_numpy(self.data.x_test)
        self.y_test = torch.from_numpy(self.data.y_test)
        self.state: ServerState = self.strategy.initialize(config.seed)
        self.rng = np.random.default_rng(config.seed)
        self.meter = ByteMeter(config.upload_format)
        self.server_round = 0
        self.workers = max(1, torch.get_num_threads())  # threads for batched client training

    def client_data(self, client: int) -> ClientData:
        idx = torch.from_numpy(self.partition.train[client])
        return ClientData(self.x_train[idx], self.y_train[idx])

    def train_config(self, prox_mu: float) -> TrainConfig:
        c = self.config
        return TrainConfig(lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay,
                           batch_size=c.batch_size, local_epochs=c.local_epochs, prox_mu=prox_mu)

    def train_clients(self, clients: list[int], readjust_fraction: float, prox_mu: float,
                      server_round: int) -> list[tuple[int, ClientOutcome]]:
        """Local training of the round's clients.

        With ``--kernels auto|sparse`` (auto is the default, what devices run) every client is trained by
        ``SparseLocalTrainer``: the layers the policy picks for this round's global masks hold only
        their active weights and run the CPU sparse kernels. Only when the policy keeps every layer
        dense (e.g. FedAvg, or small layers) are clients of equal data size batched through grouped
        convolutions (``LocalTrainer``, K clients per call); ``--kernels dense`` always does that.
        ``--no-client-batching`` trains with the same trainer, one client per call.

        The work (single clients, or groups) is spread over ``self.workers`` Python threads that each
        run one torch thread (torch and the native kernels release the GIL), as separate agent processes
        would: on these small per-client tensors that beats intra-op threading on 2 cores. Each client's
        result does not depend on which thread trained it (float summation order aside: the native
        weight gradients sum per thread, so 1 and 2 threads differ in the last bits).
        """
        trainer = make_local_trainer(self.spec, self.train_config(prox_mu), self.config.kernels,
                                     self.config.kernel_threshold_table)
        if isinstance(trainer, SparseLocalTrainer) and all(
                choice == "dense" for choice in trainer.layer_choice(self.state.masks).values()):
            trainer = LocalTrainer(self.spec, self.train_config(prox_mu))  # the same math, batchable
        if self.config.client_batching and isinstance(trainer, LocalTrainer):
            groups: dict[int, list[int]] = defaultdict(list)
            for c in clients:
                groups[len(self.partition.train[c])].append(c)
            chunks = [g[i::self.workers] for g in groups.values() for i in range(self.workers) if g[i::self.workers]]
        else:
            chunks = [[c] for c in clients]
        parallel = self.workers > 1 and len(chunks) > 1

        def train_chunk(chunk: list[int]) -> list[tuple[int, ClientOutcome]]:
            if parallel:
                torch.set_num_threads(1)  # per worker thread (OpenMP settings are thread-local)
            outcomes = trainer.train(self.state.params, self.state.masks, [self.client_data(c) for c in chunk],
                                     [client_seed(self.config.seed, server_round, c) for c in chunk],
                                     readjust_fraction)
            return list(zip(chunk, outcomes, strict=True))

        results: list[tuple[int, ClientOutcome]] = []
        if parallel:
            threads = torch.get_num_threads()
            try:
                torch.set_num_threads(1)
                with ThreadPoolExecutor(self.workers) as pool:
                    for part in pool.map(train_chunk, chunks):
                        results.extend(part)
            finally:
                torch.set_num_threads(threads)
        else:
            for chunk in chunks:
                results.extend(train_chunk(chunk))
        results.sort(key=lambda r: r[0])
        return results

    def evaluate(self) -> tuple[float, float]:
        """(mean over clients of local-test accuracy, full test-set accuracy) of the global model."""
        return client_and_global_accuracy(self.spec, self.state.params, self.x_test, self.y_test,
                                          self.partition.test)

    def run_rounds(self) -> Iterator[RoundRecord]:
        cfg = self.config
        upload = download = 0
        client_ids = list(range(cfg.clients))
        for server_round in range(1, cfg.rounds + 1):
            t0 = time.perf_counter()
            plan = self.strategy.configure_round(server_round, self.state, client_ids, self.rng)
            download += len(plan.clients) * self.meter.model_broadcast_bytes(self.state, server_round)
            trained = self.train_clients(plan.clients, plan.readjust_fraction, plan.prox_mu, server_round)
            replies = []
            for client, outcome in trained:
                sent, received = self.meter.received_update(outcome, self.state.masks, server_round, client)
                upload += sent
                replies.append(ClientReply(client, received, outcome.masks, outcome.num_samples,
                                           outcome.train_loss))
            new_state, metrics = self.strategy.aggregate_round(server_round, self.state, replies)
            assert new_state is not None
            self.state = new_state
            self.server_round = server_round
            record = RoundRecord(round=server_round, upload_bytes=upload, download_bytes=download,
                                 density=density(self.state.masks), train_loss=metrics["train_loss"],
                                 seconds=time.perf_counter() - t0)
            if server_round % cfg.eval_every == 0 or server_round == cfg.rounds:
                record.accuracy, record.global_accuracy = self.evaluate()
            yield record

"""The main loop's group commit skips its wait when a batch completes the open round
(``InboundHandling._completes_round``): nothing more is awaited, and waiting would delay the round's close."""

from __future__ import annotations

from types import SimpleNamespace

from cloud.inbound_handling import InboundHandling
from cloud.mqtt_link import Inbound
from cloud.round_collector import RoundCollector
from feddst_core.models import get_model_spec
from feddst_core.strategies import FedStrategy, StrategyConfig
from protocol import Status, Update, decode_message_with_envelope, encode_message

DEVICES = ("dev-a", "dev-b", "dev-c")


def _handling(accepted: tuple[str, ...] = (), errors: tuple[str, ...] = ()) -> InboundHandling:
    strategy = FedStrategy(get_model_spec("digits_cnn"), StrategyConfig(clients_per_round=3))
    collector = RoundCollector("run-1", 2, DEVICES, strategy.begin_aggregation(strategy.initialize(0)))
    collector.accepted.update({d: 100 for d in accepted})
    collector.errors.update({d: ("training_failed", "x") for d in errors})
    handling = InboundHandling.__new__(InboundHandling)  # only the open round is read
    handling._execution = SimpleNamespace(collector=collector)
    return handling


def _item(message, sender: str) -> Inbound:  # noqa: ANN001
    decoded = decode_message_with_envelope(encode_message(message, sender_id=sender, seq=1))
    return Inbound("message", decoded=decoded)


def _update(device: str, server_round: int = 2, run_id: str = "run-1") -> Inbound:
    return _item(Update(run_id=run_id, server_round=server_round, device_id=device, tensors={}, mask_changes={},
                        sample_count=1, train_loss=0.0, compute_s=0.0), device)


def test_the_last_outstanding_update_completes_the_round() -> None:
    assert _handling(accepted=("dev-a", "dev-b"))._completes_round([_update("dev-c")])
    assert _handling(accepted=("dev-a",), errors=("dev-b",))._completes_round([_update("dev-c")])
    assert _handling()._completes_round([_update(d) for d in DEVICES])


def test_anything_short_of_that_waits_for_more() -> None:
    assert not _handling(accepted=("dev-a",))._completes_round([_update("dev-b")])  # dev-c still owes one
    assert not _handling(accepted=("dev-a",))._completes_round([_update("dev-b"), _update("dev-b")])
    assert not _handling(accepted=("dev-a", "dev-b"))._completes_round([_update("dev-c", server_round=1)])
    assert not _handling(accepted=("dev-a", "dev-b"))._completes_round([_update("dev-c", run_id="run-0")])
    assert not _handling(accepted=("dev-a", "dev-b"))._completes_round([_item(Status("dev-c", "online"), "dev-c")])


def test_no_open_round_never_skips_the_wait() -> None:
    handling = InboundHandling.__new__(InboundHandling)
    handling._execution = None
    assert not handling._completes_round([_update("dev-c")])
    handling._execution = SimpleNamespace(collector=None)  # between rounds
    assert not handling._completes_round([_update("dev-c")])

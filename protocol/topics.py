"""MQTT topic layout, QoS/retain choices and broker ACL templates.

Layout (``<run>`` and ``<device>`` are identifiers, see ``protocol.messages.IDENTIFIER_PATTERN``,
so they never contain ``/``, ``+`` or ``#``)::

    feddst/v1/runs/<run>/task              coordinator -> all devices  nothing since revision 3 (was: the Task)
    feddst/v1/runs/<run>/model/<round>/<i> coordinator -> selected     chunk i of round's ModelBroadcast (retained)
    feddst/v1/runs/<run>/control           coordinator -> all devices  Abort
    feddst/v1/runs/<run>/final             coordinator -> subscribers  RunCompleted (the final model, chunked)
    feddst/v1/runs/<run>/update/<device>   device -> coordinator       Update (often chunked)
    feddst/v1/runs/<run>/ack/<device>      coordinator -> device       Ack of an update
    feddst/v1/devices/<device>/register    device -> coordinator       Register
    feddst/v1/devices/<device>/status      device -> coordinator       Status heartbeat + last will
    feddst/v1/devices/<device>/inbox       coordinator -> device       this device's Task; Ack of a register

Runs and devices live under different second-level segments (``runs`` / ``devices``) so no run
id can collide with a device topic. Everything a device may *write* ends in its own id, so a
broker ACL keyed on the MQTT username (= device id) confines each device to its own topics:
it reads the broadcast topics of every run, its own ack/inbox, and writes only its own
update/register/status topics. It can never read another device's update or status.

Model delivery (topic layout revision 2): the ModelBroadcast of round ``r`` is published once per
round, each chunk ``i`` (index 0 for an unchunked message) on its own *retained* topic
``runs/<run>/model/<r>/<i>``; a device subscribes to ``runs/<run>/model/<r>/+`` only when a Task
selects it (and unsubscribes once the model is whole), so only selected devices receive model
bytes, while the broker still does the fan-out (the coordinator uploads the model once). Retained
chunks also reach a device selected later (a retried round) or one that restarted mid-round and
subscribes again. The coordinator clears them (empty retained publishes) when the round closes;
devices ignore empty payloads.

Task delivery (topic layout revision 3): each selected device gets its own Task, listing only
itself in ``selected``, on its own ``devices/<device>/inbox`` (same message type, schema and
signature as before: each is Ed25519-signed by the coordinator with its own seq); nothing is
published on ``runs/<run>/task`` any more, so unselected devices receive nothing. Why: in revision
2 one Task listing every selected id went to every device of the run, O(N^2) bytes through the
broker: at 10 000 selected devices the Task was 120 KB, 1.2 GB per round (12 MB at 1000), and every
device decoded a 10 000-id tuple; a per-device Task is ~225 bytes, 2.25 MB per round at 10 000.
The cost moves to the coordinator: N signatures and N publishes when the round opens (10 000 Tasks:
0.75 s to encode and sign, 0.4-0.6 s to hand to paho, isolated; 3-10 s of the main loop in a loaded
10 000-device round; see docs/results.md "Fleet scale, per-device Task").
Compatibility: agents still subscribe to ``runs/<run>/task`` (and accept a Task on either topic),
so a revision-2 coordinator still works with revision-3 agents; revision-2 agents already accept a
Task on their inbox (the re-send to a device that registers mid-round), so they work with a
revision-3 coordinator. The ACL templates keep ``runs/+/task`` for that reason.

QoS and retain (see :data:`TOPIC_POLICIES` for the per-topic reasons): everything uses QoS 1
(at least once; decoders tolerate duplicates: chunk duplicates are ignored and messages carry
a sequence number), because QoS 0 loses round-critical messages on flaky links and QoS 2's
extra round trip buys nothing the sequence number does not. Only ``status`` is retained.
"""

from __future__ import annotations

from dataclasses import dataclass

from protocol.errors import InvalidMessageError
from protocol.messages import COORDINATOR_ID, is_identifier

ROOT = "feddst/v1"
QOS_TASK = 1
QOS_MODEL = 1
QOS_CONTROL = 1
QOS_FINAL = 1
QOS_UPDATE = 1
QOS_ACK = 1
QOS_REGISTER = 1
QOS_STATUS = 1
RETAIN_TASK = False
RETAIN_MODEL = True
RETAIN_CONTROL = False
RETAIN_FINAL = False
RETAIN_UPDATE = False
RETAIN_ACK = False
RETAIN_REGISTER = False
RETAIN_STATUS = True


@dataclass(frozen=True)
class TopicPolicy:
    """Who publishes on a topic pattern, with which QoS and retain flag, and why."""

    pattern: str
    publisher: str
    qos: int
    retain: bool
    reason: str


TOPIC_POLICIES: tuple[TopicPolicy, ...] = (
    TopicPolicy(f"{ROOT}/runs/<run>/task", "coordinator", QOS_TASK, RETAIN_TASK,
                "Nothing since topic layout revision 3 (the Task goes to each selected device's inbox); "
                "devices still subscribe, for revision-2 coordinators, which publish the round's one Task "
                "here; not retained so a device joining later never acts on a stale round."),
    TopicPolicy(f"{ROOT}/runs/<run>/model/<round>/<chunk>", "coordinator", QOS_MODEL, RETAIN_MODEL,
                "One retained topic per chunk, so a device that subscribes when a Task selects it "
                "(or again after a restart) gets every chunk, and unselected devices get none; "
                "cleared by the coordinator when the round closes."),
    TopicPolicy(f"{ROOT}/runs/<run>/control", "coordinator", QOS_CONTROL, RETAIN_CONTROL,
                "Abort must arrive (QoS 1) but must not be replayed to a later run's devices."),
    TopicPolicy(f"{ROOT}/runs/<run>/final", "coordinator", QOS_FINAL, RETAIN_FINAL,
                "Once per completed run: the final global model, for devices that keep it (only those "
                "subscribe, so only they pay its bytes); chunked, so not retained, like the model topic."),
    TopicPolicy(f"{ROOT}/runs/<run>/update/<device>", "device", QOS_UPDATE, RETAIN_UPDATE,
                "Each update is consumed once by the coordinator; retaining would replay it."),
    TopicPolicy(f"{ROOT}/runs/<run>/ack/<device>", "coordinator", QOS_ACK, RETAIN_ACK,
                "Tells the device its update was accepted so it can stop retrying."),
    TopicPolicy(f"{ROOT}/devices/<device>/register", "device", QOS_REGISTER, RETAIN_REGISTER,
                "Sent on every start; the coordinator's registry is the durable copy."),
    TopicPolicy(f"{ROOT}/devices/<device>/status", "device", QOS_STATUS, RETAIN_STATUS,
                "Retained so a restarting coordinator immediately sees every device's last state; "
                "the MQTT last will is a retained Status 'offline' on this topic."),
    TopicPolicy(f"{ROOT}/devices/<device>/inbox", "coordinator", QOS_TASK, RETAIN_ACK,
                "To one device: its Task of a round (revision 3; QoS 1, and devices use persistent "
                "sessions, so it is queued across short drops) and Acks of its Register; not retained, "
                "so a device joining later never acts on a stale round."),
)


def _identifier(value: str, what: str) -> str:
    if not is_identifier(value):
        raise InvalidMessageError(f"{what} {value!r} is not a valid identifier")
    return value


def task(run_id: str) -> str:
    return f"{ROOT}/runs/{_identifier(run_id, 'run id')}/task"


def model(run_id: str, server_round: int) -> str:
    """The prefix of round ``server_round``'s model chunk topics (no message is published on it)."""
    if isinstance(server_round, bool) or not isinstance(server_round, int) or server_round < 0:
        raise InvalidMessageError(f"server round {server_round!r} is not a non-negative integer")
    return f"{ROOT}/runs/{_identifier(run_id, 'run id')}/model/{server_round}"


def model_chunk(run_id: str, server_round: int, index: int) -> str:
    """The retained topic of chunk ``index`` (0 for an unchunked message) of a round's ModelBroadcast."""
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise InvalidMessageError(f"chunk index {index!r} is not a non-negative integer")
    return f"{model(run_id, server_round)}/{index}"


def model_filter(run_id: str, server_round: int) -> str:
    """The filter a selected device subscribes to for one round's model: every chunk topic."""
    return f"{model(run_id, server_round)}/+"


def all_models_filter(run_id: str | None = None) -> str:
    """Every round's model chunks (of one run, or all runs): for devices that opt into every global model."""
    run = "+" if run_id is None else _identifier(run_id, "run id")
    return f"{ROOT}/runs/{run}/model/+/+"


def model_round_of(topic: str) -> tuple[str, int] | None:
    """``(run id, round)`` of a model chunk topic, None for any other topic."""
    parts = topic.split("/")
    if (len(parts) != 7 or "/".join(parts[:2]) != ROOT or parts[2] != "runs" or parts[4] != "model"
            or not parts[5].isdigit() or not parts[6].isdigit() or not is_identifier(parts[3])):
        return None
    return parts[3], int(parts[5])


def control(run_id: str) -> str:
    return f"{ROOT}/runs/{_identifier(run_id, 'run id')}/control"


def final(run_id: str) -> str:
    return f"{ROOT}/runs/{_identifier(run_id, 'run id')}/final"


def update(run_id: str, device_id: str) -> str:
    return f"{ROOT}/runs/{_identifier(run_id, 'run id')}/update/{_identifier(device_id, 'device id')}"


def ack(run_id: str, device_id: str) -> str:
    return f"{ROOT}/runs/{_identifier(run_id, 'run id')}/ack/{_identifier(device_id, 'device id')}"


def register(device_id: str) -> str:
    return f"{ROOT}/devices/{_identifier(device_id, 'device id')}/register"


def status(device_id: str) -> str:
    return f"{ROOT}/devices/{_identifier(device_id, 'device id')}/status"


def inbox(device_id: str) -> str:
    return f"{ROOT}/devices/{_identifier(device_id, 'device id')}/inbox"


def device_subscriptions(device_id: str, run_id: str | None = None, *,
                         final_model: bool = False) -> list[tuple[str, int]]:
    """``(topic filter, qos)`` pairs a device subscribes to (all runs if ``run_id`` is None).

    ``final_model``: also the runs' ``final`` topic (a device that keeps the final model, e.g. as
    model.onnx; the others never receive those bytes)."""
    run = "+" if run_id is None else _identifier(run_id, "run id")
    device = _identifier(device_id, "device id")
    filters = [
        (f"{ROOT}/runs/{run}/task", QOS_TASK),
        (f"{ROOT}/runs/{run}/control", QOS_CONTROL),
        (f"{ROOT}/runs/{run}/ack/{device}", QOS_ACK),
        (f"{ROOT}/devices/{device}/inbox", QOS_ACK),
    ]
    if final_model:
        filters.insert(3, (f"{ROOT}/runs/{run}/final", QOS_FINAL))
    return filters


def coordinator_subscriptions(run_id: str | None = None) -> list[tuple[str, int]]:
    """``(topic filter, qos)`` pairs the coordinator subscribes to."""
    run = "+" if run_id is None else _identifier(run_id, "run id")
    return [
        (f"{ROOT}/runs/{run}/update/+", QOS_UPDATE),
        (f"{ROOT}/devices/+/register", QOS_REGISTER),
        (f"{ROOT}/devices/+/status", QOS_STATUS),
    ]


def _acl_lines(device: str) -> list[str]:
    return [
        f"topic read {ROOT}/runs/+/task",
        f"topic read {ROOT}/runs/+/model/#",
        f"topic read {ROOT}/runs/+/control",
        f"topic read {ROOT}/runs/+/final",
        f"topic read {ROOT}/runs/+/ack/{device}",
        f"topic read {ROOT}/devices/{device}/inbox",
        f"topic write {ROOT}/runs/+/update/{device}",
        f"topic write {ROOT}/devices/{device}/register",
        f"topic write {ROOT}/devices/{device}/status",
    ]


def device_acl(device_id: str) -> list[str]:
    """Mosquitto ``acl_file`` lines giving MQTT user ``device_id`` exactly its own topics."""
    return [f"user {_identifier(device_id, 'device id')}", *_acl_lines(device_id)]


def device_acl_patterns() -> list[str]:
    """Mosquitto ``pattern`` lines doing :func:`device_acl` for every user at once (``%u``)."""
    return [line.replace("topic ", "pattern ", 1) for line in _acl_lines("%u")]


def coordinator_acl(user: str = COORDINATOR_ID) -> list[str]:
    """Mosquitto ``acl_file`` lines for the coordinator's MQTT user."""
    return [
        f"user {_identifier(user, 'coordinator user')}",
        f"topic write {ROOT}/runs/+/task",
        f"topic write {ROOT}/runs/+/model/#",
        f"topic write {ROOT}/runs/+/control",
        f"topic write {ROOT}/runs/+/final",
        f"topic write {ROOT}/runs/+/ack/+",
        f"topic write {ROOT}/devices/+/inbox",
        f"topic read {ROOT}/runs/+/update/+",
        f"topic read {ROOT}/devices/+/register",
        f"topic read {ROOT}/devices/+/status",
    ]

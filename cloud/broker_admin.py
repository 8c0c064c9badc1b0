"""Broker credentials and ACLs at run time: mosquitto's dynamic-security plugin over MQTT.

Why dynsec (and not ``password_file``/``acl_file`` plus SIGHUP): its commands take effect at once on a
running broker, work from another host (the coordinator need not run beside the broker, nor be able
to write its files or signal it), and deleting a client *disconnects* it if it is connected, which is
what revocation needs. The file-based alternative (``deploy/make_broker_acl.py``) stays for brokers
without the plugin; EMQX's equivalent is its REST API (``deploy/emqx.md``).

Protocol: JSON ``{"commands": [...]}`` published on ``$CONTROL/dynamic-security/v1``, answers
``{"responses": [...]}`` on ``.../response``, matched by ``correlationData``. The admin MQTT user needs
the role that ``mosquitto_ctrl dynsec init FILE USER`` gives its user (``$CONTROL/dynamic-security/#``).

Per device the plugin holds one client (user name = device id, the MQTT password of the bundle) with
one role ``feddst-device-<id>`` made from :func:`protocol.topics.device_acl`: publish only on its own
update/register/status topics, subscribe only to the broadcast topics and its own ack/inbox, receive
nothing else (a last deny-all receive ACL backs up the subscribe rules). The coordinator's user gets
the role ``feddst-coordinator`` from :func:`protocol.topics.coordinator_acl`.
"""

from __future__ import annotations

import json
import queue
import ssl
import uuid
from typing import Any

import paho.mqtt.client as mqtt

from cloud.errors import BrokerAdminError
from cloud.mqtt_link import TlsFiles
from protocol import topics

CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC = CONTROL_TOPIC + "/response"
COORDINATOR_ROLE = "feddst-coordinator"
DEVICE_ROLE_PREFIX = "feddst-device-"


def _acls_from_lines(lines: list[str], *, receive_only_own: bool) -> list[dict[str, Any]]:
    """mosquitto ``acl_file`` lines (``topic read|write FILTER``) as dynsec ACLs (priority 1 = allow list)."""
    acls: list[dict[str, Any]] = []
    for line in lines:
        if not line.startswith("topic "):
            continue
        _, access, topic = line.split(" ", 2)
        if access == "write":
            acls.append({"acltype": "publishClientSend", "topic": topic, "allow": True, "priority": 1})
        else:
            acls.append({"acltype": "subscribePattern", "topic": topic, "allow": True, "priority": 1})
            acls.append({"acltype": "publishClientReceive", "topic": topic, "allow": True, "priority": 1})
    if receive_only_own:
        acls.append({"acltype": "publishClientReceive", "topic": "#", "allow": False, "priority": 0})
        acls.append({"acltype": "subscribePattern", "topic": "#", "allow": False, "priority": 0})
    return acls


def device_role_acls(device_id: str) -> list[dict[str, Any]]:
    """The dynsec ACLs of one device's role, generated from :func:`protocol.topics.device_acl`."""
    return _acls_from_lines(topics.device_acl(device_id), receive_only_own=True)


def coordinator_role_acls(username: str) -> list[dict[str, Any]]:
    return _acls_from_lines(topics.coordinator_acl(username), receive_only_own=False)


def device_role(device_id: str) -> str:
    return DEVICE_ROLE_PREFIX + device_id


class DynsecAdmin:
    """One admin MQTT connection to a mosquitto broker running the dynamic-security plugin.

    Use as a context manager; every method sends one batch of commands and raises
    :class:`BrokerAdminError` naming the first refused command (errors listed in ``tolerate`` are fine).
    """

    def __init__(self, host: str, port: int, username: str, password: str | None, *,
                 tls: TlsFiles | None = None, timeout_s: float = 10.0):
        self.host, self.port, self.timeout_s = host, port, timeout_s
        self._responses: queue.Queue[bytes] = queue.Queue()
        self._connack: queue.Queue[int] = queue.Queue()
        self._subacks: queue.Queue[bool] = queue.Queue()
        # A fresh client id per session: two admin sessions never take over each other's connection.
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{username}-{uuid.uuid4().hex[:8]}",
                                  protocol=mqtt.MQTTv311, clean_session=True)
        self.client.username_pw_set(username, password)
        if tls is not None:
            self.client.tls_set(ca_certs=tls.ca_file, certfile=tls.cert_file, keyfile=tls.key_file,
                                cert_reqs=ssl.CERT_REQUIRED)
        self.client.on_connect = lambda c, u, f, rc, p: self._connack.put(int(rc.value))
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self._subacks.put(all(not r.is_failure for r in rcs))
        self.client.on_message = lambda c, u, m: self._responses.put(bytes(m.payload))
        self._username = username

    def __enter__(self) -> DynsecAdmin:
        where = f"{self.host}:{self.port}"
        try:
            self.client.connect(self.host, self.port, keepalive=30)
        except (OSError, ssl.SSLError) as exc:
            raise BrokerAdminError(f"cannot reach the MQTT broker at {where} to manage credentials: {exc}") from exc
        self.client.loop_start()
        try:
            code = self._connack.get(timeout=self.timeout_s)
        except queue.Empty:
            self.close()
            raise BrokerAdminError(f"the broker at {where} did not answer the admin CONNECT") from None
        if code != 0:
            self.close()
            raise BrokerAdminError(f"the broker at {where} refused admin user {self._username!r} (code {code}): "
                                   "check broker_admin_username/broker_admin_password")
        result, _ = self.client.subscribe(RESPONSE_TOPIC, qos=1)
        ok = result == mqtt.MQTT_ERR_SUCCESS and self._wait(self._subacks)
        if not ok:
            self.close()
            raise BrokerAdminError(f"admin user {self._username!r} may not use {RESPONSE_TOPIC}: is the "
                                   "dynamic-security plugin loaded and the user its admin "
                                   "(mosquitto_ctrl dynsec init)?")
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _wait(self, q: queue.Queue) -> Any:
        try:
            return q.get(timeout=self.timeout_s)
        except queue.Empty:
            return None

    def run(self, commands: list[dict[str, Any]], tolerate: tuple[str, ...] = ()) -> list[dict[str, Any]]:
        """Send ``commands`` in one message; returns the responses (raises on an untolerated error)."""
        correlation = uuid.uuid4().hex
        for command in commands:
            command["correlationData"] = correlation
        info = self.client.publish(CONTROL_TOPIC, json.dumps({"commands": commands}), qos=1)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise BrokerAdminError(f"cannot send dynsec commands: {mqtt.error_string(info.rc)}")
        while True:
            raw = self._wait(self._responses)
            if raw is None:
                raise BrokerAdminError(f"no answer from the dynamic-security plugin within {self.timeout_s} s "
                                       "(plugin not loaded, or the admin user lacks its role?)")
            try:
                responses = json.loads(raw)["responses"]
            except (ValueError, KeyError, TypeError):
                continue
            if not responses or responses[0].get("correlationData") != correlation:
                continue
            for response in responses:
                error = response.get("error")
                if error and not any(t in error for t in tolerate):
                    raise BrokerAdminError(f"broker refused {response.get('command')}: {error}")
            return list(responses)

    # --- FedDST operations ----------------------------------------------------------------------------

    def ensure_coordinator(self, username: str, password: str | None = None) -> None:
        """Give the coordinator's user its role (idempotent; creates the user with ``password`` if missing)."""
        response = self.run([{"command": "getClient", "username": username}], tolerate=("not found",))[0]
        if response.get("error"):
            if password is None:
                raise BrokerAdminError(f"the broker has no user {username!r} (the coordinator's mqtt_username) "
                                       "and no mqtt_password is set to create it")
            self.run([{"command": "createClient", "username": username, "password": password}])
            roles: list[str] = []
        else:
            roles = [r.get("rolename") for r in response.get("data", {}).get("client", {}).get("roles", [])]
        if COORDINATOR_ROLE in roles:
            return
        self.run([{"command": "createRole", "rolename": COORDINATOR_ROLE, "acls": coordinator_role_acls(username)}],
                 tolerate=("already exists",))
        self.run([{"command": "addClientRole", "username": username, "rolename": COORDINATOR_ROLE, "priority": 1}])

    def add_device(self, device_id: str, password: str) -> None:
        """(Re)create the device's client and role; an existing client is deleted first, which disconnects it."""
        role = device_role(device_id)
        self.run([{"command": "deleteClient", "username": device_id},
                  {"command": "deleteRole", "rolename": role}], tolerate=("not found",))
        self.run([{"command": "createRole", "rolename": role, "acls": device_role_acls(device_id)},
                  {"command": "createClient", "username": device_id, "password": password,
                   "roles": [{"rolename": role, "priority": 1}]}])

    def remove_device(self, device_id: str) -> None:
        """Delete the device's client (disconnecting it now) and its role; no error if they are gone."""
        self.run([{"command": "deleteClient", "username": device_id},
                  {"command": "deleteRole", "rolename": device_role(device_id)}], tolerate=("not found",))

    def client_exists(self, username: str) -> bool:
        responses = self.run([{"command": "getClient", "username": username}], tolerate=("not found",))
        return not responses[0].get("error")

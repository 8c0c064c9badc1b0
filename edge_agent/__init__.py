"""The edge agent: one device's side of FedDST Edge (``feddst agent run``).

Modules: ``config`` (AgentSettings: flags > env > file > defaults), ``data`` (local data and the
``--partition I/N`` share), ``capabilities`` (what the device is), ``mqtt_adapter`` (the one paho
MQTT adapter: persistent session, last will, reconnects), ``local_training`` (task + model ->
Update, exactly the simulator's per-client path) and ``agent`` (the main loop). Never imports
``cloud``. Operator guide: ``docs/agent.md``.
"""

"""The cloud coordinator: a FastAPI app plus one MQTT client that runs federated rounds.

Layout: ``settings`` (start-up configuration), ``run_config`` (the validated body of
``POST /api/runs``), ``store`` (SQLite + safetensors persistence), ``device_registry``,
``mqtt_link`` (the one MQTT adapter), ``round_collector`` (accept/ignore/count updates of one
round), ``coordinator`` (the main loop), ``evaluation``, ``run_planning`` (what a run config
needs from this coordinator: data roots, loadable data), ``access_tokens`` (API bearer tokens and
roles), ``errors`` (domain errors with their HTTP status), ``api`` (routers) and ``app``
(``create_app``). ``embedded_broker`` launches an in-process amqtt broker for ``feddst demo``.
Never imports ``edge_agent``.
"""

"""``configure_logging``: one format for every line the coordinator process writes (stderr).

``2026-12-01 22:41:07,123 INFO cloud.coordinator: run run-1a2b round 3/20: accuracy 81.20%, ...``:
time, level, logger and message on every line, for the coordinator's own loggers (``cloud.*``,
per-round INFO lines included) and uvicorn's (``uvicorn.error``, ``uvicorn.access``), which
propagate to the root handler installed here (``uvicorn.run(log_config=None)``).
"""

from __future__ import annotations

import logging

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LEVELS = ("debug", "info", "warning", "error")
QUIET_LOGGERS = ("amqtt", "transitions")


def configure_logging(level: str = "info") -> None:
    """Install one stderr handler on the root logger at ``level`` (one of ``LEVELS``); idempotent."""
    if level.lower() not in LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LEVELS)}, got {level!r}")
    logging.basicConfig(level=level.upper(), format=LOG_FORMAT, force=True)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
        logger.setLevel(level.upper())
    for name in QUIET_LOGGERS:  # chatty at INFO (the embedded broker's per-connection lines)
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLevelName(level.upper())))

"""Domain errors raised by the coordinator's services; only the API routes turn them into HTTP errors."""


class CoordinatorError(Exception):
    """Base class."""


class RunNotFoundError(CoordinatorError):
    """No run with that id (HTTP 404)."""


class RunStateError(CoordinatorError):
    """The run cannot do that in its current state, e.g. start a completed run (HTTP 409)."""


class ModelNotAvailableError(CoordinatorError):
    """The run has no global model yet (HTTP 404)."""


class BrokerUnavailableError(CoordinatorError):
    """The MQTT broker cannot be reached (HTTP 503 / start-up failure)."""

"""Domain errors raised by the coordinator's services, and the one place they map to HTTP.

Each error class carries its HTTP status in ``http_status``; :func:`cloud.app.create_app`
installs one exception handler for :class:`CoordinatorError` that answers
``{"detail": str(error)}`` (schema :class:`cloud.schemas.ErrorOut`) with that status, so routes
never catch domain errors themselves. :class:`RunConfigRejectedError` answers 422 in the shape of
FastAPI's request validation errors (``{"detail": [{"loc", "msg", "type"}]}``).
"""

from __future__ import annotations

from typing import ClassVar


class CoordinatorError(Exception):
    """Base class."""

    http_status: ClassVar[int] = 500


class AuthenticationRequiredError(CoordinatorError):
    """No bearer token, or one that is unknown, malformed or revoked (HTTP 401, ``WWW-Authenticate: Bearer``)."""

    http_status = 401


class PermissionDeniedError(CoordinatorError):
    """The token's role is too weak for the request (HTTP 403)."""

    http_status = 403


class RunNotFoundError(CoordinatorError):
    """No run with that id (HTTP 404)."""

    http_status = 404


class DeviceNotFoundError(CoordinatorError):
    """No device with that id in the registry (HTTP 404)."""

    http_status = 404


class ModelNotAvailableError(CoordinatorError):
    """The run has no global model yet (HTTP 404)."""

    http_status = 404


class RunStateError(CoordinatorError):
    """The run cannot do that in its current state, e.g. start a completed run (HTTP 409)."""

    http_status = 409


class RunConfigRejectedError(CoordinatorError):
    """A run config that parses but that this coordinator cannot run, e.g. an evaluation data dir
    outside the configured data roots (HTTP 422). ``loc`` is the field path inside the config."""

    http_status = 422

    def __init__(self, loc: tuple[str, ...], message: str):
        super().__init__(f"{'.'.join(loc)}: {message}" if loc else message)
        self.loc = loc
        self.message = message


class BrokerUnavailableError(CoordinatorError):
    """The MQTT broker cannot be reached: at start-up the process exits; starting a run while the
    coordinator is disconnected answers HTTP 503."""

    http_status = 503


class DeviceAlreadyEnrolledError(CoordinatorError):
    """The device is enrolled and active; re-issuing its credentials must be asked for (HTTP 409)."""

    http_status = 409


class DeviceNotEnrolledError(CoordinatorError):
    """No enrollment for that device id (HTTP 404)."""

    http_status = 404


class InvalidDeviceIdError(CoordinatorError, ValueError):
    """Not a usable device id (HTTP 422)."""

    http_status = 422


class BrokerAdminError(CoordinatorError, RuntimeError):
    """The broker could not be reached, refused the admin user, or refused a command (HTTP 502)."""

    http_status = 502

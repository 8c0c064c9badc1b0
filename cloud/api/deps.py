"""``Annotated`` dependencies shared by the routers: the coordinator and bearer-token access control.

``ViewerDep`` (every GET), ``OperatorDep`` (create/start/stop runs) and ``AdminDep`` (devices,
tokens) each resolve to the caller's :class:`~cloud.access_tokens.TokenInfo`; roles nest (admin >
operator > viewer). No or a bad token raises :class:`~cloud.errors.AuthenticationRequiredError`
(401 with ``WWW-Authenticate: Bearer``), a weaker role :class:`~cloud.errors.PermissionDeniedError`
(403); the app's one error handler turns them into responses. The scheme is FastAPI's
``HTTPBearer``, so OpenAPI lists it on every protected operation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from cloud.access_tokens import Role, TokenInfo, role_allows
from cloud.coordinator import Coordinator
from cloud.errors import AuthenticationRequiredError, PermissionDeniedError
from cloud.schemas import ErrorOut


def get_coordinator(request: Request) -> Coordinator:
    return request.app.state.coordinator


CoordinatorDep = Annotated[Coordinator, Depends(get_coordinator)]

bearer_scheme = HTTPBearer(
    auto_error=False, scheme_name="BearerToken",
    description="An API token from `feddst cloud token create --role {viewer,operator,admin}`, sent as "
                "`Authorization: Bearer TOKEN`.")
BearerCredentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)]

AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut, "description": "No API token, or an unknown, malformed or revoked one "
          "(header `WWW-Authenticate: Bearer`)."},
    403: {"model": ErrorOut, "description": "The token's role is too weak for this operation."},
}


def authorize(coordinator: Coordinator, credentials: HTTPAuthorizationCredentials | None, needed: Role) -> TokenInfo:
    """The caller's token if it is active and its role is ``needed`` or stronger; raises otherwise."""
    if credentials is None:
        raise AuthenticationRequiredError(
            "this endpoint needs an API token: send 'Authorization: Bearer TOKEN' (an administrator creates one "
            "with `feddst cloud token create --role ROLE --state-dir STATE_DIR`)")
    token = coordinator.tokens.verify(credentials.credentials)
    if token is None:
        raise AuthenticationRequiredError("the API token is unknown, malformed or revoked")
    if not role_allows(token.role, needed):
        raise PermissionDeniedError(f"this operation needs role {needed} or stronger; token {token.id} has role "
                                    f"{token.role}")
    return token


def require_viewer(coordinator: CoordinatorDep, credentials: BearerCredentials) -> TokenInfo:
    return authorize(coordinator, credentials, "viewer")


def require_operator(coordinator: CoordinatorDep, credentials: BearerCredentials) -> TokenInfo:
    return authorize(coordinator, credentials, "operator")


def require_admin(coordinator: CoordinatorDep, credentials: BearerCredentials) -> TokenInfo:
    return authorize(coordinator, credentials, "admin")


ViewerDep = Annotated[TokenInfo, Depends(require_viewer)]
OperatorDep = Annotated[TokenInfo, Depends(require_operator)]
AdminDep = Annotated[TokenInfo, Depends(require_admin)]


ROLE_DEPENDENCIES = {require_viewer: "viewer", require_operator: "operator", require_admin: "admin"}


def role_required_by(route: object) -> Role | None:
    """The role a route's ``ViewerDep``/``OperatorDep``/``AdminDep`` parameter needs (None: an open route).

    Used to authorize a request whose body could not even be parsed (FastAPI parses JSON before it
    solves dependencies), so that a caller without a token learns nothing from a malformed body."""
    dependant = getattr(route, "dependant", None)
    for dependency in getattr(dependant, "dependencies", ()):
        role = ROLE_DEPENDENCIES.get(dependency.call)
        if role is not None:
            return role  # type: ignore[return-value]
    return None


MAX_PAGE = 10_000


@dataclass(frozen=True)
class Page:
    """``?limit=L&offset=O`` of a list endpoint; the response header ``X-Total-Count`` gives the full count."""

    limit: int
    offset: int
    response: Response

    def slice(self, items: list) -> list:
        self.response.headers["X-Total-Count"] = str(len(items))
        return items[self.offset:self.offset + self.limit]


def pagination(request: Request, response: Response,
               limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description="Items per page (1..10000).")] = 1000,
               offset: Annotated[int, Query(ge=0, description="Items to skip (0-based).")] = 0) -> Page:
    """``limit``/``offset``; any other query parameter is a 422 naming it (a typo must not be ignored)."""
    unknown = sorted(set(request.query_params) - {"limit", "offset"})
    if unknown:
        raise RequestValidationError([{"loc": ("query", name), "msg": "unknown query parameter; this list takes "
                                       "limit and offset", "type": "extra_forbidden"} for name in unknown])
    return Page(limit, offset, response)


PageDep = Annotated[Page, Depends(pagination)]

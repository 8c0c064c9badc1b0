"""API bearer tokens: roles, issuing, verifying and revoking, kept hashed in the coordinator's SQLite file.

A token is ``feddst_<id>_<secret>``: ``id`` is 12 hex digits (public, shown by ``token ls`` and used
to revoke), ``secret`` is 32 random bytes from :mod:`secrets` as URL-safe base64 (43 characters).
Only ``SHA-256(secret)`` is stored (table ``api_tokens`` in ``state_dir/coordinator.sqlite3``), so
the token is printed once, when it is created, and cannot be recovered. Verification looks the row
up by ``id`` and compares the hashes with :func:`hmac.compare_digest`.

Roles nest: ``admin`` (devices, tokens) implies ``operator`` (create/start/stop runs) implies
``viewer`` (every GET). Every check reads the database, so a token created or revoked by
``feddst cloud token`` in another process takes effect on the next request.

This module imports neither torch nor FastAPI: the ``feddst cloud token`` commands stay fast.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Role = Literal["viewer", "operator", "admin"]
ROLES: tuple[Role, ...] = ("viewer", "operator", "admin")  # weakest first; each implies the ones before
DB_NAME = "coordinator.sqlite3"
TOKEN_PREFIX = "feddst"
_TOKEN_RE = re.compile(r"^feddst_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")

SCHEMA = """
CREATE TABLE IF NOT EXISTS api_tokens (
    id TEXT PRIMARY KEY, name TEXT NOT NULL DEFAULT '', role TEXT NOT NULL, secret_sha256 TEXT NOT NULL,
    created_at REAL NOT NULL, revoked_at REAL, last_used_at REAL
);
"""


def role_allows(held: str, needed: Role) -> bool:
    """True if a token with role ``held`` may do what needs ``needed`` (admin > operator > viewer)."""
    return held in ROLES and ROLES.index(held) >= ROLES.index(needed)


class TokenNotFoundError(LookupError):
    """No token with that id."""


@dataclass(frozen=True)
class TokenInfo:
    """A token's row (never its secret). Times are Unix seconds."""

    id: str
    name: str
    role: str
    created_at: float
    revoked_at: float | None
    last_used_at: float | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


class TokenStore:
    """The ``api_tokens`` table of one state directory (its own SQLite connection, thread-safe)."""

    def __init__(self, state_dir: Path):
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.state_dir / DB_NAME, check_same_thread=False, isolation_level=None,
                                   timeout=10.0)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _execute(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def create(self, role: str, name: str = "") -> tuple[str, TokenInfo]:
        """A new token of ``role``: (the token itself, shown only now; its row)."""
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}; choose one of {', '.join(ROLES)}")
        token_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)
        self._execute("INSERT INTO api_tokens (id, name, role, secret_sha256, created_at) VALUES (?, ?, ?, ?, ?)",
                      (token_id, name, role, _sha256(secret), time.time()))
        return f"{TOKEN_PREFIX}_{token_id}_{secret}", self.get(token_id)

    def verify(self, token: str) -> TokenInfo | None:
        """The active token's row if ``token`` is one (and note its use), else None."""
        match = _TOKEN_RE.match(token)
        if match is None:
            return None
        token_id, secret = match.groups()
        rows = self._execute("SELECT secret_sha256, revoked_at FROM api_tokens WHERE id = ?", (token_id,))
        if not rows or not hmac.compare_digest(rows[0][0], _sha256(secret)) or rows[0][1] is not None:
            return None
        self._execute("UPDATE api_tokens SET last_used_at = ? WHERE id = ?", (time.time(), token_id))
        return self.get(token_id)

    def revoke(self, token_id: str) -> TokenInfo:
        """Revoke a token by id (idempotent: an already revoked token keeps its first revocation time)."""
        self.get(token_id)
        self._execute("UPDATE api_tokens SET revoked_at = COALESCE(revoked_at, ?) WHERE id = ?",
                      (time.time(), token_id))
        return self.get(token_id)

    def get(self, token_id: str) -> TokenInfo:
        rows = self._execute("SELECT id, name, role, created_at, revoked_at, last_used_at FROM api_tokens "
                             "WHERE id = ?", (token_id,))
        if not rows:
            raise TokenNotFoundError(f"no API token with id {token_id!r}")
        return TokenInfo(*rows[0])

    def list(self) -> list[TokenInfo]:
        rows = self._execute("SELECT id, name, role, created_at, revoked_at, last_used_at FROM api_tokens "
                             "ORDER BY created_at, id")
        return [TokenInfo(*r) for r in rows]

    def active_count(self) -> int:
        return int(self._execute("SELECT COUNT(*) FROM api_tokens WHERE revoked_at IS NULL")[0][0])


def _sha256(secret: str) -> str:
    return hashlib.sha256(secret.encode("ascii")).hexdigest()

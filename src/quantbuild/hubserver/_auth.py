"""Who a token belongs to and what that user may do: the Hub's model, reduced to what a shared server needs.

A token names a user, a role and the user's organisations. Users write only in their own namespace and
their organisations'; private repos are visible only there; protected tags (version tags, `v*` by default)
are never deleted or moved but by an admin; the admin endpoints need the admin role.
"""

from __future__ import annotations

import fnmatch
import hmac
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

from ._storage import NAME_RE

ROLES = ("read", "write", "admin")
DEFAULT_PROTECTED_TAGS = ("v*",)


@dataclass(frozen=True)
class Principal:
    user: str
    role: str = "read"
    orgs: tuple[str, ...] = field(default_factory=tuple)

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def member_of(self, namespace: str) -> bool:
        return self.is_admin or namespace == self.user or namespace in self.orgs

    def can_write(self, namespace: str) -> bool:
        return self.role in ("write", "admin") and self.member_of(namespace)


class TokenTable:
    """Token -> Principal. Lookups compare against every token in constant time per token, so neither
    the answer's timing nor an early exit tells how much of a guess was right."""

    def __init__(self, tokens: dict[str, dict | Principal] | None = None):
        self._entries: list[tuple[bytes, Principal]] = []
        for token, info in (tokens or {}).items():
            self._entries.append((str(token).encode(), info if isinstance(info, Principal) else principal(info)))

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, token: str) -> Principal | None:
        given, found = token.encode(), None
        for stored, who in self._entries:
            if hmac.compare_digest(stored, given):
                found = who
        return found


def principal(info: dict) -> Principal:
    """A Principal from {user, role?, orgs?}; ValueError names what is wrong."""
    if not isinstance(info, dict) or not isinstance(info.get("user"), str) or not NAME_RE.match(info["user"]):
        raise ValueError("each token needs a user (letters, digits, '-', '_', '.')")
    role = info.get("role", "read")
    if role not in ROLES:
        raise ValueError(f"role {role!r} of {info['user']} must be one of {', '.join(ROLES)}")
    orgs = info.get("orgs") or []
    if not isinstance(orgs, list) or not all(isinstance(o, str) and NAME_RE.match(o) for o in orgs):
        raise ValueError(f"orgs of {info['user']} must be a list of organisation names")
    return Principal(info["user"], role, tuple(orgs))


def protected(tag: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(tag, p) for p in patterns)


def check_private_file(path: Path) -> None:
    """A tokens file others can read leaks every token on the host: refuse it (as ssh does its keys)."""
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise PermissionError(f"{path} is readable by others (mode {stat.S_IMODE(mode):04o}): chmod 600 {path}")


def parse_env_tokens(value: str) -> dict[str, dict]:
    """QUANTBUILD_HUB_TOKENS: comma-separated `token=user:role[:org1+org2]`."""
    tokens: dict[str, dict] = {}
    for item in filter(None, (part.strip() for part in value.split(","))):
        token, _, rest = item.partition("=")
        user, _, rest = rest.partition(":")
        role, _, orgs = rest.partition(":")
        if not token or not re.fullmatch(r"[\x21-\x7e]+", token):
            raise ValueError("write token=user:role[:org1+org2] pairs, comma-separated")
        tokens[token] = {"user": user, "role": role or "read", "orgs": [o for o in orgs.split("+") if o]}
    return tokens

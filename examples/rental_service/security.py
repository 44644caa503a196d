"""Passwords and access tokens: scrypt hashes and HS256 JWTs (PyJWT)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import time
from dataclasses import dataclass

import jwt

_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**14, 8, 1


def hash_password(password: str) -> str:
    """Return ``scrypt$<salt>$<hash>`` for storage."""
    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P)
    return f"scrypt${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def verify_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches a value from :func:`hash_password` (constant time)."""
    try:
        scheme, salt_b64, digest_b64 = stored.split("$")
    except ValueError:
        return False
    if scheme != "scrypt":
        return False
    digest = hashlib.scrypt(
        password.encode(), salt=base64.b64decode(salt_b64), n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P
    )
    return hmac.compare_digest(digest, base64.b64decode(digest_b64))


@dataclass(frozen=True)
class TokenClaims:
    """What an access token says about its bearer."""

    member_id: str
    role: str
    email: str


class InvalidToken(Exception):
    """The token is missing, malformed, expired or not signed by us."""


def issue_token(claims: TokenClaims, *, secret: str, ttl_seconds: int) -> str:
    """Sign an access token."""
    now = int(time.time())
    payload = {
        "sub": claims.member_id,
        "role": claims.role,
        "email": claims.email,
        "iat": now,
        "exp": now + ttl_seconds,
    }
    return jwt.encode(payload, secret, algorithm="HS256")


def read_token(token: str, *, secret: str) -> TokenClaims:
    """Verify a token and return its claims.

    Raises:
        InvalidToken: The token cannot be trusted.
    """
    try:
        payload = jwt.decode(
            token, secret, algorithms=["HS256"], options={"require": ["exp", "sub"]}
        )
    except jwt.PyJWTError as exc:
        raise InvalidToken(str(exc)) from exc
    return TokenClaims(
        member_id=str(payload["sub"]),
        role=str(payload.get("role", "member")),
        email=str(payload.get("email", "")),
    )

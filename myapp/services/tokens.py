"""API tokens: high-entropy random strings, stored only as their SHA-256.

A token is ``mya_`` followed by 43 URL-safe characters (256 random bits). The
database keeps ``sha256(token)`` in hex (``companies.api_token_hash``, unique);
the token itself is shown once, when it is created. Since the token is random
and long, a fast hash is the right tool (no salt or key stretching is needed:
those protect low-entropy passwords); comparisons use :func:`hmac.compare_digest`.

The admin token is configured as its hash: ``myapp.admin_token_hash`` in the ini
file, or the ``MYAPP_ADMIN_TOKEN_HASH`` environment variable (which wins); several
hashes may be given, separated by commas or spaces, to rotate without downtime.
Create one with::

    myapp tokens create-admin
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Mapping
from typing import Any

PREFIX = "mya_"
ADMIN_SETTING = "myapp.admin_token_hash"
ADMIN_ENV = "MYAPP_ADMIN_TOKEN_HASH"


def new_token() -> str:
    """A fresh random token (256 bits of entropy)."""
    return PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """The SHA-256 of ``token`` in hex: what the database and the settings store."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token_and_hash() -> tuple[str, str]:
    token = new_token()
    return token, hash_token(token)


def same_hash(a: str | None, b: str | None) -> bool:
    """Constant-time comparison of two hex digests (False if either is missing)."""
    if not a or not b:
        return False
    return hmac.compare_digest(a.encode("ascii", "replace"), b.encode("ascii", "replace"))


def admin_token_hashes(settings: Mapping[str, Any]) -> tuple[str, ...]:
    """The configured admin token hashes (environment first, then settings); may be empty."""
    raw = os.environ.get(ADMIN_ENV) or settings.get(ADMIN_SETTING) or ""
    hashes = tuple(h.strip().lower() for h in str(raw).replace(",", " ").split() if h.strip())
    for h in hashes:
        if len(h) != 64 or any(c not in "0123456789abcdef" for c in h):
            raise ValueError(
                f"{ADMIN_SETTING}: {h[:12]}... is not a SHA-256 hex digest; "
                "create one with 'myapp tokens create-admin'"
            )
    return hashes


def is_admin_token(token_hash: str, settings: Mapping[str, Any]) -> bool:
    """Does ``token_hash`` match a configured admin token? Checks every hash, constant time."""
    match = False
    for admin_hash in admin_token_hashes(settings):
        match |= same_hash(token_hash, admin_hash)
    return match

"""OAUTHBEARER token providers for the secured-listener tests (`--sasl-oauth-token-provider
tests.integration.oauth_tokens:unsecured_jwt`). The local broker validates unsecured JWTs
(alg "none"): a real SASL/OAUTHBEARER exchange, without an identity provider."""

from __future__ import annotations

import base64
import json
import time

__all__ = ["rejected_token", "unsecured_jwt"]


def _part(doc: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(doc).encode()).rstrip(b"=").decode()


def unsecured_jwt() -> str:
    """A token for the principal `streamwise`, valid for an hour."""
    now = int(time.time())
    return f"{_part({'alg': 'none'})}.{_part({'sub': 'streamwise', 'iat': now, 'exp': now + 3600})}."


async def rejected_token() -> str:
    """Not a JWT at all: the broker refuses it (an async provider, as the hook allows)."""
    return "not-a-token"

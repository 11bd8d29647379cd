"""ICE servers for one session: TURN credentials minted by coturn's shared-secret scheme.

coturn's `use-auth-secret` / `static-auth-secret` (the "TURN REST API", draft-uberti-behave-turn-rest-00): the
server and coturn share a secret; per session the username is `<expiry unix time>:<name>` and the credential
is base64(HMAC-SHA1(secret, username)). coturn recomputes the credential and refuses an expired username, so
the secret itself never leaves the server and a leaked credential dies with its expiry.

No aiortc here: session.created carries these servers even where WebRTC is not installed.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from typing import Any

DEFAULT_TURN_TTL_S = 86400  # the draft's recommended lifetime: one day outlives any voice session
TURN_SCHEMES = ("turn:", "turns:")

__all__ = ["DEFAULT_TURN_TTL_S", "is_turn", "page_ice_servers", "session_ice_servers", "turn_rest_credentials"]


def turn_rest_credentials(secret: str, name: str, ttl_s: int, now: float | None = None) -> tuple[str, str]:
    """(username, credential) valid for `ttl_s` seconds from `now` (default: the wall clock)."""
    expiry = int(time.time() if now is None else now) + int(ttl_s)
    username = f"{expiry}:{name}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode("ascii")


def urls_of(server: dict[str, Any]) -> list[str]:
    urls = server.get("urls") or server.get("url") or []
    return [urls] if isinstance(urls, str) else list(urls)


def is_turn(server: dict[str, Any]) -> bool:
    return any(url.lower().startswith(TURN_SCHEMES) for url in urls_of(server))


def session_ice_servers(servers: list[dict[str, Any]], turn_secret: str | None, ttl_s: int, name: str,
                        now: float | None = None) -> list[dict[str, Any]]:
    """`servers` with minted credentials on every TURN entry that has none of its own (with a secret), as
    [{"urls": [...], "username"?, "credential"?}]: RTCIceServer's shape, for the page and for aiortc."""
    minted = turn_rest_credentials(turn_secret, name, ttl_s, now) if turn_secret else None
    out: list[dict[str, Any]] = []
    for server in servers:
        entry: dict[str, Any] = {"urls": urls_of(server)}
        if server.get("username") is not None:
            entry["username"], entry["credential"] = server["username"], server.get("credential")
        elif minted is not None and is_turn(server):
            entry["username"], entry["credential"] = minted
        out.append(entry)
    return out


def page_ice_servers(rtc_settings: Any, name: str) -> dict[str, Any]:
    """session.created's `ice_servers` and `ice_transport_policy` for the session `name` (an RtcSettings, or
    None: no servers)."""
    if rtc_settings is None:
        return {"ice_servers": [], "ice_transport_policy": "all"}
    servers = session_ice_servers(rtc_settings.ice_servers, rtc_settings.turn_secret, rtc_settings.turn_ttl_s, name)
    return {"ice_servers": servers, "ice_transport_policy": "relay" if rtc_settings.relay_only else "all"}

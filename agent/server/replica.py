"""This server's name in a fleet of replicas, and the address producers use to join its sessions.

Behind a proxy, every connection of a session must reach the replica that holds it. Session ids start
with the replica's id (`<replica-id>.<random>`), so a proxy routes on the part before the first '.'
(nginx maps it to `<replica-id>.<headless-service>`: hence a DNS label). docs/protocol.md, "Replicas".
"""

from __future__ import annotations

import re
import socket
from urllib.parse import urlsplit

SESSION_PATH = "/v1/session"
# RFC 1123 label, lower case: what a Kubernetes pod's host name is, and what nginx can put into a host name
REPLICA_ID = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
FALLBACK_ID = "voicegate"
WS_SCHEMES = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}


def check_replica_id(name: str) -> str:
    """`name` if it is a DNS label (a-z, 0-9, '-', 1-63 characters, no '-' at either end); ValueError if not."""
    if not REPLICA_ID.fullmatch(name):
        raise ValueError(f"replica id {name[:80]!r} must be a DNS label: 1-63 characters of a-z, 0-9 and '-', "
                         f"starting and ending with a letter or digit")
    return name


def default_replica_id(hostname: str | None = None) -> str:
    """The host name's first label as a DNS label (lower case; other characters become '-'). A StatefulSet
    pod's host name (`voicegate-0`) is one already."""
    label = (hostname if hostname is not None else socket.gethostname()).split(".", 1)[0].lower()
    label = re.sub(r"[^a-z0-9-]", "-", label)[:63].strip("-")
    return label if REPLICA_ID.fullmatch(label) else FALLBACK_ID


def resolve_replica_id(name: str | None) -> str:
    """The configured id (checked), or the host name's."""
    return check_replica_id(name) if name else default_replica_id()


def check_public_url(url: str) -> str:
    """A base URL clients reach this replica's port at: http(s):// or ws(s)://, a host, an optional path,
    no query or fragment (ValueError otherwise)."""
    parts = urlsplit(url)
    if parts.scheme not in WS_SCHEMES or not parts.netloc or parts.query or parts.fragment:
        raise ValueError(f"public URL {url[:200]!r} must be http(s):// or ws(s)://HOST[:PORT][/PATH], without a "
                         f"query or fragment")
    return url


def join_base(public_url: str | None) -> str:
    """Where producers join a session: the path alone (behind a proxy the server does not know its public
    origin), or the WebSocket URL under `public_url`."""
    if not public_url:
        return SESSION_PATH
    parts = urlsplit(check_public_url(public_url))
    return f"{WS_SCHEMES[parts.scheme]}://{parts.netloc}{parts.path.rstrip('/')}{SESSION_PATH}"

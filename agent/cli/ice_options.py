"""`voicegate serve` flags for WebRTC reachability: ICE servers and TURN credentials (docs/protocol.md,
"ICE servers"; docs/scaling.md, "WebRTC media")."""

from __future__ import annotations

import argparse
import os
from typing import Any

from agent.media.ice import DEFAULT_TURN_TTL_S, is_turn


def add_ice_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ice-server", action="append", metavar="URL",
                        help="STUN/TURN server URL for WebRTC, used by the server's peer and sent to the page in "
                             "session.created (repeatable; default: none, host candidates only), e.g. "
                             "turn:turn.example.com:3478?transport=udp")
    parser.add_argument("--turn-secret", default=os.environ.get("VOICEGATE_TURN_SECRET") or None, metavar="SECRET",
                        help="coturn's static-auth-secret (use-auth-secret): each session gets its own TURN "
                             "username and credential for every turn:/turns: URL (default: "
                             "$VOICEGATE_TURN_SECRET; never logged)")
    parser.add_argument("--turn-ttl", type=int, default=DEFAULT_TURN_TTL_S, metavar="SECONDS",
                        help=f"lifetime of those credentials (default {DEFAULT_TURN_TTL_S}: one day)")
    parser.add_argument("--ice-username", metavar="NAME",
                        help="a fixed TURN username for every turn:/turns: URL (instead of --turn-secret)")
    parser.add_argument("--ice-credential", metavar="PASSWORD",
                        help="the password of --ice-username")
    parser.add_argument("--ice-relay-only", action="store_true",
                        help="the page sends media through TURN only (iceTransportPolicy \"relay\")")


def check_ice_arguments(args: argparse.Namespace) -> None:
    """Usage errors (ValueError), before the model loads."""
    urls = args.ice_server or []
    has_turn = any(is_turn({"urls": url}) for url in urls)
    if args.turn_secret and args.ice_username:
        raise ValueError("--turn-secret and --ice-username exclude each other")
    if bool(args.ice_username) != bool(args.ice_credential):
        raise ValueError("--ice-username and --ice-credential go together")
    if (args.turn_secret or args.ice_username or args.ice_relay_only) and not has_turn:
        raise ValueError("--turn-secret, --ice-username and --ice-relay-only need a turn: or turns: --ice-server")
    if args.turn_ttl < 60:
        raise ValueError(f"--turn-ttl must be at least 60 seconds (not {args.turn_ttl})")


def rtc_settings(args: argparse.Namespace) -> Any:
    """The server's RtcSettings for these flags; None (the defaults) without any."""
    if not args.ice_server:
        return None
    from agent.media.rtc import RtcSettings

    servers: list[dict[str, Any]] = []
    for url in args.ice_server:
        server: dict[str, Any] = {"urls": url}
        if args.ice_username and is_turn(server):
            server.update(username=args.ice_username, credential=args.ice_credential)
        servers.append(server)
    return RtcSettings(ice_servers=servers, turn_secret=args.turn_secret, turn_ttl_s=args.turn_ttl,
                       relay_only=args.ice_relay_only)

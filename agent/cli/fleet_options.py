"""`voicegate serve` flags for running several replicas behind a proxy (docs/protocol.md, "Replicas")."""

from __future__ import annotations

import argparse
import os
from typing import Any

from agent.server.replica import check_public_url, check_replica_id


def _checked(check: Any) -> Any:
    def parse(value: str) -> str:
        try:
            return str(check(value))
        except ValueError as exc:  # a usage error at parse time, before the model loads
            raise argparse.ArgumentTypeError(str(exc)) from None
    return parse


def add_fleet_arguments(parser: argparse.ArgumentParser) -> None:
    # argparse runs `type` on a string default too: a bad $VOICEGATE_REPLICA_ID is a usage error as well
    parser.add_argument("--replica-id", type=_checked(check_replica_id),
                        default=os.environ.get("VOICEGATE_REPLICA_ID") or None, metavar="NAME",
                        help="this replica's name, the prefix of its session ids (a proxy routes on it): a DNS "
                             "label (a-z, 0-9, '-'; 1-63 characters). Default: $VOICEGATE_REPLICA_ID, else the "
                             "host name's first label")
    parser.add_argument("--public-url", type=_checked(check_public_url), metavar="URL",
                        help="where clients reach this server, e.g. https://voice.example.com: session.created's "
                             "join_url is then an absolute wss:// URL (default: the path alone)")


def fleet_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The ServerSettings fields of these flags."""
    return {"replica_id": args.replica_id, "public_url": args.public_url}

"""`voicegate serve` flags for running several replicas behind a proxy (docs/protocol.md, "Replicas")."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import Any, TypeVar

from agent.server.replica import check_public_url, check_replica_id

T = TypeVar("T")


def _checked(check: Callable[[str], T]) -> Callable[[str], T]:
    def parse(value: str) -> T:
        try:
            return check(value)
        except ValueError as exc:  # a usage error at parse time, before the model loads
            raise argparse.ArgumentTypeError(str(exc)) from None
    return parse


def _positive(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"must be a whole number of streams, 1 or more (not {value!r})")
    return n


def add_fleet_arguments(parser: argparse.ArgumentParser) -> None:
    # argparse runs `type` on a string default too: a bad $VOICEGATE_REPLICA_ID is a usage error as well
    parser.add_argument("--replica-id", type=_checked(check_replica_id),
                        default=os.environ.get("VOICEGATE_REPLICA_ID") or None, metavar="NAME",
                        help="this replica's name, the prefix of its session ids (a proxy routes on it): a DNS "
                             "label (a-z, 0-9, '-'; 1-63 characters). Default: $VOICEGATE_REPLICA_ID, else the "
                             "host name's first label")
    parser.add_argument("--drain-grace", "--shutdown-grace", type=float, default=30.0, metavar="SECONDS",
                        help="on SIGTERM/SIGINT: how long utterances in flight may play on while the server "
                             "drains (new sessions refused, /healthz 503); each session then closes with 1012 "
                             "(reconnect). A second signal stops at once. Kubernetes' "
                             "terminationGracePeriodSeconds must exceed it plus the preStop sleep (default 30)")
    parser.add_argument("--capacity-streams", type=_checked(_positive), metavar="N",
                        help="streams this replica serves in real time, published as the gauge "
                             "voicegate_engine_capacity_streams for an autoscaler: set it from bench figures "
                             "for this GPU (default: --max-streams)")
    parser.add_argument("--public-url", type=_checked(check_public_url), metavar="URL",
                        help="where clients reach this server, e.g. https://voice.example.com: session.created's "
                             "join_url is then an absolute wss:// URL (default: the path alone)")


def fleet_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The ServerSettings fields of these flags."""
    return {"replica_id": args.replica_id, "public_url": args.public_url, "drain_grace_s": args.drain_grace,
            "capacity_streams": args.capacity_streams}

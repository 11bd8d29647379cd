"""Container health check: `python -m agent.cli.healthcheck URL`, exit 0 when the server answers as it should.

    http://HOST:PORT/healthz   `voicegate serve`: 200 with {"ok": true}
    tcp://HOST:PORT            `voicegate wyoming`: describe -> info with a TTS program

Standard library plus the `wyoming` client: images have no curl, and a health check must not load torch.
"""

from __future__ import annotations

import asyncio
import json
import sys
import urllib.request
from urllib.parse import urlsplit

TIMEOUT_S = 4.0


def check_http(url: str) -> str | None:
    """None when healthy, else why not."""
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as resp:
            body = json.loads(resp.read())
    except (OSError, ValueError) as exc:
        return f"{url}: {exc}"
    return None if body.get("ok") is True else f"{url}: not ok: {body}"


async def check_wyoming(host: str, port: int) -> str | None:
    from wyoming.client import AsyncTcpClient
    from wyoming.info import Describe, Info

    try:
        async with asyncio.timeout(TIMEOUT_S), AsyncTcpClient(host, port) as client:
            await client.write_event(Describe().event())
            while (event := await client.read_event()) is not None:
                if Info.is_type(event.type):
                    info = Info.from_event(event)
                    return None if info.tts and info.tts[0].voices else f"tcp://{host}:{port}: no TTS voices"
    except (OSError, TimeoutError) as exc:
        return f"tcp://{host}:{port}: {exc or type(exc).__name__}"
    return f"tcp://{host}:{port}: closed without an info event"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m agent.cli.healthcheck http://HOST:PORT/healthz | tcp://HOST:PORT", file=sys.stderr)
        return 2
    url = urlsplit(args[0])
    if url.scheme in ("http", "https"):
        problem = check_http(args[0])
    elif url.scheme == "tcp" and url.hostname and url.port:
        problem = asyncio.run(check_wyoming(url.hostname, url.port))
    else:
        print(f"unsupported URL {args[0]!r}", file=sys.stderr)
        return 2
    if problem:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A real TURN server for tests: Debian's coturn (`turnserver`), unprivileged flags only, on 127.0.0.1.

Shared-secret auth (`use-auth-secret`, as the Helm chart deploys it), no TLS/DTLS, no CLI, loopback peers
allowed (the media peers are on 127.0.0.1 too), its log in a file the tests read (allocations by username).
Run inside a network namespace with `netns` (tests/web/netns.py), like the browser and the server.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

REALM = "voicegate.test"


def turnserver_path() -> str:
    path = shutil.which("turnserver")
    if path is None:
        pytest.fail("coturn is not installed: `apt-get install -y coturn` (the TURN tests need it and must not be "
                    "skipped)", pytrace=False)
    return path


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 (coturn listens on both)."""
    for _ in range(20):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = udp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return int(port)
    raise RuntimeError("no free port")


class Coturn:
    def __init__(self, directory: Path, secret: str, netns: Any = None) -> None:
        self.directory, self.secret, self.netns = directory, secret, netns
        self.log = directory / "turn.log"
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"turn:127.0.0.1:{self.port}?transport=udp"

    def __enter__(self) -> Coturn:
        in_ns = self.netns is not None and self.netns.active
        # a fresh namespace has every port free; on the host's loopback pick one
        self.port = self.netns.call(free_port) if in_ns else free_port()
        conf = self.directory / "turnserver.conf"
        conf.write_text("\n".join([
            "listening-ip=127.0.0.1", "relay-ip=127.0.0.1", f"listening-port={self.port}",
            "use-auth-secret", f"static-auth-secret={self.secret}", f"realm={REALM}",
            "no-tls", "no-dtls", "no-tcp-relay", "no-cli", "allow-loopback-peers", "no-multicast-peers",
            f"log-file={self.log}", "simple-log", "no-stdout-log", "verbose",
            f"pidfile={self.directory / 'turnserver.pid'}", f"userdb={self.directory / 'turndb'}", ""]))
        command = [turnserver_path(), "-c", str(conf)]
        if in_ns:
            command = ["ip", "netns", "exec", self.netns.name, *command]
        self.proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while "UDP listener opened on" not in self.log_text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.__exit__()
                raise RuntimeError(f"turnserver did not start: {self.log_text()[-2000:]}")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def allocated_users(self) -> list[str]:
        """Usernames of successful allocations (coturn: "... user <NAME>: incoming packet ALLOCATE processed,
        success")."""
        return re.findall(r"user <([^>]*)>: incoming packet ALLOCATE processed, success", self.log_text())

    def refused_users(self) -> list[str]:
        return re.findall(r"user <([^>]+)>: incoming packet message processed, error 401", self.log_text())

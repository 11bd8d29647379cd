"""A loopback-only network namespace for the browser tests (notes/webrtc-media.md §4).

Chromium gathers ICE candidates on every interface it sees; in a namespace that has only `lo`, no packet of
the test (WebRTC, HTTP, Chromium's own background traffic) can leave 127.0.0.1. The browser runs in it
through `ip netns exec`; the server (and any other test peer) joins it per thread with setns(2): a socket
belongs to the namespace of the thread that creates it, and threads inherit their creator's namespace.
Needs root and iproute2 (CI has both); elsewhere the tests run on the host's loopback and say so.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

CLONE_NEWNET = 0x40000000
T = TypeVar("T")


class LoopbackNamespace:
    """`dead_end_route`: Firefox gathers no ICE candidate at all without a default route, so give it one
    that leads nowhere: a veth pair with both ends inside the namespace (TEST-NET-1 addresses, RFC 5737),
    forwarding off. Packets still cannot leave the namespace."""

    def __init__(self, name: str, dead_end_route: bool = False) -> None:
        self.name = name
        self.dead_end_route = dead_end_route
        self.active = False

    def __enter__(self) -> LoopbackNamespace:
        if os.geteuid() != 0 or shutil.which("ip") is None:
            warnings.warn("not root or no iproute2: browser tests run on the host's loopback, not in a "
                          "loopback-only network namespace", stacklevel=2)
            return self
        subprocess.run(["ip", "netns", "delete", self.name], capture_output=True)  # a leftover of a killed run
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        subprocess.run(["ip", "-n", self.name, "link", "set", "lo", "up"], check=True)
        self.active = True
        if self.dead_end_route:
            for command in ("link add vg0 type veth peer name vg1", "addr add 192.0.2.1/30 dev vg0",
                            "addr add 192.0.2.2/30 dev vg1", "link set vg0 up", "link set vg1 up",
                            "route add default via 192.0.2.2 dev vg0"):
                subprocess.run(["ip", "-n", self.name, *command.split()], check=True)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.active:
            subprocess.run(["ip", "netns", "delete", self.name], capture_output=True)
            self.active = False

    def enter_this_thread(self) -> None:
        """Move the calling thread (and the threads it starts later) into the namespace."""
        if not self.active:
            return
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(f"/run/netns/{self.name}", os.O_RDONLY)
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"setns into {self.name}: {os.strerror(err)}")
        finally:
            os.close(fd)

    def call(self, fn: Callable[[], T]) -> T:
        """Run `fn` on a short-lived thread inside the namespace (e.g. an HTTP request to the server)."""
        result: list[Any] = []

        def run() -> None:
            try:
                self.enter_this_thread()
                result.append((True, fn()))
            except BaseException as exc:
                result.append((False, exc))

        thread = threading.Thread(target=run, name=f"netns-{self.name}")
        thread.start()
        thread.join()
        ok, value = result[0]
        if not ok:
            raise value
        return value

    def wrap_executable(self, executable: str, directory: Path) -> str:
        """A launcher that runs `executable` inside the namespace, with the same arguments and fds."""
        if not self.active:
            return executable
        launcher = directory / f"{Path(executable).name}-in-{self.name}"
        launcher.write_text(f'#!/bin/sh\nexec ip netns exec {self.name} {executable} "$@"\n')
        launcher.chmod(0o755)
        return str(launcher)

"""A fleet on loopback: `voicegate serve` replicas (real subprocesses, tiny model) behind Debian's nginx running
the proxy config the Helm chart renders (tests/deploy/chart.py's loopback values: replica ids -> 127.0.0.1
ports instead of the headless service's DNS names)."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.deploy.chart import ROOT, loopback_values, nginx_command, nginx_conf, write_nginx_main

API_KEY = "test-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get_status(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_until_up(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited {proc.returncode} before serving:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(OSError):
            if get_status(url, timeout=2)[0] == 200:
                return
        time.sleep(0.1)
    raise TimeoutError(f"{url} not up after {timeout} s:\n{log.read_text()[-3000:]}")


@dataclass
class Replica:
    """One `voicegate serve` process on a fixed port (a restart comes back on the same id and port)."""

    rid: str
    port: int
    checkpoint: Path
    workdir: Path
    shutdown_grace: float = 20.0
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.workdir / f"{self.rid}-{self.starts}.log"

    def start(self) -> None:
        self.starts += 1
        cmd = [sys.executable, "-m", "agent.cli.main", "serve", "--model", str(self.checkpoint),
               "--port", str(self.port), "--threads", "1", "--replica-id", self.rid, "--api-key", API_KEY,
               "--shutdown-grace", str(self.shutdown_grace), "--max-streams", "4"]
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 120.0) -> None:
        assert self.proc is not None
        wait_until_up(self.url + "/healthz", self.proc, self.log, timeout)

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@dataclass
class Fleet:
    replicas: dict[str, Replica]
    proxy_port: int
    workdir: Path
    nginx: subprocess.Popen[bytes] | None = None
    conf: str = field(default="")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.proxy_port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.proxy_port}/v1/session"

    def start_proxy(self) -> None:
        self.conf = nginx_conf(loopback_values({r.rid: r.port for r in self.replicas.values()}, self.proxy_port))
        main = write_nginx_main(self.workdir / "nginx", self.conf)
        log = self.workdir / "nginx" / "logs" / "error.log"
        self.nginx = subprocess.Popen(nginx_command(main), stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        wait_until_up(self.url + "/nginx-healthz", self.nginx, log, 30)

    def stop(self) -> None:
        if self.nginx is not None and self.nginx.poll() is None:
            self.nginx.send_signal(signal.SIGQUIT)  # nginx's graceful stop
            try:
                self.nginx.wait(10)
            except subprocess.TimeoutExpired:
                self.nginx.kill()
                self.nginx.wait(10)
        for replica in self.replicas.values():
            replica.stop()


@contextlib.contextmanager
def run_fleet(checkpoint: Path, workdir: Path, n: int = 3) -> Iterator[Fleet]:
    """`n` replicas (voicegate-0..n-1) started in parallel, then nginx in front of them."""
    replicas = {f"voicegate-{i}": Replica(f"voicegate-{i}", free_port(), checkpoint, workdir) for i in range(n)}
    fleet = Fleet(replicas, free_port(), workdir)
    try:
        for replica in replicas.values():
            replica.start()
        for replica in replicas.values():
            replica.wait_ready()
        fleet.start_proxy()
        yield fleet
    finally:
        fleet.stop()

"""A fleet on loopback: `voicegate serve` replicas (real subprocesses) behind Debian's nginx running the proxy
config the Helm chart (docker/helm/voicegate) renders, with values that map replica ids to 127.0.0.1 ports
instead of the headless service's DNS names. Used by tests/deploy and bench/proxy.py.

helm: docker/helm/install-helm.sh (into the venv's bin); nginx: Debian's nginx-light, run unprivileged with
its config, logs, pid and temp files in a work folder.
"""

from __future__ import annotations

import contextlib
import json
import shutil
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
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "docker" / "helm" / "voicegate"
API_KEY = "test-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}


def helm_binary() -> str:
    found = shutil.which("helm") or (str(ROOT / ".venv" / "bin" / "helm")
                                     if (ROOT / ".venv" / "bin" / "helm").exists() else None)
    if not found:
        raise RuntimeError("helm is not installed: bash docker/helm/install-helm.sh")
    return found


def nginx_binary() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if not found:
        raise RuntimeError("nginx is not installed: apt-get install nginx-light")
    return found


def render(values: dict[str, Any] | None = None, *, release: str = "voicegate", namespace: str = "default",
           show_only: str | None = None) -> list[dict[str, Any]]:
    """`helm template` with the chart's defaults, an API key and `values` (a values file's content)."""
    args = ["template", release, str(CHART), "--namespace", namespace, "--set", f"auth.apiKey={API_KEY}",
            "--values", "-"]
    if show_only:
        args += ["--show-only", show_only]
    done = subprocess.run([helm_binary(), *args], input=json.dumps(values or {}), capture_output=True, text=True,
                          timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"helm template failed: {done.stderr}")
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    hits = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    if len(hits) != 1:
        raise LookupError(f"{len(hits)} {kind} {name or ''} in the rendered chart")
    return hits[0]


def nginx_conf(values: dict[str, Any] | None = None) -> str:
    """The proxy's config (its ConfigMap) as the chart renders it with `values`."""
    return str(find(render(values, show_only="templates/proxy.yaml"), "ConfigMap")["data"]["voicegate.conf"])


def loopback_values(replicas: dict[str, int], proxy_port: int, not_ready: list[str] | None = None) -> dict[str, Any]:
    """The values that run the chart's proxy config off Kubernetes: replica ids -> 127.0.0.1 ports; `not_ready`
    ids get no new sessions (what the ready service does in Kubernetes)."""
    return {"proxy": {"listenAddress": "127.0.0.1", "listenPort": proxy_port,
                      "staticReplicas": {rid: f"127.0.0.1:{port}" for rid, port in replicas.items()},
                      "staticNotReady": list(not_ready or [])}}


def write_nginx_main(directory: Path, conf: str) -> Path:
    """A main nginx.conf around `conf` (the http{} part) for an unprivileged nginx in `directory`: its logs,
    pid and temp files stay there. (In the chart's image, nginx's stock nginx.conf includes it.)"""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "logs").mkdir(exist_ok=True)
    (directory / "voicegate.conf").write_text(conf)
    main = directory / "nginx.conf"
    main.write_text(f"""worker_processes 1;
error_log {directory}/logs/error.log info;
events {{ worker_connections 1024; }}
http {{
    access_log {directory}/logs/access.log;
    client_body_temp_path {directory}/client_body;
    proxy_temp_path {directory}/proxy;
    fastcgi_temp_path {directory}/fastcgi;
    uwsgi_temp_path {directory}/uwsgi;
    scgi_temp_path {directory}/scgi;
    include {directory}/voicegate.conf;
}}
""")
    return main


def nginx_command(main: Path) -> list[str]:
    directory = main.parent
    return [nginx_binary(), "-p", str(directory), "-c", str(main), "-e", str(directory / "logs" / "error.log"),
            "-g", f"daemon off; pid {directory}/nginx.pid;"]


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
    drain_grace: float = 20.0
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
               "--drain-grace", str(self.drain_grace), "--max-streams", "4"]
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

    def set_not_ready(self, not_ready: list[str]) -> None:
        """Render the config again with `not_ready` left out of new sessions and reload nginx (SIGHUP: new
        workers take new connections; the old ones keep theirs, as in a Kubernetes rollout of the config)."""
        assert self.nginx is not None
        ports = {r.rid: r.port for r in self.replicas.values()}
        self.conf = nginx_conf(loopback_values(ports, self.proxy_port, not_ready))
        write_nginx_main(self.workdir / "nginx", self.conf)
        log = self.workdir / "nginx" / "logs" / "error.log"
        workers = log.read_text().count("start worker process")
        self.nginx.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while log.read_text().count("start worker process") <= workers:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nginx did not reload:\n{log.read_text()[-2000:]}")
            time.sleep(0.02)

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

"""The Helm chart (docker/helm/voicegate) rendered by the real helm CLI, and its nginx config run by Debian's nginx.

helm comes from docker/helm/install-helm.sh (CI runs it; the venv's bin holds it), nginx from Debian's
nginx-light (CI's apt step).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "docker" / "helm" / "voicegate"
NGINX_REFERENCE = ROOT / "docker" / "nginx" / "voicegate.conf"
API_KEY = "test-key"


def helm_binary() -> str:
    found = shutil.which("helm") or (str(ROOT / ".venv" / "bin" / "helm")
                                     if (ROOT / ".venv" / "bin" / "helm").exists() else None)
    assert found, "helm is not installed: bash docker/helm/install-helm.sh"
    return found


def nginx_binary() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    assert found, "nginx is not installed: apt-get install nginx-light"
    return found


def helm(*args: str) -> str:
    done = subprocess.run([helm_binary(), *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr + done.stdout
    return done.stdout


def render(values: dict[str, Any] | None = None, *, release: str = "voicegate", namespace: str = "default",
           show_only: str | None = None) -> list[dict[str, Any]]:
    """`helm template` with the chart's defaults, an API key and `values` (a values file's content)."""
    args = ["template", release, str(CHART), "--namespace", namespace, "--set", f"auth.apiKey={API_KEY}",
            "--values", "-"]
    if show_only:
        args += ["--show-only", show_only]
    done = subprocess.run([helm_binary(), *args], input=json.dumps(values or {}), capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    hits = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(hits) == 1, f"{len(hits)} {kind} {name or ''} in the rendered chart"
    return hits[0]


def nginx_conf(values: dict[str, Any] | None = None) -> str:
    """The proxy's config (its ConfigMap) as the chart renders it with `values`."""
    return str(find(render(values, show_only="templates/proxy.yaml"), "ConfigMap")["data"]["voicegate.conf"])


def loopback_values(replicas: dict[str, int], proxy_port: int) -> dict[str, Any]:
    """The values that run the chart's proxy config off Kubernetes: replica ids -> 127.0.0.1 ports."""
    return {"proxy": {"listenAddress": "127.0.0.1", "listenPort": proxy_port,
                      "staticReplicas": {rid: f"127.0.0.1:{port}" for rid, port in replicas.items()}}}


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

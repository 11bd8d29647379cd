"""The Helm chart (docker/helm/voicegate) as the tests see it: bench.fleet renders it with the real helm CLI."""

from __future__ import annotations

import subprocess

from bench.fleet import ROOT, helm_binary

NGINX_REFERENCE = ROOT / "docker" / "nginx" / "voicegate.conf"


def helm(*args: str) -> str:
    done = subprocess.run([helm_binary(), *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr + done.stdout
    return done.stdout

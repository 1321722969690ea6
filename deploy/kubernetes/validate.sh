#!/usr/bin/env bash
# Validates the manifests offline against the Kubernetes OpenAPI schemas bundled with the
# kubernetes-validate package (strict: unknown fields are errors), and checks that the
# kustomization lists every manifest. Nothing is applied to a cluster.
#
#   deploy/kubernetes/validate.sh [KUBERNETES_VERSION]     (needs kubernetes-validate on PATH)
set -euo pipefail
cd "$(dirname "$0")"
version=${1:-1.31.0}
manifests=(voters.yaml replicas.yaml gateway.yaml)
kubernetes-validate --strict -k "$version" "${manifests[@]}"
for m in "${manifests[@]}"; do
    grep -q -- "- $m" kustomization.yaml || { echo "kustomization.yaml does not list $m" >&2; exit 1; }
done
echo "validated ${manifests[*]} against Kubernetes $version schemas"
python3 check.py

#!/usr/bin/env bash
# A local k3d cluster with its own image registry; Traefik (k3d's default ingress)
# is published on host port 8081, as in the seed.
set -euo pipefail

CLUSTER="${CLUSTER:-chat-cluster}"
REGISTRY="${REGISTRY:-chat-registry.localhost}"
REGISTRY_PORT="${REGISTRY_PORT:-5000}"
INGRESS_PORT="${INGRESS_PORT:-8081}"
AGENTS="${AGENTS:-2}"

for tool in k3d kubectl docker; do
  command -v "$tool" >/dev/null || { echo "create_cluster.sh: $tool is not installed" >&2; exit 1; }
done

if ! k3d registry list "k3d-${REGISTRY}" >/dev/null 2>&1; then
  k3d registry create "${REGISTRY}" --port "${REGISTRY_PORT}"
fi

if k3d cluster list "${CLUSTER}" >/dev/null 2>&1; then
  echo "cluster ${CLUSTER} exists already"
else
  # Three nodes (one server, two agents), so the NATS servers can spread out.
  k3d cluster create "${CLUSTER}" \
    --agents "${AGENTS}" \
    --registry-use "k3d-${REGISTRY}:${REGISTRY_PORT}" \
    --port "${INGRESS_PORT}:80@loadbalancer" \
    --wait
fi
kubectl cluster-info
echo "registry: k3d-${REGISTRY}:${REGISTRY_PORT} (push to localhost:${REGISTRY_PORT})"

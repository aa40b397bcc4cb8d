#!/usr/bin/env bash
# Build the image from deploy/Dockerfile, push it to the k3d registry, and write the
# chart values that point at it (deploy/k3d/images.values.yaml).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "${HERE}/../.." && pwd)"
REGISTRY="${REGISTRY:-chat-registry.localhost}"
REGISTRY_PORT="${REGISTRY_PORT:-5000}"
TAG="${TAG:-$(git -C "${ROOT}" rev-parse --short HEAD 2>/dev/null || echo dev)}"
PUSH="localhost:${REGISTRY_PORT}/chat-cluster:${TAG}"
PULL="k3d-${REGISTRY}:${REGISTRY_PORT}/chat-cluster"

command -v docker >/dev/null || { echo "publish_images.sh: docker is not installed" >&2; exit 1; }

# One image serves the node, the archiver and the stream Job; the chart sets the command.
docker build --file "${ROOT}/deploy/Dockerfile" --target chat --tag "${PUSH}" "${ROOT}"
docker push "${PUSH}"

cat >"${HERE}/images.values.yaml" <<VALUES
# Written by publish_images.sh: the image it pushed.
image:
  repository: ${PULL}
  tag: "${TAG}"
  pullPolicy: IfNotPresent
VALUES
echo "pushed ${PUSH}; wrote ${HERE}/images.values.yaml"

#!/usr/bin/env bash
# The seed's walkthrough against the installed chart; fails loudly at the first step
# that does not hold. Run after create_cluster.sh and publish_images.sh.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "${HERE}/../.." && pwd)"
RELEASE="${RELEASE:-chat-cluster}"
NAMESPACE="${NAMESPACE:-default}"
BASE="${BASE:-http://localhost:8081}"
TEXT="smoke $(date +%s)-$$"

fail() { echo "smoke.sh: FAIL: $*" >&2; exit 1; }
step() { echo "== $*"; }

# Poll until "$@" succeeds, at most $1 seconds.
retry() {
  local seconds="$1"; shift
  local deadline=$((SECONDS + seconds))
  until "$@"; do
    ((SECONDS < deadline)) || return 1
    sleep 2
  done
}

has_text() { curl -fsS "$1" | grep -q "\"text\":\"${TEXT}\""; }

step "install"
helm upgrade --install "${RELEASE}" "${ROOT}/deploy/helm/chat-cluster" \
  --namespace "${NAMESPACE}" -f "${HERE}/images.values.yaml" --wait --timeout 10m
kubectl -n "${NAMESPACE}" rollout status "deployment/${RELEASE}-chat" --timeout 5m

step "publish on chat.default-channel with nats pub"
kubectl -n "${NAMESPACE}" exec "deploy/${RELEASE}-chat" -- \
  nats pub -s "nats://${RELEASE}-nats:4222" chat.default-channel "${TEXT}"

step "read it through /chat/messages and /archiver/messages/default-channel"
retry 30 has_text "${BASE}/chat/messages" || fail "/chat/messages does not show the message"
retry 30 has_text "${BASE}/archiver/messages/default-channel" \
  || fail "/archiver/messages/default-channel does not show the message"

step "send through the REST API"
curl -fsS -X POST "${BASE}/chat/messages" -H 'content-type: application/json' \
  -d "{\"text\": \"${TEXT} via REST\", \"id\": \"smoke-$$\"}" >/dev/null || fail "POST /chat/messages"

step "kubectl rollout restart of the chat Deployment"
kubectl -n "${NAMESPACE}" rollout restart "deployment/${RELEASE}-chat"
kubectl -n "${NAMESPACE}" rollout status "deployment/${RELEASE}-chat" --timeout 5m

step "read again from the new pods"
for _ in 1 2 3 4 5 6; do  # several requests: the Service spreads them over the pods
  has_text "${BASE}/chat/messages" || fail "a restarted pod does not serve the message"
done
curl -fsS "${BASE}/chat/messages" | grep -q "${TEXT} via REST" \
  || fail "a restarted pod does not serve the REST message"
echo "smoke.sh: OK"

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
# `chat-cluster` (e.g. .nox/up/bin/chat-cluster) makes the token key and signs tokens.
CHAT_CLUSTER="${CHAT_CLUSTER:-chat-cluster}"
KEYS="$(mktemp -d)"
trap 'rm -rf "${KEYS}"' EXIT

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

has_text() { curl -fsS -H "${AUTH}" "$1" | grep -q "\"text\":\"${TEXT}\""; }

step "a token key: its JWKS as a Secret, its private half stays here"
"${CHAT_CLUSTER}" keygen --data-dir "${KEYS}" >/dev/null
kubectl -n "${NAMESPACE}" create secret generic "${RELEASE}-jwks" \
  --from-file=jwks.json="${KEYS}/auth/jwks.json" --dry-run=client -o yaml | kubectl apply -f -
TOKEN="$("${CHAT_CLUSTER}" token --data-dir "${KEYS}" --user smoke --read '*' --send '*' --ttl 1h)"
AUTH="Authorization: Bearer ${TOKEN}"

step "install"
helm upgrade --install "${RELEASE}" "${ROOT}/deploy/helm/chat-cluster" \
  --namespace "${NAMESPACE}" -f "${HERE}/images.values.yaml" \
  --set "auth.jwksSecret=${RELEASE}-jwks" --wait --wait-for-jobs --timeout 10m
kubectl -n "${NAMESPACE}" rollout status "deployment/${RELEASE}-chat" --timeout 5m

# The Secret with the NATS passwords: the chart's own, or nats.auth.existingSecret.
SECRET="$(kubectl -n "${NAMESPACE}" get "deployment/${RELEASE}-chat" -o \
  jsonpath='{.spec.template.spec.containers[0].env[?(@.name=="NATS_PASSWORD")].valueFrom.secretKeyRef.name}')"
[[ -n "${SECRET}" ]] || fail "the chat Deployment names no Secret for NATS_PASSWORD"

# Run the nats CLI in a chat pod as the publisher user. The password travels on stdin,
# never on a command line; the pod's NATS_URL (and, with nats.tls, its CA and client
# certificate) tell the CLI where and how to connect. NATS_USER/NATS_PASSWORD are the
# node's in that pod: overridden here, the node role may not publish on chat.<channel>.
# shellcheck disable=SC2016  # expanded by the pod's shell, not this one
AS_PUBLISHER='IFS= read -r NATS_PASSWORD; export NATS_PASSWORD NATS_USER=publisher
if [ -n "${NATS_TLS_CA:-}" ]; then export NATS_CA="$NATS_TLS_CA"; fi
if [ -n "${NATS_TLS_CERT:-}" ]; then export NATS_CERT="$NATS_TLS_CERT" NATS_KEY="$NATS_TLS_KEY"; fi
exec nats "$@"'
nats_as_publisher() {
  { kubectl -n "${NAMESPACE}" get secret "${SECRET}" -o jsonpath='{.data.publisher}' | base64 -d
    echo; } | kubectl -n "${NAMESPACE}" exec -i "deploy/${RELEASE}-chat" -- sh -c "${AS_PUBLISHER}" nats "$@"
}

step "no anonymous NATS: nats pub without credentials is refused"
if kubectl -n "${NAMESPACE}" exec "deploy/${RELEASE}-chat" -- \
  env -u NATS_USER -u NATS_PASSWORD nats pub chat.default-channel "anonymous ${TEXT}"; then
  fail "NATS accepted a publish without credentials"
fi

step "publish on chat.default-channel with nats pub, as the publisher user"
nats_as_publisher pub chat.default-channel "${TEXT}" || fail "nats pub as publisher"

step "the NATS monitoring port is on no Service"
if kubectl -n "${NAMESPACE}" get services -l "app.kubernetes.io/instance=${RELEASE}" \
  -o jsonpath='{..ports[*].port}' | tr ' ' '\n' | grep -qx 8222; then
  fail "a Service exposes port 8222"
fi

step "read it through /chat/messages and /archiver/messages/default-channel"
retry 30 has_text "${BASE}/chat/messages" || fail "/chat/messages does not show the message"
retry 30 has_text "${BASE}/archiver/messages/default-channel" \
  || fail "/archiver/messages/default-channel does not show the message"

step "no token: 401"
[[ "$(curl -s -o /dev/null -w '%{http_code}' "${BASE}/chat/messages")" == 401 ]] \
  || fail "a read without a token was not refused"

step "send through the REST API"
curl -fsS -X POST "${BASE}/chat/messages" -H 'content-type: application/json' -H "${AUTH}" \
  -d "{\"text\": \"${TEXT} via REST\", \"id\": \"smoke-$$\"}" >/dev/null || fail "POST /chat/messages"

step "kubectl rollout restart of the chat Deployment"
kubectl -n "${NAMESPACE}" rollout restart "deployment/${RELEASE}-chat"
kubectl -n "${NAMESPACE}" rollout status "deployment/${RELEASE}-chat" --timeout 5m

step "read again from the new pods"
for _ in 1 2 3 4 5 6; do  # several requests: the Service spreads them over the pods
  has_text "${BASE}/chat/messages" || fail "a restarted pod does not serve the message"
done
curl -fsS -H "${AUTH}" "${BASE}/chat/messages" | grep -q "${TEXT} via REST" \
  || fail "a restarted pod does not serve the REST message"
echo "smoke.sh: OK"

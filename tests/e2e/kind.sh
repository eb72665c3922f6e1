#!/usr/bin/env bash
# The real-cluster end-to-end run (docs/operator-testing.md): builds the pusher, sandbox and
# operator images, creates a kind cluster, installs the CRD, RBAC and the operator, runs the
# WeChat sandbox as a Deployment, creates the Secrets and a PushChannel whose apiBaseUrl is the
# sandbox, sends messages through the pusher's Service and checks that the sandbox received them
# (GET /__stats) and that each message ends `delivered`.
#
# Needs: docker (with a running engine), kind, kubectl, curl, python3. Run from anywhere:
#   tests/e2e/kind.sh
# Environment:
#   CLUSTER=wxpush-e2e   kind cluster name           KEEP_CLUSTER=1  keep it afterwards
#   MESSAGES=20          messages to send            TIMEOUT=300s    each wait's limit
#   TAG=e2e              image tag                   SKIP_BUILD=1    reuse built images
set -euo pipefail
cd "$(dirname "$0")/../.."

CLUSTER=${CLUSTER:-wxpush-e2e}
MESSAGES=${MESSAGES:-20}
TIMEOUT=${TIMEOUT:-300s}
TAG=${TAG:-e2e}
NS=wxpush-e2e
PUSHER_IMAGE=wxpush/wxpush-pusher:$TAG
SANDBOX_IMAGE=wxpush/wxpush-sandbox:$TAG
OPERATOR_IMAGE=wxpush/wxpush-operator:$TAG
APPID=wxe2e0000000000000          # must match deploy/kind/sandbox.yaml
APPSECRET=e2e-sandbox-secret
TOKEN=e2e-producer-token-$RANDOM$RANDOM
OPENID=oE2Eopenid000000000000000000

log() { printf '\n==> %s\n' "$*"; }
die() { printf 'kind.sh: %s\n' "$*" >&2; exit 1; }

for tool in docker kind kubectl curl python3; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool is not installed (see docs/operator-testing.md)"
done
docker info >/dev/null 2>&1 || die "no Docker engine answers (docker info failed)"

PIDS=()
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  if [ "${KEEP_CLUSTER:-0}" != 1 ]; then
    kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT

# kubectl port-forward in the background; prints the local port once it forwards.
forward() {
  local target=$1 remote=$2 port
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  kubectl -n "$NS" port-forward "$target" "$port:$remote" >/dev/null 2>&1 &
  PIDS+=("$!")
  for _ in $(seq 1 100); do
    if curl -s -o /dev/null "http://127.0.0.1:$port/"; then echo "$port"; return 0; fi
    sleep 0.2
  done
  die "port-forward to $target did not come up"
}

if [ "${SKIP_BUILD:-0}" != 1 ]; then
  log "building images ($TAG)"
  for part in pusher sandbox operator; do
    DOCKER_BUILDKIT=1 docker build -f "deploy/docker/$part.Dockerfile" -t "wxpush/wxpush-$part:$TAG" .
  done
fi

log "creating kind cluster $CLUSTER"
if ! kind get clusters | grep -qx "$CLUSTER"; then
  kind create cluster --name "$CLUSTER" --wait 120s
fi
kubectl config use-context "kind-$CLUSTER" >/dev/null
for image in "$PUSHER_IMAGE" "$SANDBOX_IMAGE" "$OPERATOR_IMAGE"; do
  kind load docker-image --name "$CLUSTER" "$image"
done

log "installing the CRD and the operator"
kubectl apply -f crds/pushchannel.yaml
kubectl wait --for=condition=Established crd/pushchannels.wxpush.io --timeout="$TIMEOUT"
kubectl apply -f operator/rbac.yaml          # namespace, ServiceAccount, ClusterRole, binding
sed -e "s|ghcr.io/wxpush/wxpush-operator:[^\" ]*|$OPERATOR_IMAGE|" \
  -e "s|ghcr.io/wxpush/wxpush-pusher:[^\" ]*|$PUSHER_IMAGE|" deploy/operator.yaml | kubectl apply -f -
kubectl -n wxpush-system rollout status deployment/wxpush-operator --timeout="$TIMEOUT"

log "running the sandbox, the Secrets and the PushChannel in $NS"
kubectl create namespace "$NS" --dry-run=client -o yaml | kubectl apply -f -
sed -e "s|ghcr.io/wxpush/wxpush-sandbox:[^\" ]*|$SANDBOX_IMAGE|" deploy/kind/sandbox.yaml | kubectl -n "$NS" apply -f -
kubectl -n "$NS" rollout status deployment/wxpush-sandbox --timeout="$TIMEOUT"
kubectl -n "$NS" create secret generic e2e-wechat \
  --from-literal=appId="$APPID" --from-literal=appSecret="$APPSECRET" \
  --dry-run=client -o yaml | kubectl apply -f -
kubectl -n "$NS" create secret generic e2e-auth --from-literal=token="$TOKEN" \
  --dry-run=client -o yaml | kubectl apply -f -
sed -e "s|ghcr.io/wxpush/wxpush-pusher:[^\" ]*|$PUSHER_IMAGE|" deploy/kind/pushchannel.yaml | kubectl -n "$NS" apply -f -

log "waiting for the PushChannel to be Ready"
kubectl -n "$NS" wait --for=condition=Reconciled pushchannel/e2e --timeout="$TIMEOUT"
kubectl -n "$NS" wait --for=condition=Ready pushchannel/e2e --timeout="$TIMEOUT"
kubectl -n "$NS" get pushchannel,deployment,service,configmap,pdb,pvc -o wide

log "sending $MESSAGES messages through the pusher Service"
PUSHER_PORT=$(forward service/e2e-pusher 8080)
SANDBOX_PORT=$(forward service/wxpush-sandbox 8090)
ids=()
for i in $(seq 1 "$MESSAGES"); do
  body=$(printf '{"touser":"%s","template_id":"TPL_E2E","data":{"keyword1":{"value":"e2e %s"}}}' "$OPENID" "$i")
  answer=$(curl -sS --fail-with-body -X POST "http://127.0.0.1:$PUSHER_PORT/v1/messages" \
    -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
    -H "Idempotency-Key: kind-e2e-$i" -d "$body")
  ids+=("$(printf '%s' "$answer" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')")
done

log "checking delivery"
deadline=$((SECONDS + ${TIMEOUT%s}))
while :; do
  delivered=$(curl -s "http://127.0.0.1:$SANDBOX_PORT/__stats" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin).get("delivered_unique", 0))')
  [ "$delivered" -ge "$MESSAGES" ] && break
  [ "$SECONDS" -lt "$deadline" ] || die "the sandbox received $delivered of $MESSAGES messages"
  sleep 1
done
for id in "${ids[@]}"; do
  status=$(curl -s -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$PUSHER_PORT/v1/messages/$id" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["status"])')
  case $status in
    delivered|confirmed) ;;
    *) die "message $id is $status, not delivered" ;;
  esac
done

log "OK: $MESSAGES messages accepted by the pusher and delivered to the sandbox ($delivered unique sends)"

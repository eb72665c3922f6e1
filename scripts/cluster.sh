#!/usr/bin/env bash
# A real Kubernetes control plane on 127.0.0.1, every program built from pinned Go modules
# (tools/cluster/). See tools/cluster/README.md.
#
#   scripts/cluster.sh build              build the programs once per machine into the cache
#   scripts/cluster.sh up   [--state DIR] start etcd, kube-apiserver, kube-controller-manager,
#                                         kube-scheduler, kwok (fake Nodes), prometheus, the
#                                         metrics adapter and the pod runner; wait until healthy
#   scripts/cluster.sh env  [--state DIR] print KUBECONFIG=... and friends, for `source <(...)`
#   scripts/cluster.sh down [--state DIR] stop everything `up` started (safe to run again)
#
# Environment:
#   WXPUSH_CLUSTER_STATE   state dir (default /tmp/wxpush-cluster); --state wins
#   WXPUSH_CLUSTER_CACHE   cache root (default ${XDG_CACHE_HOME:-$HOME/.cache}/wxpush/cluster)
#   WXPUSH_CLUSTER_NODES   number of fake Nodes (default 2)
#   WXPUSH_HPA_SYNC_PERIOD the HPA controller's sync period (default 5s)
#   WXPUSH_HPA_DOWNSCALE_WINDOW the HPA's default scale-down stabilization (default 30s)
#   WXPUSH_POD_RUNNER      the pod runner binary (default target/debug/wxpush-pod-runner)
#   WXPUSH_PUSHER_BIN      the pusher binary the pod runner starts (default target/debug/wxpush-pusher)
#   WXPUSH_UP_TIMEOUT      seconds each component gets to turn healthy (default 120)
#   WXPUSH_CLUSTER_OWNER_PID  when set, `down` runs by itself once that process has exited
set -Eeuo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
TOOLS=$ROOT/tools/cluster

# --- versions (keep in step with tools/cluster/*/go.mod) -------------------------------------
K8S_VERSION=v1.37.2
ETCD_VERSION=v3.7.4
HELM_VERSION=v4.3.2
KWOK_VERSION=v0.8.0
CMA_VERSION=v1.37.0            # sigs.k8s.io/custom-metrics-apiserver, under our adapter
PROMOP_VERSION=v0.85.0         # github.com/prometheus-operator/prometheus-operator (CRD YAML)
PROGRAMS=(kube-apiserver kube-controller-manager kube-scheduler etcd helm kwok wxpush-metrics-adapter)

SERVICE_CIDR=10.96.0.0/16
UP_TIMEOUT=${WXPUSH_UP_TIMEOUT:-120}

die() { echo "cluster.sh: $*" >&2; exit 1; }
log() { echo "cluster.sh: $*" >&2; }

# --- the build cache --------------------------------------------------------------------------
cache_key() {
  # Everything that changes a built program: the pinned module files, our adapter's source, the
  # Go toolchain and the build flags.
  {
    echo "$K8S_VERSION $ETCD_VERSION $HELM_VERSION $KWOK_VERSION $CMA_VERSION $PROMOP_VERSION"
    go version
    echo "-trimpath -ldflags=-s -w $KUBE_LDFLAGS $HELM_LDFLAGS"
    (cd "$TOOLS" && find . -name 'go.mod' -o -name 'go.sum' -o -name '*.go' ! -name '*_test.go' | LC_ALL=C sort | xargs cat)
  } | sha256sum | cut -c1-12
}

cache_root() { echo "${WXPUSH_CLUSTER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/wxpush/cluster}"; }

bin_dir() { echo "$(cache_root)/k8s-$K8S_VERSION-$(cache_key)/bin"; }

# The version each program reports: built from the module cache, they cannot learn it from git.
# The API server's /version (which helm and kubectl read) comes from these.
KUBE_LDFLAGS=""
for v in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  KUBE_LDFLAGS+=" -X $v.gitVersion=$K8S_VERSION -X $v.gitTreeState=clean"
  KUBE_LDFLAGS+=" -X $v.gitMajor=$(echo "$K8S_VERSION" | cut -d. -f1 | tr -d v)"
  KUBE_LDFLAGS+=" -X $v.gitMinor=$(echo "$K8S_VERSION" | cut -d. -f2)"
done
HELM_LDFLAGS="-X helm.sh/helm/v4/internal/version.version=$HELM_VERSION"

# program NAME MODULE PACKAGE [LDFLAGS]: puts NAME into the bin dir. Each program is kept under
# programs/NAME-<hash of its own module, the Go version and the flags>, so that a change to one
# module (say, the adapter's source) rebuilds that program only; the bin dir holds hard links.
program() {
  local name=$1 dir=$TOOLS/$2 pkg=$3 ldflags=${4:-} key store start
  key=$({ go version; echo "$pkg -trimpath -s -w$ldflags"
    (cd "$dir" && find . -name 'go.mod' -o -name 'go.sum' -o -name '*.go' ! -name '*_test.go' | LC_ALL=C sort | xargs cat)
  } | sha256sum | cut -c1-12)
  store=$(cache_root)/programs/$name-$key
  if [ ! -x "$store" ]; then
    start=$(date +%s)
    log "building $name ($pkg in tools/cluster/$2)"
    mkdir -p "$(dirname "$store")"
    (cd "$dir" && GOFLAGS="-trimpath -mod=readonly -buildvcs=false" \
      go build -ldflags="-s -w$ldflags" -o "$store.tmp" "$pkg") || die "building $pkg failed"
    mv -f "$store.tmp" "$store"
    log "built $name in $(( $(date +%s) - start ))s"
  fi
  ln -f "$store" "$BIN/$name" 2>/dev/null || cp -f "$store" "$BIN/$name"
}

cmd_build() {
  command -v go >/dev/null || die "go is not installed (Go 1.26 builds the control plane)"
  BIN=$(bin_dir)
  mkdir -p "$BIN"
  # One build at a time per machine: parallel test runs wait here instead of racing.
  exec 9>"$(cache_root)/build.lock"
  flock 9
  local total p; total=$(date +%s)
  for p in kube-apiserver kube-controller-manager kube-scheduler; do
    program "$p" kube "k8s.io/kubernetes/cmd/$p" "$KUBE_LDFLAGS"
  done
  program etcd etcd go.etcd.io/etcd/server/v3
  program helm helm helm.sh/helm/v4/cmd/helm " $HELM_LDFLAGS"
  program kwok kwok sigs.k8s.io/kwok/cmd/kwok
  program wxpush-metrics-adapter adapter .
  local bin=$BIN
  # The prometheus-operator CRDs (PodMonitor, ...) ship as YAML inside its Go module.
  local crds; crds=$(dirname "$bin")/crds/prometheus-operator
  if ! ls "$crds"/*.yaml >/dev/null 2>&1; then
    local dir
    dir=$(cd "$TOOLS/kube" && go mod download -json \
      "github.com/prometheus-operator/prometheus-operator@$PROMOP_VERSION" |
      sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
    [ -d "$dir/example/prometheus-operator-crd" ] || die "prometheus-operator $PROMOP_VERSION has no example/prometheus-operator-crd"
    mkdir -p "$crds.tmp"
    cp "$dir"/example/prometheus-operator-crd/*.yaml "$crds.tmp/"
    chmod u+w "$crds.tmp"/*.yaml
    rm -rf "$crds"; mv "$crds.tmp" "$crds"
  fi
  # kwok moves Nodes and pods through "stages"; its controller takes them from --config files.
  # The stock ones ship as YAML inside the kwok module.
  local stages; stages=$(dirname "$bin")/kwok-stages
  if ! ls "$stages"/*.yaml >/dev/null 2>&1; then
    local kdir
    kdir=$(cd "$TOOLS/kwok" && go list -m -f '{{.Dir}}' sigs.k8s.io/kwok)/kustomize/stage
    mkdir -p "$stages.tmp"
    cp "$kdir"/node/fast/node-initialize.yaml "$kdir"/node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
      "$kdir"/pod/fast/pod-ready.yaml "$kdir"/pod/fast/pod-complete.yaml "$kdir"/pod/fast/pod-delete.yaml \
      "$stages.tmp/"
    chmod u+w "$stages.tmp"/*.yaml
    rm -rf "$stages"; mv "$stages.tmp" "$stages"
  fi
  log "control plane ready in $bin ($(( $(date +%s) - total ))s)"
  flock -u 9
}

# --- state ------------------------------------------------------------------------------------
STATE=${WXPUSH_CLUSTER_STATE:-/tmp/wxpush-cluster}
parse_state() {
  while [ $# -gt 0 ]; do
    case $1 in
      --state) [ $# -ge 2 ] || die "--state needs a directory"; STATE=$2; shift 2 ;;
      --state=*) STATE=${1#--state=}; shift ;;
      *) die "unknown argument: $1" ;;
    esac
  done
  mkdir -p "$STATE"
  STATE=$(cd "$STATE" && pwd)
}

free_ports() {
  python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

# start NAME CMD...: runs CMD in its own session (its own process group), logs to logs/NAME.log.
start() {
  local name=$1; shift
  setsid "$@" >"$STATE/logs/$name.log" 2>&1 </dev/null &
  echo $! >"$STATE/pids/$name.pid"
  log "started $name (pid $!)"
}

# fail NAME WHAT: names what did not come up, with the tail of its log, and stops the rest.
fail() {
  local name=$1 what=$2
  echo "cluster.sh: $what" >&2
  if [ -f "$STATE/logs/$name.log" ]; then
    echo "----- last lines of $STATE/logs/$name.log -----" >&2
    tail -n 40 "$STATE/logs/$name.log" >&2
    echo "-----" >&2
  fi
  cmd_down_quiet
  exit 1
}

alive() { local p; p=$(cat "$STATE/pids/$1.pid" 2>/dev/null) && kill -0 "$p" 2>/dev/null; }

# wait_for NAME WHAT CMD...: polls CMD every 0.5s for UP_TIMEOUT seconds.
wait_for() {
  local name=$1 what=$2; shift 2
  local deadline=$(( $(date +%s) + UP_TIMEOUT ))
  until "$@" >/dev/null 2>&1; do
    alive "$name" || fail "$name" "$name exited before $what"
    [ "$(date +%s)" -lt "$deadline" ] || fail "$name" "$name: $what did not happen within ${UP_TIMEOUT}s"
    sleep 0.5
  done
  log "$name: $what"
}

# --- certificates -----------------------------------------------------------------------------
# cert NAME CA CN [O] [SANS]: a key and a certificate signed by CA (client+server usage).
cert() {
  local name=$1 ca=$2 cn=$3 o=${4:-} sans=${5:-} subj
  subj="/CN=$cn"; [ -n "$o" ] && subj="/O=$o$subj"
  local ext="$PKI/$name.ext"
  {
    echo "basicConstraints=critical,CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=serverAuth,clientAuth"
    [ -n "$sans" ] && echo "subjectAltName=$sans"
  } >"$ext"
  openssl req -new -newkey rsa:2048 -nodes -keyout "$PKI/$name.key" -subj "$subj" \
    -out "$PKI/$name.csr" 2>/dev/null
  openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/$ca.crt" -CAkey "$PKI/$ca.key" \
    -CAcreateserial -days 30 -sha256 -extfile "$ext" -out "$PKI/$name.crt" 2>/dev/null
  rm -f "$PKI/$name.csr" "$ext"
}

make_pki() {
  PKI=$STATE/pki
  mkdir -p "$PKI"
  for ca in ca front-proxy-ca; do
    openssl req -x509 -newkey rsa:2048 -nodes -keyout "$PKI/$ca.key" -out "$PKI/$ca.crt" \
      -days 30 -subj "/CN=wxpush-$ca" -addext "basicConstraints=critical,CA:TRUE" \
      -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" 2>/dev/null
  done
  cert apiserver ca kube-apiserver "" \
    "IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:${SERVICE_CIDR%.0/*}.1"
  cert admin ca wxpush-admin system:masters
  cert controller-manager ca system:kube-controller-manager
  cert scheduler ca system:kube-scheduler
  cert front-proxy-client front-proxy-ca front-proxy-client
  cert adapter ca wxpush-metrics-adapter "" \
    "DNS:wxpush-metrics-adapter.kube-system.svc,DNS:wxpush-metrics-adapter.kube-system.svc.cluster.local,DNS:localhost,IP:127.0.0.1"
  openssl genrsa -out "$PKI/sa.key" 2048 2>/dev/null
  openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
  chmod 600 "$PKI"/*.key
}

# kubeconfig NAME CERT: a kubeconfig for the client certificate CERT.
kubeconfig() {
  local file=$STATE/$1.kubeconfig cert=$2
  KUBECONFIG=$file kubectl config set-cluster wxpush --server="https://127.0.0.1:$APISERVER_PORT" \
    --certificate-authority="$PKI/ca.crt" --embed-certs=true >/dev/null
  KUBECONFIG=$file kubectl config set-credentials "$1" --client-certificate="$PKI/$cert.crt" \
    --client-key="$PKI/$cert.key" --embed-certs=true >/dev/null
  KUBECONFIG=$file kubectl config set-context wxpush --cluster=wxpush --user="$1" >/dev/null
  KUBECONFIG=$file kubectl config use-context wxpush >/dev/null
  chmod 600 "$file"
}

# --- up ---------------------------------------------------------------------------------------
cmd_up() {
  if [ -d "$STATE/pids" ] && ls "$STATE"/pids/*.pid >/dev/null 2>&1; then
    for f in "$STATE"/pids/*.pid; do
      kill -0 "$(cat "$f")" 2>/dev/null && die "a cluster is already running in $STATE (scripts/cluster.sh down --state $STATE)"
    done
  fi
  cmd_build
  local bin; bin=$(bin_dir)
  rm -rf "${STATE:?}"/{pki,etcd,logs,pids,prometheus,pods,manifests} "$STATE"/*.kubeconfig "$STATE/env"
  mkdir -p "$STATE"/{logs,pids,prometheus/sd,prometheus/data,pods,manifests}
  trap 'fail up "cluster.sh up failed (line $LINENO)"' ERR

  local ports
  read -r ETCD_PORT ETCD_PEER_PORT APISERVER_PORT KCM_PORT SCHED_PORT KWOK_PORT PROM_PORT ADAPTER_PORT \
    <<<"$(free_ports 8)"
  make_pki
  local S=$STATE P=$STATE/pki
  kubeconfig admin admin
  kubeconfig controller-manager controller-manager
  kubeconfig scheduler scheduler
  local ADMIN=$S/admin.kubeconfig

  # etcd
  start etcd "$bin/etcd" --name wxpush --data-dir "$S/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "wxpush=http://127.0.0.1:$ETCD_PEER_PORT" \
    --unsafe-no-fsync --quota-backend-bytes 2147483648 --log-level warn
  wait_for etcd "healthy on 127.0.0.1:$ETCD_PORT" curl -fsS "http://127.0.0.1:$ETCD_PORT/health"

  # kube-apiserver
  start kube-apiserver "$bin/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$APISERVER_PORT" \
    --tls-cert-file "$P/apiserver.crt" --tls-private-key-file "$P/apiserver.key" \
    --client-ca-file "$P/ca.crt" \
    --authorization-mode Node,RBAC \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$P/sa.pub" --service-account-signing-key-file "$P/sa.key" \
    --service-cluster-ip-range "$SERVICE_CIDR" \
    --requestheader-client-ca-file "$P/front-proxy-ca.crt" \
    --requestheader-allowed-names front-proxy-client \
    --requestheader-username-headers X-Remote-User --requestheader-group-headers X-Remote-Group \
    --requestheader-extra-headers-prefix X-Remote-Extra- \
    --proxy-client-cert-file "$P/front-proxy-client.crt" --proxy-client-key-file "$P/front-proxy-client.key" \
    --endpoint-reconciler-type none \
    --allow-privileged=true --profiling=false --v=1
  wait_for kube-apiserver "ready on 127.0.0.1:$APISERVER_PORT" \
    kubectl --kubeconfig "$ADMIN" get --raw /readyz

  # kube-controller-manager and kube-scheduler
  start kube-controller-manager "$bin/kube-controller-manager" \
    --kubeconfig "$S/controller-manager.kubeconfig" \
    --authentication-kubeconfig "$S/controller-manager.kubeconfig" \
    --authorization-kubeconfig "$S/controller-manager.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "$KCM_PORT" \
    --use-service-account-credentials \
    --root-ca-file "$P/ca.crt" --service-account-private-key-file "$P/sa.key" \
    --cluster-signing-cert-file "$P/ca.crt" --cluster-signing-key-file "$P/ca.key" \
    --service-cluster-ip-range "$SERVICE_CIDR" \
    --controllers '*' --leader-elect=false \
    --horizontal-pod-autoscaler-sync-period "${WXPUSH_HPA_SYNC_PERIOD:-5s}" \
    --horizontal-pod-autoscaler-downscale-stabilization "${WXPUSH_HPA_DOWNSCALE_WINDOW:-30s}" \
    --profiling=false --v=1
  start kube-scheduler "$bin/kube-scheduler" \
    --kubeconfig "$S/scheduler.kubeconfig" \
    --authentication-kubeconfig "$S/scheduler.kubeconfig" \
    --authorization-kubeconfig "$S/scheduler.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "$SCHED_PORT" --leader-elect=false --profiling=false --v=1
  # Both serve /healthz with a self-signed certificate of their own: -k.
  wait_for kube-controller-manager "healthy on 127.0.0.1:$KCM_PORT" \
    curl -fsSk "https://127.0.0.1:$KCM_PORT/healthz"
  wait_for kube-scheduler "healthy on 127.0.0.1:$SCHED_PORT" \
    curl -fsSk "https://127.0.0.1:$SCHED_PORT/healthz"

  # kwok and its fake Nodes
  local stage_flags=() f
  for f in "$(dirname "$bin")"/kwok-stages/*.yaml; do stage_flags+=(--config "$f"); done
  start kwok "$bin/kwok" --kubeconfig "$ADMIN" --manage-all-nodes=true \
    --server-address "127.0.0.1:$KWOK_PORT" --cidr 10.244.0.0/16 --node-ip 127.0.0.1 \
    --node-lease-duration-seconds 40 "${stage_flags[@]}"
  wait_for kwok "healthy on 127.0.0.1:$KWOK_PORT" curl -fsS "http://127.0.0.1:$KWOK_PORT/healthz"
  local n
  for n in $(seq 1 "${WXPUSH_CLUSTER_NODES:-2}"); do
    cat >"$S/manifests/node-$n.yaml" <<EOF
apiVersion: v1
kind: Node
metadata:
  name: kwok-node-$n
  annotations:
    kwok.x-k8s.io/node: fake
    node.alpha.kubernetes.io/ttl: "0"
  labels:
    kubernetes.io/hostname: kwok-node-$n
    kubernetes.io/os: linux
    kubernetes.io/arch: amd64
    kubernetes.io/role: agent
    type: kwok
status:
  allocatable: {cpu: "32", memory: 64Gi, pods: "110"}
  capacity: {cpu: "32", memory: 64Gi, pods: "110"}
EOF
    kubectl --kubeconfig "$ADMIN" apply -f "$S/manifests/node-$n.yaml" >/dev/null
  done
  wait_for kwok "Nodes Ready" kubectl --kubeconfig "$ADMIN" wait --for=condition=Ready node --all --timeout=2s

  # prometheus, scraping the file_sd targets the pod runner writes
  cat >"$S/prometheus/prometheus.yml" <<EOF
global:
  scrape_interval: 2s
  scrape_timeout: 2s
  evaluation_interval: 2s
scrape_configs:
  - job_name: wxpush-pods
    file_sd_configs:
      - files: ['$S/prometheus/sd/*.json']
        refresh_interval: 2s
EOF
  start prometheus prometheus --config.file "$S/prometheus/prometheus.yml" \
    --storage.tsdb.path "$S/prometheus/data" --web.listen-address "127.0.0.1:$PROM_PORT" \
    --storage.tsdb.retention.time 2h
  wait_for prometheus "ready on 127.0.0.1:$PROM_PORT" curl -fsS "http://127.0.0.1:$PROM_PORT/-/ready"

  # the metrics adapter, behind the aggregator
  start wxpush-metrics-adapter "$bin/wxpush-metrics-adapter" \
    --rules "$ROOT/charts/wxpush-operator/adapter/values-prometheus-adapter.yaml" \
    --prometheus-url "http://127.0.0.1:$PROM_PORT" \
    --bind-address 127.0.0.1 --secure-port "$ADAPTER_PORT" \
    --tls-cert-file "$P/adapter.crt" --tls-private-key-file "$P/adapter.key" \
    --lister-kubeconfig "$ADMIN" --authentication-kubeconfig "$ADMIN" --authorization-kubeconfig "$ADMIN" \
    --pod-runner-state "$S/pods" --container-name pusher --v=1
  wait_for wxpush-metrics-adapter "healthy on 127.0.0.1:$ADAPTER_PORT" \
    curl -fsS --cacert "$P/ca.crt" "https://127.0.0.1:$ADAPTER_PORT/healthz"
  local ca_bundle; ca_bundle=$(base64 -w0 "$P/ca.crt")
  {
    cat <<EOF
apiVersion: v1
kind: Service
metadata:
  name: wxpush-metrics-adapter
  namespace: kube-system
spec:
  type: ExternalName
  externalName: localhost
  ports:
    - {name: https, port: $ADAPTER_PORT, protocol: TCP}
EOF
    local group version priority
    for gv in custom.metrics.k8s.io/v1beta1/100 custom.metrics.k8s.io/v1beta2/200 external.metrics.k8s.io/v1beta1/100 metrics.k8s.io/v1beta1/100; do
      IFS=/ read -r group version priority <<<"$gv"
      cat <<EOF
---
apiVersion: apiregistration.k8s.io/v1
kind: APIService
metadata:
  name: $version.$group
spec:
  group: $group
  version: $version
  groupPriorityMinimum: 100
  versionPriority: $priority
  caBundle: $ca_bundle
  service: {namespace: kube-system, name: wxpush-metrics-adapter, port: $ADAPTER_PORT}
EOF
    done
  } >"$S/manifests/adapter.yaml"
  kubectl --kubeconfig "$ADMIN" apply -f "$S/manifests/adapter.yaml" >/dev/null
  wait_for wxpush-metrics-adapter "APIServices Available" kubectl --kubeconfig "$ADMIN" wait \
    --for=condition=Available apiservice v1beta1.custom.metrics.k8s.io v1beta2.custom.metrics.k8s.io \
    v1beta1.external.metrics.k8s.io v1beta1.metrics.k8s.io --timeout=2s
  wait_for wxpush-metrics-adapter "custom.metrics.k8s.io answers through the API server" \
    kubectl --kubeconfig "$ADMIN" get --raw /apis/custom.metrics.k8s.io/v1beta1

  # the pod runner (a kubelet stand-in for the pusher pods; tests/src/bin/pod-runner.rs)
  start_pod_runner "$ADMIN"

  cat >"$S/env" <<EOF
KUBECONFIG=$ADMIN
WXPUSH_CLUSTER_BIN=$bin
WXPUSH_PROMETHEUS_URL=http://127.0.0.1:$PROM_PORT
WXPUSH_CLUSTER_STATE=$S
WXPUSH_PROMETHEUS_OPERATOR_CRDS=$(dirname "$bin")/crds/prometheus-operator
EOF
  # With WXPUSH_CLUSTER_OWNER_PID, a watcher runs `down` once that process is gone, so a test
  # run killed before its own `down` leaves nothing behind. It ends by itself after a `down`.
  if [ -n "${WXPUSH_CLUSTER_OWNER_PID:-}" ]; then
    kill -0 "$WXPUSH_CLUSTER_OWNER_PID" 2>/dev/null || fail up "WXPUSH_CLUSTER_OWNER_PID=$WXPUSH_CLUSTER_OWNER_PID is not a running process"
    setsid bash -c 'while kill -0 "$1" 2>/dev/null && [ -f "$2/env" ]; do sleep 2; done
      if [ -f "$2/env" ]; then echo "owner $1 is gone: down"; exec "$3" down --state "$2"; fi' \
      _ "$WXPUSH_CLUSTER_OWNER_PID" "$S" "$ROOT/scripts/cluster.sh" >"$S/logs/watcher.log" 2>&1 </dev/null &
    echo $! >"$S/watcher.pid"
    log "started the watcher of owner $WXPUSH_CLUSTER_OWNER_PID (pid $!)"
  fi
  trap - ERR
  log "up: API server https://127.0.0.1:$APISERVER_PORT, prometheus http://127.0.0.1:$PROM_PORT, state $S"
  log "use it with: source <(scripts/cluster.sh env --state $S)"
}

start_pod_runner() {
  local admin=$1
  local runner=${WXPUSH_POD_RUNNER:-$ROOT/target/debug/wxpush-pod-runner}
  local pusher=${WXPUSH_PUSHER_BIN:-$ROOT/target/debug/wxpush-pusher}
  if [ -z "${WXPUSH_POD_RUNNER:-}" ] && [ ! -f "$ROOT/tests/src/bin/pod-runner.rs" ]; then
    log "WARNING: **************************************************************************"
    log "WARNING: no pod runner (tests/src/bin/pod-runner.rs is not there yet): pods turn Ready"
    log "WARNING: on the kwok Nodes but NO pusher process runs behind them"
    log "WARNING: **************************************************************************"
    return 0
  fi
  if [ ! -x "$runner" ] && [ -z "${WXPUSH_POD_RUNNER:-}" ]; then
    log "building wxpush-pod-runner (cargo build -p wxpush-tests --bins)"
    (cd "$ROOT" && cargo build -q -p wxpush-tests --bins)
  fi
  if [ ! -x "$pusher" ] && [ -z "${WXPUSH_PUSHER_BIN:-}" ]; then
    log "building wxpush-pusher (cargo build -p wxpush-pusher --bins)"
    (cd "$ROOT" && cargo build -q -p wxpush-pusher --bins)
  fi
  [ -x "$runner" ] || fail up "the pod runner $runner is not an executable"
  [ -x "$pusher" ] || fail up "the pusher $pusher is not an executable"
  start pod-runner "$runner" --kubeconfig "$admin" --state "$STATE/pods" \
    --prometheus-sd "$STATE/prometheus/sd" --pusher-bin "$pusher"
  sleep 1
  alive pod-runner || fail pod-runner "the pod runner exited at start"
}

# --- down ----------------------------------------------------------------------------------------
# Stops every process group `up` started: SIGTERM, then SIGKILL to what is left after 10s. etcd
# goes last: the API server shuts down cleanly only while its store still answers.
cmd_down_quiet() {
  [ -d "$STATE/pids" ] || return 0
  local f rest=()
  for f in "$STATE"/pids/*.pid; do
    [ -f "$f" ] && [ "$f" != "$STATE/pids/etcd.pid" ] && rest+=("$f")
  done
  [ ${#rest[@]} -gt 0 ] && stop_groups "${rest[@]}"
  [ -f "$STATE/pids/etcd.pid" ] && stop_groups "$STATE/pids/etcd.pid"
  rm -f "$STATE/env"
  # The watcher (see up) stops by itself once env is gone; when it is the one running down, $$
  # is its pid.
  if [ -f "$STATE/watcher.pid" ]; then
    local w; w=$(cat "$STATE/watcher.pid")
    [ "$w" = "$$" ] || kill -TERM "$w" 2>/dev/null || true
    rm -f "$STATE/watcher.pid"
  fi
}

# stop_groups PIDFILE...: SIGTERM to each process group, SIGKILL after 10s, then the files go.
stop_groups() {
  local f pid left deadline=$(( $(date +%s) + 10 ))
  for f in "$@"; do kill -TERM -- "-$(cat "$f")" 2>/dev/null || true; done
  while :; do
    left=0
    for f in "$@"; do kill -0 -- "-$(cat "$f")" 2>/dev/null && left=1; done
    [ $left -eq 1 ] && [ "$(date +%s)" -lt "$deadline" ] || break
    sleep 0.2
  done
  for f in "$@"; do
    pid=$(cat "$f")
    if kill -0 -- "-$pid" 2>/dev/null; then
      log "$(basename "$f" .pid) (process group $pid) did not stop on SIGTERM within 10s: SIGKILL"
      kill -KILL -- "-$pid" 2>/dev/null || true
    fi
    rm -f "$f"
  done
}

cmd_down() {
  cmd_down_quiet
  log "down: nothing of $STATE is running"
}

cmd_env() {
  [ -f "$STATE/env" ] || die "no cluster is up in $STATE (scripts/cluster.sh up --state $STATE)"
  cat "$STATE/env"
}

case ${1:-} in
  build) shift; [ $# -eq 0 ] || die "build takes no arguments"; cmd_build ;;
  up) shift; parse_state "$@"; cmd_up ;;
  down) shift; parse_state "$@"; cmd_down ;;
  env) shift; parse_state "$@"; cmd_env ;;
  bin-dir) bin_dir ;;
  *) die "usage: scripts/cluster.sh build | up [--state DIR] | env [--state DIR] | down [--state DIR]" ;;
esac

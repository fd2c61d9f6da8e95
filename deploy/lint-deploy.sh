#!/usr/bin/env bash
# Checks deploy/ (Dockerfile, compose.yaml, kubernetes/) against the code,
# with no Docker engine and no cluster: every manifest parses and renders,
# every environment variable set is one the binary reads (taken from
# `connectflow <command> --help`), the binary accepts every literal value,
# probe paths are routes it serves, ports agree with CONNECTFLOW_LISTEN,
# secrets only come from Secrets, security contexts are locked down.
# Prints what it checked; exits 1 on any problem, 2 when it cannot run.
#
# Builds nothing: the binary must exist (`make lint-deploy` builds it).
#   CONNECTFLOW_BIN   the binary (default target/debug/connectflow)
#   KUSTOMIZE         a kustomize command to use, e.g. "kustomize build"
# Without one, it uses kustomize or `kubectl kustomize` from PATH, else
# installs kustomize once into .local/bin with Go, else falls back to a
# resources-only check (and says so).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

bin=${CONNECTFLOW_BIN:-target/debug/connectflow}
kustomize_version=v5.7.1

if [[ ! -x $bin ]]; then
  echo "lint-deploy: $bin does not exist: build it first (cargo build --bin connectflow) or set CONNECTFLOW_BIN" >&2
  exit 2
fi

if ! python3 -c 'import yaml' 2>/dev/null; then
  echo "lint-deploy: installing PyYAML (once)"
  python3 -m pip install --quiet --disable-pip-version-check pyyaml >&2
fi

renderer=${KUSTOMIZE:-}
if [[ -z $renderer ]]; then
  if command -v kustomize >/dev/null 2>&1; then
    renderer="kustomize build"
  elif [[ -x .local/bin/kustomize ]]; then
    renderer="$root/.local/bin/kustomize build"
  elif command -v kubectl >/dev/null 2>&1 && kubectl kustomize --help >/dev/null 2>&1; then
    renderer="kubectl kustomize"
  elif command -v go >/dev/null 2>&1; then
    echo "lint-deploy: installing kustomize $kustomize_version into .local/bin (once, about a minute)"
    mkdir -p .local/bin
    if GOBIN="$root/.local/bin" go install "sigs.k8s.io/kustomize/kustomize/v5@$kustomize_version" >&2; then
      renderer="$root/.local/bin/kustomize build"
    else
      echo "lint-deploy: installing kustomize failed" >&2
    fi
  fi
fi
if [[ -z $renderer ]]; then
  echo "lint-deploy: NO kustomize renderer available: overlays are checked WITHOUT their patches applied"
fi

exec python3 deploy/lint-deploy.py --bin "$bin" ${renderer:+--renderer "$renderer"}

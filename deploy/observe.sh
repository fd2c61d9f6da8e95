#!/usr/bin/env bash
# A real Prometheus for the local connectflow: scrapes the given targets'
# /metrics every few seconds and evaluates deploy/prometheus/alerts.yaml.
# Debian's prometheus package (installed by `deploy/services.sh up`, as
# promtool's) gives the server; its data stays under .local/prometheus.
#
#   deploy/observe.sh up [TARGET ...]   start (default target 127.0.0.1:8080,
#                                       what `make run` listens on), print its URL
#   deploy/observe.sh down              stop it
#
#   OBSERVE_PORT       its web port (default 9095; 9090 is Debian's default)
#   OBSERVE_DIR        its config and data (default .local/prometheus)
#   OBSERVE_INTERVAL   scrape and evaluation interval (default 5s)
#   OBSERVE_FOR        if set, every alert's `for:` becomes this (tests
#                      shorten the windows with it, e.g. 5s)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
port=${OBSERVE_PORT:-9095}
dir=${OBSERVE_DIR:-$root/.local/prometheus}
interval=${OBSERVE_INTERVAL:-5s}
pidfile=$dir/prometheus.pid

say() { printf 'observe: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

running() { [[ -s $pidfile ]] && kill -0 "$(<"$pidfile")" 2>/dev/null; }

down() {
  if running; then
    local pid
    pid=$(<"$pidfile")
    kill "$pid"
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    say "stopped prometheus (pid $pid)"
  fi
  rm -f "$pidfile"
}

up() {
  command -v prometheus >/dev/null 2>&1 || bash deploy/services.sh up >/dev/null
  command -v prometheus >/dev/null 2>&1 || die "prometheus is missing (Debian's prometheus package)"
  down
  mkdir -p "$dir/data"
  local targets=("$@")
  ((${#targets[@]})) || targets=(127.0.0.1:8080)
  local list
  list=$(printf "'%s', " "${targets[@]}")
  local rules=$dir/alerts.yaml
  if [[ -n ${OBSERVE_FOR:-} ]]; then
    sed -E "s/^( +)for: .*/\1for: ${OBSERVE_FOR}/" deploy/prometheus/alerts.yaml >"$rules"
  else
    cp deploy/prometheus/alerts.yaml "$rules"
  fi
  cat >"$dir/prometheus.yml" <<YAML
global:
  scrape_interval: $interval
  evaluation_interval: $interval
rule_files:
  - $rules
scrape_configs:
  - job_name: connectflow
    static_configs:
      - targets: [${list%, }]
YAML
  promtool check config "$dir/prometheus.yml" >/dev/null || die "the generated config does not check: $dir/prometheus.yml"
  prometheus --config.file="$dir/prometheus.yml" --storage.tsdb.path="$dir/data" \
    --web.listen-address="127.0.0.1:$port" --storage.tsdb.retention.time=1d \
    >"$dir/prometheus.log" 2>&1 &
  echo $! >"$pidfile"
  for _ in $(seq 100); do
    if curl -fsS "http://127.0.0.1:$port/-/ready" >/dev/null 2>&1; then
      say "prometheus on http://127.0.0.1:$port scraping ${targets[*]} with deploy/prometheus/alerts.yaml (alerts: http://127.0.0.1:$port/alerts)"
      return 0
    fi
    running || die "prometheus exited: $(tail -n 5 "$dir/prometheus.log")"
    sleep 0.2
  done
  die "prometheus did not become ready: $(tail -n 5 "$dir/prometheus.log")"
}

case ${1:-} in
up) shift; up "$@" ;;
down) down ;;
*) die "usage: $0 up [TARGET ...] | down" ;;
esac

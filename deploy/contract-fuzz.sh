#!/usr/bin/env bash
# Contract fuzzing: Schemathesis generates requests from /v1/openapi.json and
# checks every answer against the document (all checks: status codes,
# schemas, headers, negative data refused, positive data accepted, no 5xx).
# It runs against `connectflow all` started here on the real local Postgres
# and Kafka (`make services` first), with a few simulated customers seeded.
#
# The webhook route is excluded: its requests need an HMAC signature over
# the body that a generic fuzzer cannot make (the receiver's own property
# tests cover it: tests/integration/receive_properties.rs).
#
# Settings (environment):
#   CONTRACT_EXAMPLES  examples per operation (default 50; run 1000 by hand)
#   CONTRACT_SEED      Hypothesis seed (default 20261125: CI is repeatable)
#   CONNECTFLOW_BIN    the binary (default target/debug/connectflow)
# Schemathesis is installed (pinned) into .local/venv, which git ignores.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

schemathesis_version=4.32.5
examples=${CONTRACT_EXAMPLES:-50}
seed=${CONTRACT_SEED:-20261125}
bin=${CONNECTFLOW_BIN:-target/debug/connectflow}
admin_url=${CONNECTFLOW_TEST_DATABASE_URL:-postgres://connectflow:connectflow@127.0.0.1:5432/connectflow}
brokers=${CONNECTFLOW_TEST_KAFKA_BROKERS:-127.0.0.1:9092}
venv=.local/venv

[[ -x $bin ]] || { echo "contract-fuzz: $bin does not exist: build it first (cargo build --bin connectflow)" >&2; exit 2; }

if [[ ! -x $venv/bin/st ]] || ! "$venv/bin/st" --version 2>/dev/null | grep -qF "$schemathesis_version"; then
  if ! python3 -m venv "$venv" 2>/dev/null; then
    echo "contract-fuzz: installing python3-venv" >&2
    apt-get install -y -q python3-venv >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q python3-venv >/dev/null; }
    python3 -m venv "$venv"
  fi
  "$venv/bin/pip" install -q --disable-pip-version-check "schemathesis==$schemathesis_version"
  echo "contract-fuzz: installed schemathesis $schemathesis_version into $venv"
fi

id=$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n')
database="cf_contract_$id"
psql -q -v ON_ERROR_STOP=1 "$admin_url" -c "CREATE DATABASE $database"
database_url="${admin_url%/*}/$database"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
secret="contract-secret-$id"
token="contract-token-$id"
log=$(mktemp)

FINICITY_PARTNER_SECRETS=$secret CONNECTFLOW_API_TOKENS=$token DATABASE_URL=$database_url \
KAFKA_BROKERS=$brokers CONNECTFLOW_LISTEN=127.0.0.1:$port \
CONNECTFLOW_EVENTS_TOPIC="cf-contract-$id.events" CONNECTFLOW_DLQ_TOPIC="cf-contract-$id.dlq" \
CONNECTFLOW_CONSUMER_GROUP="cf-contract-$id" CONNECTFLOW_TOPIC_PARTITIONS=1 CONNECTFLOW_TOPIC_REPLICATION_FACTOR=1 \
CONNECTFLOW_LOG_FORMAT=json RUST_LOG=warn "$bin" all >"$log" 2>&1 &
service=$!
cleanup() {
  kill "$service" 2>/dev/null || true
  wait "$service" 2>/dev/null || true
  psql -q "$admin_url" -c "DROP DATABASE IF EXISTS $database WITH (FORCE)" >/dev/null 2>&1 || true
  rm -f "$log"
}
trap cleanup EXIT

for _ in $(seq 1 300); do
  curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
  kill -0 "$service" 2>/dev/null || { cat "$log" >&2; echo "contract-fuzz: connectflow exited" >&2; exit 1; }
  sleep 0.2
done
"$bin" simulate --url "http://127.0.0.1:$port/webhooks/finicity/connect" --secret "$secret" --flow all \
  --customers 2 --seed 7 --verify --api-url "http://127.0.0.1:$port" --api-token "$token" | tail -2

echo "contract-fuzz: schemathesis, all checks, $examples examples per operation, seed $seed"
"$venv/bin/st" --config-file deploy/schemathesis.toml run "http://127.0.0.1:$port/v1/openapi.json" \
  --checks all --max-examples "$examples" --seed "$seed" \
  --header "Authorization: Bearer $token" \
  --exclude-path /webhooks/finicity/connect \
  --no-color

#!/usr/bin/env bash
# A Postgres failover under webhook load, with asynchronous replication and a
# deliberately wide loss window, then the promises checked (issue 29).
#
#   make services PG_REPLICA=1          # or the PG_* variables below, for a separate set
#   cargo build --bin connectflow
#   bash deploy/failover-smoke.sh
#
# What it does, on the primary/standby/proxy set of deploy/services.sh:
#  1. re-clones the standby (replica-reset), creates a fresh database through
#     the proxy and runs `connectflow all` on it (DATABASE_URL: the proxy);
#  2. `connectflow simulate` sends shuffled, duplicated flows (and revocations
#     through the API) at 60 webhooks/s;
#  3. after 12 s the standby stops receiving WAL (replica-detach), 8 s later
#     the primary is killed with kill -9, the standby promoted and the proxy
#     switched to it: what the consumer applied in those 8 s is lost;
#  4. checks: the failover lost applied events (else it proved nothing); every
#     accepted event ends recorded exactly once; `reproject --check` finds no
#     difference; every customer ends in its flow's states and its changes on
#     the topic are in order, a run recorded again after the failover allowed
#     (simulate --verify --verify-changes).
# Exit status 0 when every check passed. At the end the old primary is
# started again and the standby cloned from it afresh (what was written to
# the promoted standby is discarded), the proxy pointing at the primary: the
# services are as `make services PG_REPLICA=1` left them.
#
# Environment: PG_PORT, PG_REPLICA_PORT, PG_PROXY_PORT, PG_DIR_NAME as for
# deploy/services.sh; KAFKA_BROKERS (default 127.0.0.1:9092); CONNECTFLOW_BIN
# (default target/debug/connectflow); FAILOVER_LISTEN (default 127.0.0.1:18089).
set -euo pipefail
cd "$(dirname "$0")/.."
export PG_REPLICA=1
PG_PORT=${PG_PORT:-5432}
PG_REPLICA_PORT=${PG_REPLICA_PORT:-5433}
PG_PROXY_PORT=${PG_PROXY_PORT:-5434}
export PG_PORT PG_REPLICA_PORT PG_PROXY_PORT
BIN=${CONNECTFLOW_BIN:-target/debug/connectflow}
LISTEN=${FAILOVER_LISTEN:-127.0.0.1:18089}
BROKERS=${KAFKA_BROKERS:-127.0.0.1:9092}
U=postgres://connectflow:connectflow@127.0.0.1
OUT=target/failover
mkdir -p "$OUT"
[[ -x $BIN ]] || {
  echo "failover-smoke: $BIN missing (cargo build --bin connectflow)" >&2
  exit 2
}
services() { bash deploy/services.sh "$@"; }
count() { psql -X -At "$U:$1/cf_failover" -c "select count(*) from connect_events"; }

services postgres-start >/dev/null 2>&1 || true
services replica-reset
psql -X -q "$U:$PG_PROXY_PORT/connectflow" -c "drop database if exists cf_failover" -c "create database cf_failover"
id=$(head -c6 /dev/urandom | od -An -tx1 | tr -d ' \n')
export DATABASE_URL="$U:$PG_PROXY_PORT/cf_failover" KAFKA_BROKERS=$BROKERS
export CONNECTFLOW_EVENTS_TOPIC="cf-failover-$id.events" CONNECTFLOW_DLQ_TOPIC="cf-failover-$id.dlq"
export CONNECTFLOW_CHANGES_TOPIC="cf-failover-$id.changes" CONNECTFLOW_CONSUMER_GROUP="cf-failover-$id"
export CONNECTFLOW_TOPIC_PARTITIONS=3 CONNECTFLOW_TOPIC_REPLICATION_FACTOR=1
export FINICITY_PARTNER_SECRETS=failover-secret CONNECTFLOW_API_TOKENS=failover-token CONNECTFLOW_LISTEN=$LISTEN
export CONNECTFLOW_LOG_FORMAT=json RUST_LOG=info
"$BIN" all >"$OUT/all.log" 2>&1 &
app=$!
restore() {
  kill -TERM "$app" 2>/dev/null || true
  wait "$app" 2>/dev/null || true
  services postgres-start >/dev/null 2>&1 || true
  services replica-reset >/dev/null 2>&1 || echo "failover-smoke: restoring the standby failed: bash deploy/services.sh replica-reset" >&2
}
trap restore EXIT
for _ in $(seq 60); do curl -sf "http://$LISTEN/readyz" >/dev/null && break; sleep 1; done
"$BIN" simulate --url "http://$LISTEN/webhooks/finicity/connect" --customers 30 --rate 60 --duplicates 0.2 --shuffle \
  --verify --api-url "http://$LISTEN" --api-token failover-token --verify-timeout-s 180 \
  --verify-changes --kafka-brokers "$BROKERS" --changes-topic "$CONNECTFLOW_CHANGES_TOPIC" \
  --events-topic "$CONNECTFLOW_EVENTS_TOPIC" --dlq-topic "$CONNECTFLOW_DLQ_TOPIC" >"$OUT/simulate.log" 2>&1 &
sim=$!

sleep 12
services replica-detach
sleep 8
before=$(count "$PG_PORT")
read -r primary_lsn _ < <(services wal-positions)
services primary-kill
read -r _ standby_lsn < <(services wal-positions)
services replica-promote
services proxy-switch "$PG_REPLICA_PORT"
at_promotion=$(count "$PG_REPLICA_PORT")
wal_lost=$(psql -X -At "$U:$PG_REPLICA_PORT/cf_failover" -c "select pg_wal_lsn_diff('$primary_lsn', '$standby_lsn')")
echo "failover: the old primary had $before events, the promoted standby $at_promotion; $wal_lost bytes of WAL it never received"

sim_rc=0
wait $sim || sim_rc=$?
grep -vE '^  MISMATCH|^expected funnel' "$OUT/simulate.log" | tail -8
# Accepted distinct events: webhooks less duplicates and pings (one per
# customer), plus the revocations accepted through the API.
read -r sent duplicates < <(sed -nE 's/^  webhooks +([0-9]+) sent .* ([0-9]+) duplicates$/\1 \2/p' "$OUT/simulate.log")
customers=$(sed -nE 's/^simulate: ([0-9]+) customers.*/\1/p' "$OUT/simulate.log")
revocations=$(sed -nE 's/^  revocations ([0-9]+) accepted.*/\1/p' "$OUT/simulate.log")
expected=$((sent - duplicates - customers + ${revocations:-0}))
final=0
for _ in $(seq 60); do
  final=$(count "$PG_PROXY_PORT")
  ((final >= expected)) && break
  sleep 1
done
check_rc=0
DATABASE_URL="$U:$PG_PROXY_PORT/cf_failover" "$BIN" reproject --check >"$OUT/reproject-check.log" 2>&1 || check_rc=$?
rewinds=$(grep -c 'reading the partition again from its stored position' "$OUT/all.log" || true)

failed=0
report() { printf '  %-58s %s\n' "$1" "$2"; }
echo "failover-smoke:"
report "applied events the failover lost (must be > 0)" "$((before - at_promotion))"
((before > at_promotion)) || failed=1
report "partitions read again from the stored positions" "$rewinds"
report "events recorded / accepted (must be equal)" "$final / $expected"
((final == expected)) || failed=1
report "reproject --check (0: no lifecycle differs)" "exit $check_rc"
((check_rc == 0)) || failed=1
report "simulate --verify --verify-changes (0: states, changes)" "exit $sim_rc"
((sim_rc == 0)) || failed=1
if ((failed)); then
  echo "failover-smoke: FAILED (logs in $OUT/)"
  exit 1
fi
echo "failover-smoke: passed"

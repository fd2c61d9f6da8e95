#!/usr/bin/env bash
# Regenerates .sqlx/, the offline data that lets every build compile-check
# SQL without a database (SQLX_OFFLINE=true, as CI builds).
#
# It applies migrations/ to a scratch database with psql, then compiles the
# crate with the query macros online against it and SQLX_OFFLINE_DIR set, so
# sqlx writes one query-<hash>.json per query. No sqlx-cli needed.
# Usage: deploy/sqlx-prepare.sh postgres://user:pass@host:port/any_db
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
base_url=${1:?usage: $0 DATABASE_URL}
scratch=connectflow_sqlx_prepare
scratch_url="${base_url%/*}/$scratch"

psql -q -v ON_ERROR_STOP=1 "$base_url" -c "DROP DATABASE IF EXISTS $scratch" -c "CREATE DATABASE $scratch"
for migration in migrations/*.sql; do
  psql -q -v ON_ERROR_STOP=1 "$scratch_url" -f "$migration"
done

rm -rf .sqlx
mkdir -p .sqlx
# Touch every source so each macro runs again and writes its data.
find src tests -name '*.rs' -exec touch {} +
SQLX_OFFLINE=false DATABASE_URL="$scratch_url" SQLX_OFFLINE_DIR="$root/.sqlx" cargo check --all-targets --quiet
psql -q "$base_url" -c "DROP DATABASE IF EXISTS $scratch"
echo "sqlx-prepare: $(ls .sqlx | wc -l) queries in .sqlx/"

# connectflow: the developer's entry points. `make run` and `make test` work
# on a fresh Debian machine: `make services` installs and starts what they need.
SHELL := /bin/bash
.DEFAULT_GOAL := help

# SQL is compile-checked against the committed .sqlx/ data: no build needs a
# live database. `make sqlx-prepare` refreshes that data after a query change.
export SQLX_OFFLINE ?= true

LOCAL_DATABASE_URL := postgres://connectflow:connectflow@127.0.0.1:5432/connectflow
LOCAL_KAFKA_BROKERS := 127.0.0.1:9092
# Kafka of `make services`: 1, the single broker above (what `make test` and
# `make run` use); 3, a replicated 3-node cluster on 127.0.0.1:19092-19094 for
# failure tests (`make services KAFKA_NODES=3`; see deploy/services.sh).
KAFKA_NODES ?= 1
# PG_REPLICA=1: also a streaming standby of the local Postgres on 5433 and a
# proxy on 5434 pointing at the primary, for failover tests (`make services
# PG_REPLICA=1`; see deploy/services.sh).
PG_REPLICA ?= 0

# Development-only credentials for `make run`. Never use them anywhere else.
DEV_PARTNER_SECRET := dev-partner-secret-NOT-FOR-PRODUCTION
DEV_API_TOKEN := dev-api-token-NOT-FOR-PRODUCTION

.PHONY: help services services-down run test lint lint-deploy sqlx-prepare bench chaos contract failover observe observe-down image-test

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

services: ## Install (if needed) and start local PostgreSQL and Kafka (KAFKA_NODES=3: the 3-node cluster; PG_REPLICA=1: a standby and a proxy)
	@KAFKA_NODES='$(KAFKA_NODES)' PG_REPLICA='$(PG_REPLICA)' bash deploy/services.sh up

services-down: ## Stop what `make services` started (single broker, cluster and PostgreSQL)
	@bash deploy/services.sh down

run: services ## Run `connectflow all` locally with development credentials
	@echo "connectflow (development only): partner secret '$(DEV_PARTNER_SECRET)', API token '$(DEV_API_TOKEN)'"
	@echo "  webhooks:  POST http://127.0.0.1:8080/webhooks/finicity/connect"
	@echo "  readiness: GET  http://127.0.0.1:8080/readyz"
	@echo "  console:   http://127.0.0.1:8080/console/  (sign in with the API token above)"
	cargo build --bin connectflow
	FINICITY_PARTNER_SECRETS='$(DEV_PARTNER_SECRET)' CONNECTFLOW_API_TOKENS='$(DEV_API_TOKEN)' \
	DATABASE_URL='$(LOCAL_DATABASE_URL)' KAFKA_BROKERS='$(LOCAL_KAFKA_BROKERS)' \
	exec ./target/debug/connectflow all

observe: services ## A real Prometheus (port 9095, data in .local/prometheus) scraping `make run` (127.0.0.1:8080) with the alert rules; OBSERVE_TARGETS="host:port ..." for others
	bash deploy/observe.sh up $(OBSERVE_TARGETS)

observe-down: ## Stop the Prometheus of `make observe`
	bash deploy/observe.sh down

test: services ## Unit and integration tests on the real local Postgres and Kafka
	CONNECTFLOW_TEST_DATABASE_URL='$(LOCAL_DATABASE_URL)' CONNECTFLOW_TEST_KAFKA_BROKERS='$(LOCAL_KAFKA_BROKERS)' \
	cargo test --all-targets
	$(MAKE) --no-print-directory lint-deploy

lint-deploy: ## Check the compose file and Kubernetes manifests against the binary (no Docker or cluster needed)
	cargo build --bin connectflow
	bash deploy/lint-deploy.sh

image-test: services ## Build deploy/Dockerfile's image with podman (base from debootstrap) and run it as the manifests do: migrate, serve and consume ready, a signed webhook to the API, SIGTERM (about 3 minutes after a change to src/, 9 the first time)
	bash deploy/image-test.sh

lint: ## rustfmt and clippy, as CI runs them
	cargo fmt --all -- --check
	cargo clippy --all-targets -- -D warnings

sqlx-prepare: services ## Refresh .sqlx/ (the offline query data) from the local database
	bash deploy/sqlx-prepare.sh '$(LOCAL_DATABASE_URL)'

bench: services ## Build release and measure receiver, consumer, query API, end to end, statistics on a replica, the health beat, each interleaved with its baseline BENCH_RUNS=3 times (about 15 minutes)
	cargo build --release --bin connectflow --example bench
	./target/release/examples/bench all

chaos: ## Faults on a 3-node Kafka cluster and Postgres (a failover included) while webhooks flow; checks nothing is lost (about 5 minutes)
	KAFKA_NODES=3 PG_REPLICA=1 bash deploy/services.sh up
	cargo build --bin connectflow --example chaos
	CONNECTFLOW_BIN=target/debug/connectflow ./target/debug/examples/chaos

failover: ## A Postgres failover under webhook load (standby, kill -9, promote, proxy switch), checked (about 2 minutes)
	PG_REPLICA=1 bash deploy/services.sh up
	cargo build --bin connectflow
	bash deploy/failover-smoke.sh

contract: services ## Schemathesis (all checks) against the running API, from /v1/openapi.json (CONTRACT_EXAMPLES=1000 for a long run)
	cargo build --bin connectflow
	CONNECTFLOW_TEST_DATABASE_URL='$(LOCAL_DATABASE_URL)' CONNECTFLOW_TEST_KAFKA_BROKERS='$(LOCAL_KAFKA_BROKERS)' \
	bash deploy/contract-fuzz.sh

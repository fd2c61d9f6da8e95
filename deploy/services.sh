#!/usr/bin/env bash
# Local PostgreSQL and Apache Kafka for development and CI, without Docker.
#
#   bash deploy/services.sh up      install (if needed), start and wait for both
#   bash deploy/services.sh down    stop what `up` started, single broker and cluster (data is kept)
#   bash deploy/services.sh status  say what listens on 5432, 9092 and the cluster's ports, and whose it is
#   KAFKA_NODES=3 bash deploy/services.sh up
#                                   PostgreSQL and the 3-node replicated Kafka cluster
#                                   (below) instead of the single broker
#   bash deploy/services.sh node-start N    start cluster node N (1-3) again, without waiting
#                                           for it to answer; prints its pid (alone on stdout)
#   bash deploy/services.sh node-stop N     SIGTERM cluster node N and wait until it exited
#   bash deploy/services.sh node-pid N      print node N's pid; exit status 1 when it does not run
#   bash deploy/services.sh postgres-stop   stop (fast shutdown) the PostgreSQL cluster `up` started
#   bash deploy/services.sh postgres-start  start it again and wait until it accepts connections
#   bash deploy/services.sh postgres-up     PostgreSQL alone (and its standby with PG_REPLICA=1)
#   bash deploy/services.sh postgres-down   stop the proxy, the standby and PostgreSQL (not Kafka)
#   bash deploy/services.sh image-tools     install (if needed) podman, buildah, runc and debootstrap,
#                                           for `make image-test` (deploy/image-test.sh)
#
# The standby and the failover (PG_REPLICA=1; `make services PG_REPLICA=1`):
#   PG_REPLICA=1 bash deploy/services.sh up    also a streaming standby of the
#                          primary (pg_basebackup, asynchronous replication) on
#                          PG_REPLICA_PORT, and the proxy (below) on PG_PROXY_PORT
#                          pointing at the primary
#   bash deploy/services.sh primary-kill       kill -9 the primary's postmaster (a crash:
#                                              what it committed but did not send is lost)
#   bash deploy/services.sh replica-promote    promote the standby; waits until it writes
#   bash deploy/services.sh proxy-switch PORT  point the proxy at 127.0.0.1:PORT (the new
#                                              primary); open connections are cut
#   bash deploy/services.sh replica-reset      stop the standby, delete its data and clone
#                                              the primary again (after a failover test,
#                                              once the primary runs again)
#   bash deploy/services.sh replica-detach     stop the standby receiving WAL: everything the
#                                              primary commits afterwards is lost at the next
#                                              failover (a wide, deliberate loss window)
#   bash deploy/services.sh replica-down       stop the proxy and the standby (data kept; use
#                                              replica-reset to start a fresh one)
#   bash deploy/services.sh wal-positions      print the primary's current WAL position and
#                                              the standby's replayed one ("- -" when down)
# Ports and directories (environment; the defaults are what `make` uses):
#   PG_PORT=5432           the primary
#   PG_REPLICA_PORT=5433   the standby
#   PG_PROXY_PORT=5434     the proxy: connectflow's DATABASE_URL in a failover test,
#                          so its address does not change when the primary does
#                          (like a managed service's endpoint)
#   PG_DIR_NAME=postgres   the primary's directory under .local/; the standby's is
#                          <that>-replica, the proxy's files <that>-proxy.*
# Why socat for the proxy: Debian packages it (installed here with apt-get when
# missing), one process forwards TCP with no configuration file, and switching
# the target is a restart of that process, which also cuts the connections to
# the old primary, as a managed endpoint's failover does. HAProxy could switch
# without a restart but needs a configuration and its runtime API for it; a
# tiny Rust proxy would need a build before the services start.
#
# What `up` guarantees (the contract `make services` / `make test` rely on):
#   Debian's chromium and chromium-driver (/usr/bin/chromium, /usr/bin/chromedriver)
#     for the console's browser tests, installed when missing (single-broker `up` only);
#   postgres://connectflow:connectflow@127.0.0.1:5432/connectflow  (role LOGIN
#     CREATEDB, database owned by it), PostgreSQL from Debian's packages;
#   a Kafka 4.1 broker (KRaft, single node) answering on 127.0.0.1:9092,
#     auto topic creation on, 6 partitions by default, replication factor 1.
# A server already listening on 5432 or 9092 is reused, never stopped. A second
# `up` when everything runs changes nothing and takes well under a second.
#
# KAFKA_NODES selects the Kafka of `up` (`make services KAFKA_NODES=3` passes it):
#   1 (default)  the single broker above;
#   3            a replicated cluster for failure tests (the chaos harness kills
#                its nodes with kill -9, by the pid in their pid files). The
#                single broker is neither started nor stopped by it: both can run
#                at once. `up` waits until each of the three brokers answers a
#                metadata request listing all three.
# The cluster: three KRaft nodes, each process.roles=broker,controller, with a
# static quorum (controller.quorum.voters), formatted with one cluster id:
#   node 1: broker 127.0.0.1:19092, controller 127.0.0.1:19192
#   node 2: broker 127.0.0.1:19093, controller 127.0.0.1:19193
#   node 3: broker 127.0.0.1:19094, controller 127.0.0.1:19194
#   bootstrap servers: 127.0.0.1:19092,127.0.0.1:19093,127.0.0.1:19094
# Replication factor 3 and min.insync.replicas 2 for every topic, the internal
# ones included; no automatic topic creation (create topics with
# `connectflow migrate` or TopicCommand); no unclean leader election (a replica
# outside the ISR never becomes leader: no acknowledged write is lost).
# Settings for quick failover on one machine, and why:
#   broker.session.timeout.ms=6000 (default 9000): the active controller fences
#     a broker that stopped heartbeating (kill -9) after 6 s and moves the
#     leadership of its partitions to another in-sync replica;
#   broker.heartbeat.interval.ms=1000 (default 2000): six heartbeats per session,
#     so a broker delayed by the shared CPU a few seconds is not fenced by mistake;
#   controller.quorum.fetch.timeout.ms=2000, controller.quorum.election.timeout.ms
#     =1000: when the node killed is the active controller, the others start an
#     election after 2 s without hearing from it, settled within about 1-2 s.
#     These are Kafka's own defaults, set explicitly: they are already short, and
#     lower values make the quorum flap when a JVM stalls for a second (GC, the
#     three JVMs and the tests sharing two cores);
#   replica.lag.time.max.ms=10000 (default 30000): a follower that is alive but
#     stops fetching (stalled, not fenced) leaves the ISR after 10 s rather than
#     30 s, so acks=all writes stall at most that long;
#   -Xmx384m per node, 2 network / 4 I/O threads: three JVMs share 2 cores.
#
# Where things live (all ignored by git, under <repo>/.local/):
#   .local/kafka/libs/         Kafka 4.1.1 jars (Maven Central, via the machine's
#                              Maven and ~/.m2; downloaded once; the cluster uses them too)
#   .local/kafka/data/         the broker's log.dirs (KRaft metadata and topics)
#   .local/kafka/logs/         server.log (log4j2) and kafka.out (JVM stdout)
#   .local/kafka/kafka.pid     pid of the broker this script started
#   .local/kafka-cluster/cluster.id     the id the three nodes were formatted with
#   .local/kafka-cluster/node<N>/       node N: server.properties, data/ (its
#                              log.dirs), logs/ (server.log, kafka.out, format.log),
#                              kafka.pid (pid of the node this script started)
#   .local/postgres/           the PostgreSQL cluster (data/ and server.log),
#                              owned by the `postgres` user, or see below
#   .local/postgres.location   which directory holds the cluster
#   .local/postgres-replica/   the standby (data/, server.log), beside the primary's
#                              directory (also under /var/lib/postgresql when that is)
#   .local/postgres-proxy.pid  the proxy's pid; .local/postgres-proxy.target its target port
#
# Everything runs as root (the machine's only user); PostgreSQL refuses to, so
# its programs run as `postgres` through runuser. The cluster is a plain
# initdb/pg_ctl cluster, not registered with Debian's pg_ctlcluster (that would
# write into /etc/postgresql for every clone); Debian's default cluster (15/main)
# is left alone, and reused if it is the one running on 5432.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
LOCAL="$ROOT/.local"

PG_HOST=127.0.0.1
PG_PORT=${PG_PORT:-5432}
PG_REPLICA=${PG_REPLICA:-0}
PG_REPLICA_PORT=${PG_REPLICA_PORT:-5433}
PG_PROXY_PORT=${PG_PROXY_PORT:-5434}
PG_DIR_NAME=${PG_DIR_NAME:-postgres}
REPLICATION_USER=replicator
REPLICATION_PASSWORD=replicator # DEVELOPMENT ONLY
PG_LOCATION_FILE="$LOCAL/$PG_DIR_NAME.location"
PG_SOCKET_DIR=/var/run/postgresql # Debian's compiled-in default: plain `psql` finds it
APP_USER=connectflow
APP_PASSWORD=connectflow # DEVELOPMENT ONLY
APP_DB=connectflow

KAFKA_VERSION=4.1.1
LOG4J_VERSION=2.24.3
DEPENDENCY_PLUGIN=org.apache.maven.plugins:maven-dependency-plugin:3.8.1
KAFKA_HOME="$LOCAL/kafka"
KAFKA_LIBS="$KAFKA_HOME/libs"
KAFKA_DATA="$KAFKA_HOME/data"
KAFKA_LOGS="$KAFKA_HOME/logs"
KAFKA_PID_FILE="$KAFKA_HOME/kafka.pid"
KAFKA_PROPS="$KAFKA_HOME/server.properties"
KAFKA_HOST=127.0.0.1
KAFKA_PORT=9092
KAFKA_CONTROLLER_PORT=9093
KAFKA_READY_TIMEOUT=90

# The 3-node cluster (KAFKA_NODES=3). Node N: broker port 19091+N, controller
# port 19191+N.
KAFKA_NODES=${KAFKA_NODES:-1}
CLUSTER_HOME="$LOCAL/kafka-cluster"
CLUSTER_ID_FILE="$CLUSTER_HOME/cluster.id"
CLUSTER_SIZE=3
CLUSTER_BROKER_PORT_BASE=19091
CLUSTER_CONTROLLER_PORT_BASE=19191
CLUSTER_READY_TIMEOUT=180 # three JVMs starting at once on two cores
CLUSTER_STOP_TIMEOUT=60   # a node's controlled shutdown waits for the controller

say() { printf '%s\n' "$*"; }
note() { printf '%s\n' "$*" >&2; } # messages of commands whose stdout is a value
die() {
  printf 'services.sh: %s\n' "$*" >&2
  exit 1
}
now_ms() { date +%s%3N; }
# A process that exists and is not a zombie (a killed server whose parent is
# gone may linger unreaped for a while).
pid_alive() {
  local st
  st=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  st=${st##*) }
  [[ ${st:0:1} != [ZX] ]]
}
elapsed() { # elapsed <start_ms>: seconds with one decimal
  local ms=$(($(now_ms) - $1))
  printf '%d.%d' $((ms / 1000)) $((ms % 1000 / 100))
}
show_tail() { # show_tail <file>...: the end of logs, for failures
  local f
  for f in "$@"; do
    [[ -s $f ]] || continue
    printf -- '---- last lines of %s ----\n' "$f" >&2
    tail -n 40 "$f" >&2
  done
}
# Writes stdin to a file only when the content differs; returns 0 when it wrote.
write_if_changed() {
  local target=$1 tmp
  tmp=$(mktemp "$target.XXXXXX")
  cat >"$tmp"
  if [[ -f $target ]] && cmp -s "$tmp" "$target"; then
    rm -f "$tmp"
    return 1
  fi
  chmod 644 "$tmp"
  mv -f "$tmp" "$target"
}

APT_UPDATED=
apt_install() {
  export DEBIAN_FRONTEND=noninteractive
  if [[ -z $APT_UPDATED ]]; then
    apt-get update -qq >"$LOCAL/apt.log" 2>&1 || {
      show_tail "$LOCAL/apt.log"
      die "apt-get update failed"
    }
    APT_UPDATED=1
  fi
  # No service may start during the installation (no init system here, and the
  # package's default cluster must not take port 5432 from ours): the standard
  # policy-rc.d "deny" hook, added only for the installation if absent.
  local added_policy=
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    added_policy=1
  fi
  local rc=0
  apt-get install -y -qq --no-install-recommends "$@" >>"$LOCAL/apt.log" 2>&1 || rc=$?
  [[ -z $added_policy ]] || rm -f /usr/sbin/policy-rc.d
  if ((rc != 0)); then
    show_tail "$LOCAL/apt.log"
    die "apt-get install $* failed"
  fi
}

# ------------------------------------------------------------------- Browser

# The console's browser tests drive Debian's Chromium through chromedriver
# (tests/integration/browser.rs); both come from Debian's packages.
ensure_browser_installed() {
  [[ -x /usr/bin/chromium && -x /usr/bin/chromedriver ]] && return 0
  say "browser: chromium or chromedriver missing, installing Debian's chromium and chromium-driver"
  apt_install chromium chromium-driver
  [[ -x /usr/bin/chromium && -x /usr/bin/chromedriver ]] || die "chromium installed but /usr/bin/chromium or /usr/bin/chromedriver is missing"
  say "browser: installed $(/usr/bin/chromium --version 2>/dev/null || echo chromium)"
}

# ---------------------------------------------------------------- Prometheus

# The alert rules are checked and unit-tested with `promtool`
# (deploy/prometheus/), which comes with Debian's prometheus package. The
# package's own service is never started (apt_install's policy-rc.d).
ensure_promtool_installed() {
  command -v promtool >/dev/null 2>&1 && return 0
  say "prometheus: promtool missing, installing Debian's prometheus package"
  apt_install prometheus
  command -v promtool >/dev/null 2>&1 || die "prometheus installed but promtool is missing"
  say "prometheus: installed $(promtool --version 2>/dev/null | head -n 1)"
}

# ------------------------------------------------------------ Image tooling

# `make image-test` (deploy/image-test.sh) builds the shipped image with
# Debian's podman (its build is buildah's), on base images made with
# debootstrap. runc is the OCI runtime: podman's first choice, crun (1.8 in
# bookworm), refuses the cgroups v1/v2 hybrid of machines like this one.
# podman runs as root on the kernel's overlay: no rootless helpers
# (fuse-overlayfs, slirp4netns) are needed.
IMAGE_TOOLS=(podman buildah runc debootstrap)
ensure_image_tools_installed() {
  local missing=() tool
  for tool in "${IMAGE_TOOLS[@]}"; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
  done
  ((${#missing[@]} == 0)) && return 0
  say "image tools: ${missing[*]} missing, installing Debian's ${IMAGE_TOOLS[*]}"
  apt_install "${IMAGE_TOOLS[@]}"
  for tool in "${IMAGE_TOOLS[@]}"; do
    command -v "$tool" >/dev/null 2>&1 || die "installed the image tools but $tool is missing"
  done
  say "image tools: installed $(podman --version), $(buildah --version | awk '{print $1, $2, $3}' | tr -d ,), $(runc --version | head -n 1), debootstrap $(dpkg-query -W -f '${Version}' debootstrap)"
}

# ---------------------------------------------------------------- PostgreSQL

PG_BIN=
find_pg_bin() {
  local d best=
  for d in /usr/lib/postgresql/*/bin; do
    [[ -x $d/postgres && -x $d/initdb && -x $d/pg_ctl && -x $d/psql ]] || continue
    if [[ -z $best ]] || (($(basename "$(dirname "$d")") > $(basename "$(dirname "$best")"))); then
      best=$d
    fi
  done
  PG_BIN=$best
  [[ -n $PG_BIN ]]
}

ensure_pg_installed() {
  find_pg_bin && return 0
  say "postgres: server binaries missing, installing Debian's postgresql package"
  apt_install postgresql
  find_pg_bin || die "postgresql installed but no /usr/lib/postgresql/*/bin/postgres found"
  say "postgres: installed package (PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}'))"
}

# Where the cluster lives. Preferred: <repo>/.local/postgres, owned by postgres.
# But the server runs as `postgres`, which must be able to traverse every parent
# of the repository: a clone under `mktemp -d` (mode 0700, root's) or under
# /root is out of its reach. Then the cluster goes to
# /var/lib/postgresql/connectflow-<hash of the repo path>/ (postgres's own home,
# the Debian place for clusters), one per clone, so clones never share data.
# Loosening the permissions of the user's directories instead would be a
# surprise side effect; a bind mount would not survive a reboot. The choice is
# recorded in .local/postgres.location when the cluster is created, so later
# runs (and `down`) use the same directory even if permissions change.
PG_HOME=
pg_home_fallback() {
  local h
  h=$(printf '%s' "$ROOT" | sha256sum | cut -c1-12)
  printf '/var/lib/postgresql/connectflow-%s' "$h"
  [[ $PG_DIR_NAME == postgres ]] || printf -- '-%s' "$PG_DIR_NAME"
}
postgres_can_use_repo() {
  id -u postgres >/dev/null 2>&1 || return 1
  runuser -u postgres -- test -x "$ROOT" 2>/dev/null
}
resolve_pg_home() { # no side effects: for status/down and before the first init
  local recorded=
  [[ -s $PG_LOCATION_FILE ]] && recorded=$(<"$PG_LOCATION_FILE")
  # (a recorded path from before the clone was moved is ignored)
  if [[ -n $recorded && ($recorded == "$LOCAL/$PG_DIR_NAME" || $recorded == "$(pg_home_fallback)") ]]; then
    PG_HOME=$recorded
  elif postgres_can_use_repo; then
    PG_HOME=$LOCAL/$PG_DIR_NAME
  else
    PG_HOME=$(pg_home_fallback)
  fi
}

as_postgres() { # runs a command as postgres from a directory it can read
  (cd / && runuser -u postgres -- "$@") 9>&-
}

# pid of the postmaster of our cluster when it runs, else nothing.
our_pg_pid() {
  local pidfile="$PG_HOME/data/postmaster.pid" pid
  [[ -r $pidfile ]] || return 1
  pid=$(head -n 1 "$pidfile" 2>/dev/null) || return 1
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  pid_alive "$pid" && [[ $(cat "/proc/$pid/comm" 2>/dev/null) == postgres ]] || return 1
  printf '%s' "$pid"
}

pg_isready_here() { # exit 0 accepting, 1 starting/rejecting, 2 no answer
  local bin=$PG_BIN/pg_isready
  [[ -n $PG_BIN ]] || bin=$(command -v pg_isready) || {
    # PostgreSQL not installed (status/down): a bare TCP connect says "listens".
    timeout 2 bash -c ": </dev/tcp/$PG_HOST/$PG_PORT" 2>/dev/null && return 1
    return 2
  }
  "$bin" -q -h "$PG_HOST" -p "$PG_PORT" -t 2 >/dev/null 2>&1
}

wait_pg_ready() { # wait_pg_ready <seconds> <log> [pid]: returns 1 if pid dies
  local deadline=$((SECONDS + $1)) rc
  while :; do
    rc=0
    pg_isready_here || rc=$?
    ((rc == 0)) && return 0
    [[ -z ${3:-} ]] || pid_alive "$3" || return 1
    if ((SECONDS >= deadline)); then
      show_tail "$2"
      die "postgres: no answer on $PG_HOST:$PG_PORT after $1 s"
    fi
    sleep 0.2
  done
}

# Fallback clusters of clones that no longer exist (CI clones into a new
# temporary directory each time) would pile up: remove those whose recorded
# repository is gone and whose server is not running.
prune_orphan_clusters() {
  local dir repo pid
  for dir in /var/lib/postgresql/connectflow-*; do
    [[ -f $dir/connectflow-repo && $dir != "$PG_HOME" ]] || continue
    repo=$(<"$dir/connectflow-repo")
    [[ -n $repo && ! -e $repo ]] || continue
    pid=$(head -n 1 "$dir/data/postmaster.pid" 2>/dev/null || true)
    [[ $pid =~ ^[0-9]+$ && -d /proc/$pid ]] && continue
    rm -rf -- "$dir"
    say "postgres: removed $dir, the cluster of a clone that no longer exists ($repo)"
  done
}

init_pg_cluster() {
  if [[ $(cat "$PG_LOCATION_FILE" 2>/dev/null) != "$PG_HOME" ]]; then
    if postgres_can_use_repo && install -d -o postgres -g postgres -m 700 "$LOCAL/$PG_DIR_NAME" &&
      runuser -u postgres -- test -w "$LOCAL/$PG_DIR_NAME" 2>/dev/null; then
      PG_HOME=$LOCAL/$PG_DIR_NAME
    else
      PG_HOME=$(pg_home_fallback)
      say "postgres: user postgres cannot reach $ROOT, so the cluster goes to $PG_HOME"
    fi
  fi
  install -d -o postgres -g postgres -m 700 "$PG_HOME"
  if [[ $PG_HOME != "$LOCAL/$PG_DIR_NAME" ]]; then
    [[ -f $PG_HOME/connectflow-repo ]] || printf '%s\n' "$ROOT" >"$PG_HOME/connectflow-repo"
    prune_orphan_clusters
  fi
  if [[ ! -s $PG_HOME/data/PG_VERSION ]]; then
    as_postgres "$PG_BIN/initdb" -D "$PG_HOME/data" -U postgres -E UTF8 --locale=C.UTF-8 \
      --auth-local=peer --auth-host=scram-sha-256 >"$PG_HOME/initdb.log" 2>&1 || {
      show_tail "$PG_HOME/initdb.log"
      die "postgres: initdb failed"
    }
    # Defaults (fsync on) apart from: TCP on loopback only, room for the many
    # connection pools tests open, and a little more cache.
    cat >>"$PG_HOME/data/postgresql.conf" <<EOF

# ---- connectflow: deploy/services.sh
listen_addresses = '$PG_HOST'
port = $PG_PORT
unix_socket_directories = '$PG_SOCKET_DIR'
max_connections = 200
shared_buffers = 256MB
EOF
    say "postgres: created cluster at $PG_HOME/data ($("$PG_BIN/postgres" --version | awk '{print $3}'))"
  fi
  printf '%s\n' "$PG_HOME" >"$PG_LOCATION_FILE"
}

start_pg_cluster() {
  install -d -o postgres -g postgres -m 2775 "$PG_SOCKET_DIR" # /run is a tmpfs
  local t0 log="$PG_HOME/server.log" stale
  # After a crash (kill -9) the old postmaster may stay a zombie for a few
  # seconds, and PostgreSQL will not start while its pid exists.
  stale=$(head -n 1 "$PG_HOME/data/postmaster.pid" 2>/dev/null || true)
  if [[ $stale =~ ^[0-9]+$ ]] && ! pid_alive "$stale"; then
    for _ in $(seq 150); do
      [[ -e /proc/$stale ]] || break
      sleep 0.1
    done
  fi
  t0=$(now_ms)
  as_postgres "$PG_BIN/pg_ctl" -D "$PG_HOME/data" -l "$log" -w -t 60 start \
    >"$PG_HOME/pg_ctl.log" 2>&1 || {
    show_tail "$PG_HOME/pg_ctl.log" "$log"
    die "postgres: the cluster at $PG_HOME/data did not start"
  }
  wait_pg_ready 30 "$log"
  say "postgres: started cluster at $PG_HOME/data (pid $(our_pg_pid), $(elapsed "$t0")s)"
}

# Databases the tests and benchmarks leave behind: every integration test
# creates its own `cf_test_<uuid>` and keeps it (a failed test's data stays
# to be looked at), and an interrupted `make bench` leaves its `cf_bench_*`.
# Main's cluster held 867 after a day of `make test`: each costs disk, and
# autovacuum's launcher visits every database once a minute (800 empty ones
# took 1 % of a core at idle). Dropped when this script has just started
# the cluster, so no test or bench is using them.
drop_leftover_databases() {
  local names name sql='' n=0 t0
  names=$(su_psql -c "select datname from pg_database where datname like 'cf\_test\_%' or datname like 'cf\_bench\_%'") || return 0
  while IFS= read -r name; do
    [[ $name =~ ^cf_(test|bench)_[a-z0-9_]+$ ]] || continue
    sql+="drop database if exists \"$name\";"$'\n'
    n=$((n + 1))
  done <<<"$names"
  ((n > 0)) || return 0
  t0=$(now_ms)
  # Each DROP DATABASE waits for a checkpoint: about 0.15 s each here.
  ((n < 50)) || say "postgres: dropping $n databases left by tests and benchmarks (about $((n * 15 / 100 + 1))s)"
  # One session, one statement at a time (DROP DATABASE cannot run in a
  # transaction block); a failure stops it and is only reported.
  if su_psql <<<"$sql" >/dev/null 2>&1; then
    say "postgres: dropped $n databases left by tests and benchmarks ($(elapsed "$t0")s)"
  else
    say "postgres: dropping the $n databases left by tests and benchmarks stopped at an error; the rest stay"
  fi
}

su_psql() { # psql as the postgres superuser over the local socket
  as_postgres "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$PG_SOCKET_DIR" -p "$PG_PORT" \
    -d postgres -At "$@"
}
app_can_connect() { # app_can_connect <database>
  PGPASSWORD=$APP_PASSWORD PGCONNECT_TIMEOUT=5 "$PG_BIN/psql" -X -q -At \
    -h "$PG_HOST" -p "$PG_PORT" -U "$APP_USER" -d "$1" -c 'select 1' >/dev/null 2>&1
}

ensure_pg_role_and_db() {
  local can_su=
  if id -u postgres >/dev/null 2>&1 && [[ -S $PG_SOCKET_DIR/.s.PGSQL.$PG_PORT ]] &&
    [[ $(su_psql -c 'select rolsuper from pg_roles where rolname = current_user' 2>/dev/null) == t ]]; then
    can_su=1
  fi
  if [[ -z $can_su ]]; then
    app_can_connect "$APP_DB" ||
      die "postgres: the server on $PG_HOST:$PG_PORT is not ours and role $APP_USER cannot connect to database $APP_DB with its password"
    say "postgres: no superuser access to the server on $PG_HOST:$PG_PORT; role $APP_USER connects to $APP_DB, good enough"
    return 0
  fi
  local role db_owner
  role=$(su_psql -c "select rolcanlogin and rolcreatedb from pg_roles where rolname = '$APP_USER'")
  case $role in
  '')
    su_psql -c "create role $APP_USER login createdb password '$APP_PASSWORD'"
    say "postgres: created role $APP_USER"
    ;;
  f)
    su_psql -c "alter role $APP_USER login createdb"
    say "postgres: gave role $APP_USER LOGIN CREATEDB"
    ;;
  esac
  db_owner=$(su_psql -c "select pg_get_userbyid(datdba) from pg_database where datname = '$APP_DB'")
  if [[ -z $db_owner ]]; then
    su_psql -c "create database $APP_DB owner $APP_USER"
    say "postgres: created database $APP_DB owned by $APP_USER"
  elif [[ $db_owner != "$APP_USER" ]]; then
    su_psql -c "alter database $APP_DB owner to $APP_USER"
    say "postgres: database $APP_DB now owned by $APP_USER (was $db_owner)"
  fi
  if ! app_can_connect "$APP_DB"; then
    su_psql -c "alter role $APP_USER password '$APP_PASSWORD'"
    say "postgres: reset the password of role $APP_USER"
    app_can_connect "$APP_DB" ||
      die "postgres: role $APP_USER still cannot connect over TCP (check pg_hba.conf of the server on $PG_PORT)"
  fi
}

postgres_up() {
  resolve_pg_home
  local pid rc=0
  if pid=$(our_pg_pid); then
    if wait_pg_ready 60 "$PG_HOME/server.log" "$pid"; then
      say "postgres: cluster at $PG_HOME/data already running (pid $pid)"
      ensure_pg_role_and_db
      return 0
    fi
    say "postgres: the server of $PG_HOME/data (pid $pid) went away while starting"
  fi
  pg_isready_here || rc=$?
  if ((rc != 2)); then
    wait_pg_ready 60 /dev/null
    say "postgres: already listening on $PG_HOST:$PG_PORT, reused"
  else
    init_pg_cluster
    start_pg_cluster
    drop_leftover_databases
  fi
  ensure_pg_role_and_db
}

postgres_down() {
  resolve_pg_home
  local pid
  if pid=$(our_pg_pid); then
    find_pg_bin || die "postgres: binaries missing, cannot stop pid $pid"
    as_postgres "$PG_BIN/pg_ctl" -D "$PG_HOME/data" -m fast -w -t 60 stop >"$PG_HOME/pg_ctl.log" 2>&1 || {
      show_tail "$PG_HOME/pg_ctl.log" "$PG_HOME/server.log"
      die "postgres: pg_ctl stop failed"
    }
    say "postgres: stopped cluster at $PG_HOME/data (pid $pid; data kept)"
  elif pg_isready_here || [[ $? == 1 ]]; then
    say "postgres: $PG_HOST:$PG_PORT is served by a server this script did not start; left running"
  else
    say "postgres: not running"
  fi
}

postgres_status() {
  resolve_pg_home
  find_pg_bin || true
  local pid rc=0
  pg_isready_here || rc=$?
  if pid=$(our_pg_pid); then
    say "postgres: $PG_HOST:$PG_PORT $( ((rc == 0)) && echo accepting || echo 'not accepting yet'), cluster at $PG_HOME/data (pid $pid, started by this script)"
  elif ((rc != 2)); then
    say "postgres: $PG_HOST:$PG_PORT $( ((rc == 0)) && echo accepting || echo 'not accepting yet'), a server this script did not start"
  else
    say "postgres: nothing listens on $PG_HOST:$PG_PORT (cluster of this clone: $PG_HOME/data)"
  fi
}


# postgres-stop / postgres-start: the chaos harness's PostgreSQL restart. Only
# the cluster this script created (same directory as `up` and `down`); a server
# on 5432 that this script did not start is never touched (exit status 1).
postgres_stop_cmd() {
  resolve_pg_home
  local pid rc=0 t0
  if pid=$(our_pg_pid); then
    find_pg_bin || die "postgres: binaries missing, cannot stop pid $pid"
    t0=$(now_ms)
    as_postgres "$PG_BIN/pg_ctl" -D "$PG_HOME/data" -m fast -w -t 60 stop >"$PG_HOME/pg_ctl.log" 2>&1 || {
      show_tail "$PG_HOME/pg_ctl.log" "$PG_HOME/server.log"
      die "postgres: pg_ctl stop failed"
    }
    say "postgres: stopped cluster at $PG_HOME/data (pid $pid, fast shutdown, $(elapsed "$t0")s; data kept)"
    return 0
  fi
  pg_isready_here || rc=$?
  if ((rc != 2)); then
    say "postgres: $PG_HOST:$PG_PORT is served by a server this script did not start (reused); not stopping it"
    exit 1
  fi
  say "postgres: not running (cluster of this clone: $PG_HOME/data)"
}

postgres_start_cmd() {
  resolve_pg_home
  local pid rc=0
  if pid=$(our_pg_pid); then
    find_pg_bin || true
    wait_pg_ready 60 "$PG_HOME/server.log" "$pid" ||
      die "postgres: the server of $PG_HOME/data (pid $pid) went away while starting"
    say "postgres: cluster at $PG_HOME/data already running (pid $pid)"
    return 0
  fi
  find_pg_bin || true
  pg_isready_here || rc=$?
  if ((rc != 2)); then
    say "postgres: $PG_HOST:$PG_PORT is served by a server this script did not start (reused); nothing to start"
    exit 1
  fi
  [[ -s $PG_HOME/data/PG_VERSION ]] ||
    die "postgres: no cluster at $PG_HOME/data yet; run: bash deploy/services.sh up"
  [[ -n $PG_BIN ]] || die "postgres: server binaries missing; run: bash deploy/services.sh up"
  start_pg_cluster
}

# ------------------------------------------------- PostgreSQL standby, proxy

# The standby lives beside the primary's directory: <PG_HOME>-replica.
REPLICA_HOME=
resolve_replica_home() {
  resolve_pg_home
  REPLICA_HOME="$PG_HOME-replica"
}
PROXY_PID_FILE="$LOCAL/$PG_DIR_NAME-proxy.pid"
PROXY_TARGET_FILE="$LOCAL/$PG_DIR_NAME-proxy.target"
PROXY_LOG="$LOCAL/$PG_DIR_NAME-proxy.log"

# pid of the standby's postmaster when it runs, else nothing.
our_replica_pid() {
  local pidfile="$REPLICA_HOME/data/postmaster.pid" pid
  [[ -r $pidfile ]] || return 1
  pid=$(head -n 1 "$pidfile" 2>/dev/null) || return 1
  [[ $pid =~ ^[0-9]+$ ]] && pid_alive "$pid" && [[ $(cat "/proc/$pid/comm" 2>/dev/null) == postgres ]] || return 1
  printf '%s' "$pid"
}

psql_at() { # psql_at <port> <sql>: one value, as the postgres superuser over the socket
  as_postgres "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$PG_SOCKET_DIR" -p "$1" -d postgres -At -c "$2"
}

wait_port_ready() { # wait_port_ready <port> <seconds> <log>
  local deadline=$((SECONDS + $2))
  until "$PG_BIN/pg_isready" -q -h "$PG_HOST" -p "$1" -t 2 >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      show_tail "$3"
      die "postgres: no answer on $PG_HOST:$1 after $2 s"
    fi
    sleep 0.2
  done
}

# The primary accepts the standby: a replication role, and `host replication`
# in pg_hba.conf (initdb's default already allows 127.0.0.1 with a password).
ensure_replication_role() {
  local has
  has=$(psql_at "$PG_PORT" "select rolreplication from pg_roles where rolname = '$REPLICATION_USER'")
  case $has in
  t) ;;
  f) psql_at "$PG_PORT" "alter role $REPLICATION_USER replication login" >/dev/null ;;
  *)
    psql_at "$PG_PORT" "create role $REPLICATION_USER replication login password '$REPLICATION_PASSWORD'" >/dev/null
    say "postgres: created role $REPLICATION_USER (REPLICATION) for the standby"
    ;;
  esac
}

# Clones the primary into <PG_HOME>-replica with pg_basebackup (-R writes
# standby.signal and primary_conninfo), then gives it its own port. No
# synchronous_standby_names on the primary: replication stays asynchronous, so
# a kill -9 of the primary can lose what it committed but had not sent yet.
create_replica() {
  our_pg_pid >/dev/null || die "postgres: the primary of $PG_HOME does not run; the standby is cloned from it"
  ensure_replication_role
  install -d -o postgres -g postgres -m 700 "$REPLICA_HOME"
  rm -rf "$REPLICA_HOME/data"
  local t0
  t0=$(now_ms)
  as_postgres env PGPASSWORD="$REPLICATION_PASSWORD" "$PG_BIN/pg_basebackup" -h "$PG_HOST" -p "$PG_PORT" \
    -U "$REPLICATION_USER" -D "$REPLICA_HOME/data" -R -X stream -c fast \
    >"$REPLICA_HOME/basebackup.log" 2>&1 || {
    show_tail "$REPLICA_HOME/basebackup.log"
    die "postgres: pg_basebackup from $PG_HOST:$PG_PORT failed"
  }
  cat >>"$REPLICA_HOME/data/postgresql.conf" <<EOF

# ---- connectflow: deploy/services.sh, the standby of $PG_HOST:$PG_PORT
port = $PG_REPLICA_PORT
hot_standby = on
hot_standby_feedback = on
EOF
  say "postgres: cloned the primary into $REPLICA_HOME/data ($(elapsed "$t0")s)"
}

start_replica() {
  local log="$REPLICA_HOME/server.log" t0
  t0=$(now_ms)
  as_postgres "$PG_BIN/pg_ctl" -D "$REPLICA_HOME/data" -l "$log" -w -t 60 start >"$REPLICA_HOME/pg_ctl.log" 2>&1 || {
    show_tail "$REPLICA_HOME/pg_ctl.log" "$log"
    die "postgres: the standby at $REPLICA_HOME/data did not start"
  }
  wait_port_ready "$PG_REPLICA_PORT" 30 "$log"
  say "postgres: standby on $PG_HOST:$PG_REPLICA_PORT started (pid $(our_replica_pid), $(elapsed "$t0")s), streaming from :$PG_PORT"
}

stop_replica() {
  local pid
  pid=$(our_replica_pid) || return 0
  as_postgres "$PG_BIN/pg_ctl" -D "$REPLICA_HOME/data" -m fast -w -t 60 stop >"$REPLICA_HOME/pg_ctl.log" 2>&1 || {
    show_tail "$REPLICA_HOME/pg_ctl.log"
    die "postgres: stopping the standby failed"
  }
  say "postgres: stopped the standby (pid $pid)"
}

replica_up() {
  resolve_replica_home
  local pid
  if pid=$(our_replica_pid); then
    say "postgres: standby at $REPLICA_HOME/data already running (pid $pid, $PG_HOST:$PG_REPLICA_PORT)"
  else
    [[ -s $REPLICA_HOME/data/PG_VERSION ]] || create_replica
    start_replica
  fi
  proxy_up
}

replica_reset_cmd() {
  resolve_replica_home
  find_pg_bin || die "postgres: binaries missing"
  stop_replica
  create_replica
  start_replica
  stop_proxy
  start_proxy "$PG_PORT"
}

primary_kill_cmd() {
  resolve_pg_home
  local pid
  pid=$(our_pg_pid) || die "postgres: the primary of $PG_HOME does not run"
  kill -KILL "$pid"
  say "postgres: killed the primary (pid $pid, kill -9)"
}

replica_promote_cmd() {
  resolve_replica_home
  find_pg_bin || die "postgres: binaries missing"
  our_replica_pid >/dev/null || die "postgres: the standby of $REPLICA_HOME does not run"
  local t0
  t0=$(now_ms)
  as_postgres "$PG_BIN/pg_ctl" -D "$REPLICA_HOME/data" -w -t 60 promote >"$REPLICA_HOME/pg_ctl.log" 2>&1 || {
    show_tail "$REPLICA_HOME/pg_ctl.log" "$REPLICA_HOME/server.log"
    die "postgres: promoting the standby failed"
  }
  [[ $(psql_at "$PG_REPLICA_PORT" "select pg_is_in_recovery()") == f ]] || die "postgres: the standby is still in recovery"
  say "postgres: promoted the standby on $PG_HOST:$PG_REPLICA_PORT to primary ($(elapsed "$t0")s)"
}

# Stops the standby's WAL receiver (primary_conninfo emptied, reloaded): what
# the primary commits from now on never reaches it, so a failover test can
# make the window of lost transactions as wide as it wants. replica-reset
# clones afresh (primary_conninfo included).
replica_detach_cmd() {
  resolve_replica_home
  find_pg_bin || die "postgres: binaries missing"
  our_replica_pid >/dev/null || die "postgres: the standby of $REPLICA_HOME does not run"
  psql_at "$PG_REPLICA_PORT" "alter system set primary_conninfo = ''" >/dev/null
  psql_at "$PG_REPLICA_PORT" "select pg_reload_conf()" >/dev/null
  say "postgres: the standby on $PG_HOST:$PG_REPLICA_PORT no longer receives WAL (replayed up to $(psql_at "$PG_REPLICA_PORT" "select pg_last_wal_replay_lsn()"))"
}

# "<primary's pg_current_wal_lsn> <standby's pg_last_wal_replay_lsn>", "-" for
# a server that does not answer.
wal_positions_cmd() {
  resolve_replica_home
  find_pg_bin || die "postgres: binaries missing"
  local primary replica
  primary=$(psql_at "$PG_PORT" "select pg_current_wal_lsn()" 2>/dev/null) || primary=-
  replica=$(psql_at "$PG_REPLICA_PORT" "select pg_last_wal_replay_lsn()" 2>/dev/null) || replica=-
  printf '%s %s\n' "${primary:--}" "${replica:--}"
}

ensure_socat() {
  command -v socat >/dev/null && return 0
  say "proxy: socat missing, installing Debian's socat"
  apt_install socat
}

our_proxy_pid() {
  local pid
  [[ -s $PROXY_PID_FILE ]] || return 1
  pid=$(<"$PROXY_PID_FILE")
  [[ $pid =~ ^[0-9]+$ ]] && pid_alive "$pid" && [[ $(cat "/proc/$pid/comm" 2>/dev/null) == socat ]] || return 1
  printf '%s' "$pid"
}

# start_proxy <target port>: socat on PG_PROXY_PORT forwarding to the target,
# a process per connection (fork).
start_proxy() {
  ensure_socat
  nohup socat "TCP-LISTEN:$PG_PROXY_PORT,bind=$PG_HOST,reuseaddr,fork" "TCP:$PG_HOST:$1" \
    >>"$PROXY_LOG" 2>&1 9>&- &
  printf '%s\n' $! >"$PROXY_PID_FILE"
  printf '%s\n' "$1" >"$PROXY_TARGET_FILE"
  local i
  for i in $(seq 50); do
    timeout 1 bash -c ": </dev/tcp/$PG_HOST/$PG_PROXY_PORT" 2>/dev/null && break
    sleep 0.1
  done
  say "proxy: $PG_HOST:$PG_PROXY_PORT -> $PG_HOST:$1 (socat pid $(<"$PROXY_PID_FILE"))"
}

# Stops the proxy and the connections it forwards (its forked children).
stop_proxy() {
  local pid
  pid=$(our_proxy_pid) || return 0
  pkill -KILL -P "$pid" socat 2>/dev/null || true
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 50); do
    pid_alive "$pid" || break
    sleep 0.1
  done
  rm -f "$PROXY_PID_FILE"
}

proxy_up() {
  local pid
  if pid=$(our_proxy_pid); then
    say "proxy: already running (pid $pid, $PG_HOST:$PG_PROXY_PORT -> :$(cat "$PROXY_TARGET_FILE" 2>/dev/null))"
    return 0
  fi
  start_proxy "$PG_PORT"
}

proxy_switch_cmd() {
  [[ ${1:-} =~ ^[0-9]+$ ]] || die "proxy-switch needs the new target's port"
  stop_proxy
  start_proxy "$1"
}

replica_down() {
  resolve_replica_home
  stop_proxy
  find_pg_bin || return 0
  stop_replica
}

replica_status() {
  resolve_replica_home
  find_pg_bin || return 0
  local pid
  if pid=$(our_replica_pid); then
    say "postgres standby: $PG_HOST:$PG_REPLICA_PORT, pid $pid, in recovery: $(psql_at "$PG_REPLICA_PORT" "select pg_is_in_recovery()" 2>/dev/null || echo '?') ($REPLICA_HOME/data)"
  elif [[ -d $REPLICA_HOME/data ]]; then
    say "postgres standby: not running ($REPLICA_HOME/data)"
  fi
  if pid=$(our_proxy_pid); then
    say "proxy: $PG_HOST:$PG_PROXY_PORT -> :$(cat "$PROXY_TARGET_FILE" 2>/dev/null) (socat pid $pid)"
  fi
}

# --------------------------------------------------------------------- Kafka

# A real Kafka request, answered only once the broker serves clients: Metadata
# v4 (the oldest version Kafka 4 keeps) over a plain socket with Perl (perl-base
# is Essential in Debian, and this takes milliseconds where a JVM client takes
# seconds). Exit 0 with "<brokers> <first host:port>" when the broker answered
# with at least one broker, 2 when nothing listens, 3+ otherwise.
# shellcheck disable=SC2016 # Perl code, expanded by Perl
KAFKA_PROBE='
use strict; use warnings; use IO::Socket::INET;
my ($host, $port) = @ARGV;
my $s = IO::Socket::INET->new(PeerAddr => $host, PeerPort => $port, Proto => "tcp", Timeout => 2) or exit 2;
$SIG{ALRM} = sub { exit 3 }; alarm 5;
# header: api_key 3 (Metadata), api_version 4, correlation_id, client_id;
# body: topics = null (all), allow_auto_topic_creation = false
my $req = pack("s> s> l> s>/a* l> c", 3, 4, 7, "connectflow-services.sh", -1, 0);
my $msg = pack("l>", length $req) . $req;
defined syswrite($s, $msg) or exit 4;
sub readn { my $n = shift; my $b = ""; while (length $b < $n) { my $r = sysread($s, $b, $n - length $b, length $b); exit 4 unless $r; } return $b; }
my $len = unpack("l>", readn(4));
my $resp = readn($len);
my ($corr, $throttle, $nbrokers) = unpack("l> l> l>", $resp);
exit 5 unless $corr == 7 && $nbrokers >= 1;
my ($node, $bhost, $bport) = unpack("x12 l> s>/a l>", $resp);
print "$nbrokers $bhost:$bport\n";
'
kafka_probe() { # kafka_probe [host port]: the single broker unless given
  perl -e "$KAFKA_PROBE" "${1:-$KAFKA_HOST}" "${2:-$KAFKA_PORT}" 2>/dev/null
}

# pid of the broker this clone started, when it still runs.
our_kafka_pid() {
  local pid
  [[ -s $KAFKA_PID_FILE ]] || return 1
  pid=$(<"$KAFKA_PID_FILE")
  [[ $pid =~ ^[0-9]+$ ]] && pid_alive "$pid" || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "kafka.Kafka $KAFKA_PROPS" || return 1
  printf '%s' "$pid"
}

JAVA_CHECKED=
ensure_java_and_maven() {
  [[ -z $JAVA_CHECKED ]] || return 0
  local missing=()
  command -v java >/dev/null 2>&1 || missing+=(openjdk-17-jre-headless)
  command -v mvn >/dev/null 2>&1 || missing+=(maven)
  if ((${#missing[@]})); then
    apt_install "${missing[@]}"
    say "kafka: installed ${missing[*]}"
  fi
  local v
  v=$(java -XshowSettings:properties -version 2>&1 | awk -F'= ' '/java.specification.version/ {print $2}')
  if ! [[ ${v%%.*} =~ ^[0-9]+$ ]] || ((${v%%.*} < 17)); then
    die "kafka: Kafka 4 needs Java 17 or later (java here: ${v:-unknown})"
  fi
  JAVA_CHECKED=1
}

# The broker and its runtime dependencies, plus kafka-tools (TopicCommand and
# friends, handy by hand) and a log4j2 binding so the broker writes a log file.
# Kafka 4.1's POMs declare slf4j-api 1.7.36, so the binding is log4j-slf4j-impl
# (SLF4J 1.x), as in Kafka's own distribution: log4j-slf4j2-impl would need
# slf4j-api 2.x and, next to 1.7.36, leaves the broker silent (NOP logger).
kafka_pom() {
  cat <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<!-- Generated by deploy/services.sh: only used to fetch the Kafka broker jars. -->
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.connectflow</groupId>
  <artifactId>kafka-broker-jars</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>$KAFKA_VERSION</version></dependency>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka-tools</artifactId><version>$KAFKA_VERSION</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId><version>$LOG4J_VERSION</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId><version>$LOG4J_VERSION</version></dependency>
  </dependencies>
</project>
EOF
}

ensure_kafka_jars() {
  local key="kafka_2.13 $KAFKA_VERSION + kafka-tools, log4j-slf4j-impl $LOG4J_VERSION"
  if [[ -f $KAFKA_LIBS/.complete && $(<"$KAFKA_LIBS/.complete") == "$key" ]]; then
    return 0
  fi
  ensure_java_and_maven
  mkdir -p "$KAFKA_HOME"
  kafka_pom >"$KAFKA_HOME/pom.xml"
  local t0 tmp="$KAFKA_HOME/libs.download"
  t0=$(now_ms)
  rm -rf "$tmp"
  (cd "$KAFKA_HOME" && mvn -q -B -Dstyle.color=never -f pom.xml "$DEPENDENCY_PLUGIN:copy-dependencies" \
    -DoutputDirectory="$tmp" -DincludeScope=runtime) >"$KAFKA_HOME/mvn.log" 2>&1 9>&- || {
    show_tail "$KAFKA_HOME/mvn.log"
    die "kafka: downloading the jars with Maven failed"
  }
  ls "$tmp"/kafka_2.13-"$KAFKA_VERSION".jar >/dev/null 2>&1 || die "kafka: Maven ran but $tmp has no kafka_2.13 jar"
  printf '%s\n' "$key" >"$tmp/.complete"
  rm -rf "$KAFKA_LIBS"
  mv "$tmp" "$KAFKA_LIBS"
  say "kafka: downloaded jars ($(find "$KAFKA_LIBS" -name '*.jar' | wc -l) files, $(du -sh "$KAFKA_LIBS" | cut -f1), $(elapsed "$t0")s) into $KAFKA_LIBS"
}

write_kafka_config() {
  mkdir -p "$KAFKA_DATA" "$KAFKA_LOGS"
  if write_if_changed "$KAFKA_PROPS" <<EOF; then
# Generated by deploy/services.sh: a single-node KRaft broker for development and tests.
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=$KAFKA_HOST:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://$KAFKA_HOST:$KAFKA_PORT,CONTROLLER://$KAFKA_HOST:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://$KAFKA_HOST:$KAFKA_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$KAFKA_DATA
num.partitions=6
# One node: every internal topic has one replica.
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
# Fast tests: no wait before the first rebalance, small internal topics.
group.initial.rebalance.delay.ms=0
offsets.topic.num.partitions=6
transaction.state.log.num.partitions=6
EOF
    if our_kafka_pid >/dev/null; then
      say "kafka: updated $KAFKA_PROPS; the running broker uses the old one until down + up"
    fi
  fi
  write_kafka_log4j_config
}

# The log4j2 configurations of the servers (single broker and cluster nodes:
# -Dkafka.logs.dir says where each writes) and of the command-line tools.
write_kafka_log4j_config() {
  mkdir -p "$KAFKA_HOME"
  write_if_changed "$KAFKA_HOME/log4j2.properties" <<'EOF' || true
# Generated by deploy/services.sh: the broker's log, ${sys:kafka.logs.dir}/server.log.
status = warn
appender.file.type = RollingFile
appender.file.name = file
appender.file.fileName = ${sys:kafka.logs.dir}/server.log
appender.file.filePattern = ${sys:kafka.logs.dir}/server.log.%i
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
appender.file.policies.type = Policies
appender.file.policies.size.type = SizeBasedTriggeringPolicy
appender.file.policies.size.size = 20MB
appender.file.strategy.type = DefaultRolloverStrategy
appender.file.strategy.max = 3
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = file
EOF
  write_if_changed "$KAFKA_HOME/tools-log4j2.properties" <<'EOF' || true
# Generated by deploy/services.sh: command-line tools log warnings to stderr.
status = warn
appender.err.type = Console
appender.err.name = err
appender.err.target = SYSTEM_ERR
appender.err.layout.type = PatternLayout
appender.err.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.err.ref = err
EOF
}

kafka_tool() { # kafka_tool <main class> <args>...: a Kafka command-line tool from our jars
  local main=$1
  shift
  java -Xmx256m -Dlog4j2.configurationFile="$KAFKA_HOME/tools-log4j2.properties" \
    -cp "$KAFKA_LIBS/*" "$main" "$@"
}

# A Kafka cluster id: 16 random bytes, URL-safe base64 without padding, like
# org.apache.kafka.common.Uuid.randomUuid() (which also avoids a leading '-').
kafka_cluster_id() {
  local id
  while :; do
    id=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')
    [[ $id != -* ]] && break
  done
  printf '%s' "$id"
}

format_kafka_storage() {
  [[ -s $KAFKA_DATA/meta.properties ]] && return 0
  local id
  id=$(kafka_cluster_id)
  kafka_tool kafka.tools.StorageTool format -t "$id" -c "$KAFKA_PROPS" --standalone \
    >"$KAFKA_LOGS/format.log" 2>&1 9>&- || {
    show_tail "$KAFKA_LOGS/format.log"
    die "kafka: formatting $KAFKA_DATA failed"
  }
  say "kafka: formatted $KAFKA_DATA (cluster id $id)"
}

# spawn_kafka <dir> <pid file> <logs dir> <server.properties> <heap option>...:
# starts a Kafka server (kafka.Kafka) from our jars, JVM output appended to
# <logs dir>/kafka.out, and waits (5 s at most) for its pid file. A new session
# (setsid) without a terminal, and no inherited lock descriptor: the server
# outlives the calling shell and its job control.
spawn_kafka() {
  local dir=$1 pid_file=$2 logs=$3 props=$4
  shift 4
  rm -f "$pid_file"
  (
    cd "$dir"
    exec 9>&-
    # shellcheck disable=SC2016 # expanded by the inner bash
    setsid nohup bash -c 'echo $$ >"$0"; exec "$@"' "$pid_file" \
      java "$@" -XX:+UseG1GC -Djava.awt.headless=true \
      -Dkafka.logs.dir="$logs" -Dlog4j2.configurationFile="$KAFKA_HOME/log4j2.properties" \
      -cp "$KAFKA_LIBS/*" kafka.Kafka "$props" \
      </dev/null >>"$logs/kafka.out" 2>&1 &
  )
  for _ in $(seq 50); do
    [[ -s $pid_file ]] && break
    sleep 0.1
  done
  [[ -s $pid_file ]]
}

# Partitions of deleted topics still on disk (`<topic>-<partition>.<id>-delete`
# directories): the broker removes them a minute or two after the deletion
# while it runs, but not those of a broker stopped first, and it loads each
# at start. The local broker of a checkout that ran `make test` and `make
# bench` for a day held 14,027 of them (15 GB; 40 minutes after its start
# none went in a minute watched, and its heap held 9,985 partitions); it took
# 31 s to start with them and 6 s without. They are deleted topics' data:
# removed while the broker is stopped, before it starts.
prune_deleted_partitions() {
  local n
  n=$(find "$KAFKA_DATA" -mindepth 1 -maxdepth 1 -type d -name '*-delete' | wc -l)
  ((n > 0)) || return 0
  find "$KAFKA_DATA" -mindepth 1 -maxdepth 1 -type d -name '*-delete' -exec rm -rf {} +
  say "kafka: removed $n partition directories of deleted topics from $KAFKA_DATA"
}

KAFKA_STARTED_AT=
start_kafka() {
  prune_deleted_partitions
  printf '==== %s deploy/services.sh starts the broker\n' "$(date -Is)" >>"$KAFKA_LOGS/kafka.out"
  KAFKA_STARTED_AT=$(now_ms)
  spawn_kafka "$KAFKA_HOME" "$KAFKA_PID_FILE" "$KAFKA_LOGS" "$KAFKA_PROPS" -Xms256m -Xmx768m ||
    die "kafka: the broker did not start (no pid file)"
  say "kafka: started broker pid $(<"$KAFKA_PID_FILE") (log: $KAFKA_LOGS/server.log)"
}

kafka_failure_report() {
  show_tail "$KAFKA_LOGS/kafka.out" "$KAFKA_LOGS/server.log"
  if [[ -s $KAFKA_LOGS/server.log ]] && grep -qE '^\[[^]]*\] (ERROR|FATAL)' "$KAFKA_LOGS/server.log"; then
    printf -- '---- last errors in %s ----\n' "$KAFKA_LOGS/server.log" >&2
    grep -E '^\[[^]]*\] (ERROR|FATAL)' "$KAFKA_LOGS/server.log" | tail -n 5 | cut -c1-400 >&2
  fi
}

wait_kafka_ready() { # wait_kafka_ready <start_ms> <pid or empty>
  local t0=$1 pid=${2:-} deadline=$((SECONDS + KAFKA_READY_TIMEOUT)) answer
  while :; do
    if answer=$(kafka_probe); then
      say "kafka: ready after $(elapsed "$t0")s ($KAFKA_HOST:$KAFKA_PORT answers metadata: ${answer%% *} broker)"
      return 0
    fi
    if [[ -n $pid ]] && ! pid_alive "$pid"; then
      kafka_failure_report
      die "kafka: the broker (pid $pid) exited during startup"
    fi
    if ((SECONDS >= deadline)); then
      [[ -z $pid ]] || kafka_failure_report # no pid: not our broker, not our logs
      die "kafka: no metadata answer on $KAFKA_HOST:$KAFKA_PORT after ${KAFKA_READY_TIMEOUT}s"
    fi
    sleep 0.5
  done
}

# Starts the broker when needed, without waiting for it (kafka_up_wait does):
# PostgreSQL comes up meanwhile.
KAFKA_WAIT=
kafka_up_start() {
  local pid rc=0 answer
  if pid=$(our_kafka_pid); then
    write_kafka_config # only to say when the running broker's configuration is outdated
    if answer=$(kafka_probe); then
      say "kafka: broker already running (pid $pid), answers on $KAFKA_HOST:$KAFKA_PORT"
    else
      say "kafka: broker pid $pid runs but does not answer yet; waiting for it"
      KAFKA_WAIT="$(now_ms) $pid"
    fi
    return 0
  fi
  answer=$(kafka_probe) || rc=$?
  if ((rc == 0)); then
    say "kafka: already listening on $KAFKA_HOST:$KAFKA_PORT, reused"
    return 0
  elif ((rc != 2)); then
    say "kafka: something listens on $KAFKA_HOST:$KAFKA_PORT but does not answer yet; waiting for it"
    KAFKA_WAIT="$(now_ms) "
    return 0
  fi
  ensure_kafka_jars
  ensure_java_and_maven
  write_kafka_config
  format_kafka_storage
  start_kafka
  KAFKA_WAIT="$KAFKA_STARTED_AT $(<"$KAFKA_PID_FILE")"
}
kafka_up_wait() {
  [[ -n $KAFKA_WAIT ]] || return 0
  # shellcheck disable=SC2086 # two words: start time, pid (maybe empty)
  wait_kafka_ready $KAFKA_WAIT
}

kafka_down() {
  local pid
  if pid=$(our_kafka_pid); then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 300); do
      pid_alive "$pid" || break
      sleep 0.1
    done
    if pid_alive "$pid"; then
      kill -KILL "$pid" 2>/dev/null || true
      say "kafka: broker pid $pid did not stop within 30 s, killed"
    else
      say "kafka: stopped broker pid $pid (data kept in $KAFKA_DATA)"
    fi
    rm -f "$KAFKA_PID_FILE"
  else
    rm -f "$KAFKA_PID_FILE"
    local rc=0
    kafka_probe >/dev/null || rc=$?
    if ((rc != 2)); then
      say "kafka: $KAFKA_HOST:$KAFKA_PORT is served by a broker this script did not start; left running"
    else
      say "kafka: not running"
    fi
  fi
}

kafka_status() {
  local pid rc=0 answer state
  answer=$(kafka_probe) || rc=$?
  case $rc in
  0) state="answers metadata (${answer%% *} broker, ${answer#* })" ;;
  2) state= ;;
  *) state="listens but does not answer metadata" ;;
  esac
  if pid=$(our_kafka_pid); then
    say "kafka: $KAFKA_HOST:$KAFKA_PORT ${state:-not listening yet}, broker pid $pid started by this script (data: $KAFKA_DATA)"
  elif [[ -n $state ]]; then
    say "kafka: $KAFKA_HOST:$KAFKA_PORT $state, a broker this script did not start"
  else
    say "kafka: nothing listens on $KAFKA_HOST:$KAFKA_PORT"
  fi
}


# ------------------------------------------------------ Kafka, 3-node cluster

node_dir() { printf '%s/node%d' "$CLUSTER_HOME" "$1"; }
node_broker_port() { printf '%d' $((CLUSTER_BROKER_PORT_BASE + $1)); }
node_controller_port() { printf '%d' $((CLUSTER_CONTROLLER_PORT_BASE + $1)); }
cluster_voters() { # 1@127.0.0.1:19192,2@127.0.0.1:19193,3@127.0.0.1:19194
  local n out=
  for ((n = 1; n <= CLUSTER_SIZE; n++)); do
    out+="${out:+,}$n@$KAFKA_HOST:$(node_controller_port "$n")"
  done
  printf '%s' "$out"
}
cluster_bootstrap() { # 127.0.0.1:19092,127.0.0.1:19093,127.0.0.1:19094
  local n out=
  for ((n = 1; n <= CLUSTER_SIZE; n++)); do
    out+="${out:+,}$KAFKA_HOST:$(node_broker_port "$n")"
  done
  printf '%s' "$out"
}

check_node_arg() { # check_node_arg <N>: a node number, 1..3
  if ! [[ ${1:-} =~ ^[0-9]+$ ]] || ((10#$1 < 1 || 10#$1 > CLUSTER_SIZE)); then
    die "node number must be 1 to $CLUSTER_SIZE (got '${1:-}')"
  fi
}

# pid of cluster node N when it runs and is the one this script started.
our_node_pid() {
  local pid_file props pid
  pid_file="$(node_dir "$1")/kafka.pid"
  props="$(node_dir "$1")/server.properties"
  [[ -s $pid_file ]] || return 1
  pid=$(<"$pid_file")
  [[ $pid =~ ^[0-9]+$ ]] && pid_alive "$pid" || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "kafka.Kafka $props " || return 1
  printf '%s' "$pid"
}

node_listens() { # node_listens <N>: its broker or controller port is taken
  local port
  for port in "$(node_broker_port "$1")" "$(node_controller_port "$1")"; do
    timeout 2 bash -c ": </dev/tcp/$KAFKA_HOST/$port" 2>/dev/null && return 0
  done
  return 1
}

write_node_config() { # write_node_config <N>
  local n=$1 dir
  dir=$(node_dir "$n")
  mkdir -p "$dir/data" "$dir/logs"
  if write_if_changed "$dir/server.properties" <<EOF; then
# Generated by deploy/services.sh: node $n of the local 3-node KRaft cluster
# (KAFKA_NODES=3). Why each failover setting: the header of deploy/services.sh.
process.roles=broker,controller
node.id=$n
# Static quorum: the three controllers, formatted without --standalone or
# --initial-controllers.
controller.quorum.voters=$(cluster_voters)
listeners=PLAINTEXT://$KAFKA_HOST:$(node_broker_port "$n"),CONTROLLER://$KAFKA_HOST:$(node_controller_port "$n")
advertised.listeners=PLAINTEXT://$KAFKA_HOST:$(node_broker_port "$n")
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$dir/data
num.partitions=6
# Every partition on all three nodes, writes acknowledged by two: one node may
# die without losing an acknowledged write or stopping writes.
default.replication.factor=3
min.insync.replicas=2
offsets.topic.replication.factor=3
transaction.state.log.replication.factor=3
transaction.state.log.min.isr=2
share.coordinator.state.topic.replication.factor=3
share.coordinator.state.topic.min.isr=2
# Topics are created on purpose (connectflow migrate), with these defaults.
auto.create.topics.enable=false
# A replica outside the ISR never becomes leader: no acknowledged write lost.
unclean.leader.election.enable=false
# Fast tests: no wait before the first rebalance, small internal topics.
group.initial.rebalance.delay.ms=0
offsets.topic.num.partitions=6
transaction.state.log.num.partitions=6
# Quick failover on one machine:
# the active controller fences a broker 6 s after its last heartbeat (default
# 9 s) and moves its partition leaderships to another in-sync replica;
broker.session.timeout.ms=6000
# heartbeats every second (default 2 s): six per session, so a broker delayed a
# few seconds by the shared CPU is not fenced by mistake;
broker.heartbeat.interval.ms=1000
# a dead active controller is replaced after 2 s without a fetch plus an
# election of 1-2 s. Kafka's defaults, set explicitly: lower values make the
# quorum flap when one of the JVMs sharing two cores stalls for a second;
controller.quorum.fetch.timeout.ms=2000
controller.quorum.election.timeout.ms=1000
# a follower alive but not fetching (stalled, not fenced) leaves the ISR after
# 10 s (default 30 s), so acks=all writes wait at most that long for it.
replica.lag.time.max.ms=10000
# Three JVMs share two cores: fewer request threads than the defaults (3 and 8).
num.network.threads=2
num.io.threads=4
EOF
    if our_node_pid "$n" >/dev/null; then
      note "kafka node $n: updated $dir/server.properties; the running node uses the old one until node-stop $n + node-start $n"
    fi
  fi
}

# The cluster id of all three nodes: .local/kafka-cluster/cluster.id, made up
# once (or taken back from a node formatted before, if the file went missing).
CLUSTER_ID=
ensure_cluster_id() {
  [[ -z $CLUSTER_ID ]] || return 0
  mkdir -p "$CLUSTER_HOME"
  if [[ -s $CLUSTER_ID_FILE ]]; then
    CLUSTER_ID=$(<"$CLUSTER_ID_FILE")
    return 0
  fi
  local n id=
  for ((n = 1; n <= CLUSTER_SIZE; n++)); do
    id=$(sed -n 's/^cluster\.id=//p' "$(node_dir "$n")/data/meta.properties" 2>/dev/null || true)
    [[ -z $id ]] || break
  done
  [[ -n $id ]] || id=$(kafka_cluster_id)
  printf '%s\n' "$id" >"$CLUSTER_ID_FILE"
  CLUSTER_ID=$id
}

format_node() { # format_node <N>: formats its data/ unless done before
  local n=$1 dir id
  dir=$(node_dir "$n")
  ensure_cluster_id
  if [[ -s $dir/data/meta.properties ]]; then
    id=$(sed -n 's/^cluster\.id=//p' "$dir/data/meta.properties")
    [[ $id == "$CLUSTER_ID" ]] ||
      die "kafka node $n: $dir/data belongs to cluster $id, not $CLUSTER_ID ($CLUSTER_ID_FILE); remove $CLUSTER_HOME (while the nodes are stopped) to start the cluster afresh"
    return 0
  fi
  kafka_tool kafka.tools.StorageTool format -t "$CLUSTER_ID" -c "$dir/server.properties" \
    >"$dir/logs/format.log" 2>&1 9>&- || {
    show_tail "$dir/logs/format.log"
    die "kafka node $n: formatting $dir/data failed"
  }
  note "kafka node $n: formatted $dir/data (cluster id $CLUSTER_ID)"
}

# Everything node N needs before it starts: jars, Java, configuration, storage.
prepare_node() {
  ensure_kafka_jars
  ensure_java_and_maven
  write_kafka_log4j_config
  write_node_config "$1"
  format_node "$1"
}

start_node() { # start_node <N>: prints nothing; the pid is in its pid file
  local n=$1 dir
  dir=$(node_dir "$n")
  printf '==== %s deploy/services.sh starts node %d\n' "$(date -Is)" "$n" >>"$dir/logs/kafka.out"
  spawn_kafka "$dir" "$dir/kafka.pid" "$dir/logs" "$dir/server.properties" -Xms128m -Xmx384m ||
    die "kafka node $n: did not start (no pid file; see $dir/logs/kafka.out)"
}

node_failure_report() {
  local dir
  dir=$(node_dir "$1")
  show_tail "$dir/logs/kafka.out" "$dir/logs/server.log"
  if [[ -s $dir/logs/server.log ]] && grep -qE '^\[[^]]*\] (ERROR|FATAL)' "$dir/logs/server.log"; then
    printf -- '---- last errors in %s ----\n' "$dir/logs/server.log" >&2
    grep -E '^\[[^]]*\] (ERROR|FATAL)' "$dir/logs/server.log" | tail -n 5 | cut -c1-400 >&2
  fi
}

# Every node answers a metadata request listing all three brokers (an unfenced
# broker is listed; a fenced or dead one is not).
cluster_ready() {
  local n answer
  for ((n = 1; n <= CLUSTER_SIZE; n++)); do
    answer=$(kafka_probe "$KAFKA_HOST" "$(node_broker_port "$n")") || return 1
    [[ ${answer%% *} == "$CLUSTER_SIZE" ]] || return 1
  done
}

CLUSTER_WAIT=
cluster_up_start() {
  local n pid running=() start=() t0
  for ((n = 1; n <= CLUSTER_SIZE; n++)); do
    if pid=$(our_node_pid "$n"); then
      running+=("$n:$pid")
    elif node_listens "$n"; then
      die "kafka node $n: something this script did not start listens on $KAFKA_HOST:$(node_broker_port "$n") or :$(node_controller_port "$n")"
    else
      start+=("$n")
    fi
  done
  if ((${#start[@]} == 0)); then
    for ((n = 1; n <= CLUSTER_SIZE; n++)); do write_node_config "$n"; done # only to say when outdated
    if cluster_ready; then
      say "kafka cluster: 3 nodes already running (pids ${running[*]}), each of $(cluster_bootstrap) lists 3 brokers; reused"
      return 0
    fi
    say "kafka cluster: 3 nodes running (pids ${running[*]}) but not all list 3 brokers yet; waiting"
    CLUSTER_WAIT="$(now_ms)"
    return 0
  fi
  ((${#running[@]} == 0)) || say "kafka cluster: nodes already running (node:pid ${running[*]}), reused"
  for n in "${start[@]}"; do prepare_node "$n" 2>&1; done
  t0=$(now_ms)
  for n in "${start[@]}"; do
    start_node "$n"
    say "kafka node $n: started pid $(<"$(node_dir "$n")/kafka.pid") (broker $KAFKA_HOST:$(node_broker_port "$n"), controller :$(node_controller_port "$n"), log: $(node_dir "$n")/logs/server.log)"
  done
  CLUSTER_WAIT="$t0"
}

cluster_up_wait() {
  [[ -n $CLUSTER_WAIT ]] || return 0
  local t0=$CLUSTER_WAIT deadline=$((SECONDS + CLUSTER_READY_TIMEOUT)) n
  while :; do
    if cluster_ready; then
      say "kafka cluster: ready after $(elapsed "$t0")s (each of $(cluster_bootstrap) answers metadata listing 3 brokers; cluster id $(<"$CLUSTER_ID_FILE"))"
      return 0
    fi
    for ((n = 1; n <= CLUSTER_SIZE; n++)); do
      if ! our_node_pid "$n" >/dev/null; then
        node_failure_report "$n"
        die "kafka node $n exited during startup"
      fi
    done
    if ((SECONDS >= deadline)); then
      for ((n = 1; n <= CLUSTER_SIZE; n++)); do
        kafka_probe "$KAFKA_HOST" "$(node_broker_port "$n")" | grep -q "^$CLUSTER_SIZE " || node_failure_report "$n"
      done
      die "kafka cluster: not every broker of $(cluster_bootstrap) lists 3 brokers after ${CLUSTER_READY_TIMEOUT}s"
    fi
    sleep 0.5
  done
}

# stop_pids <seconds> <pid>...: SIGTERM all at once (a node's controlled
# shutdown needs an active controller, which the last ones to go would lose if
# they stopped one by one), then wait; SIGKILL what is left after <seconds>.
# Prints the pids it had to kill.
stop_pids() {
  local limit=$1 pid left i
  shift
  kill -TERM "$@" 2>/dev/null || true
  for ((i = 0; i < limit * 10; i++)); do
    left=
    for pid in "$@"; do pid_alive "$pid" && left=1; done
    [[ -n $left ]] || return 0
    sleep 0.1
  done
  for pid in "$@"; do
    if pid_alive "$pid"; then
      kill -KILL "$pid" 2>/dev/null || true
      printf '%s ' "$pid"
    fi
  done
}

cluster_down() {
  local n pid pids=() stopped=() killed
  for ((n = 1; n <= CLUSTER_SIZE; n++)); do
    if pid=$(our_node_pid "$n"); then
      pids+=("$pid")
      stopped+=("node $n (pid $pid)")
    else
      [[ ! -e $(node_dir "$n")/kafka.pid ]] || rm -f "$(node_dir "$n")/kafka.pid"
      ! node_listens "$n" ||
        say "kafka node $n: $KAFKA_HOST:$(node_broker_port "$n") is served by a process this script did not start; left running"
    fi
  done
  if ((${#pids[@]} == 0)); then
    say "kafka cluster: not running"
    return 0
  fi
  killed=$(stop_pids "$CLUSTER_STOP_TIMEOUT" "${pids[@]}")
  for ((n = 1; n <= CLUSTER_SIZE; n++)); do rm -f "$(node_dir "$n")/kafka.pid"; done
  [[ -z $killed ]] || say "kafka cluster: pid(s) ${killed% } did not stop within ${CLUSTER_STOP_TIMEOUT}s, killed"
  say "kafka cluster: stopped ${stopped[*]} (data kept in $CLUSTER_HOME)"
}

cluster_status() {
  local n pid rc answer state
  if [[ ! -d $CLUSTER_HOME ]] && ! node_listens 1 && ! node_listens 2 && ! node_listens 3; then
    say "kafka cluster: not set up (KAFKA_NODES=3 bash deploy/services.sh up)"
    return 0
  fi
  for ((n = 1; n <= CLUSTER_SIZE; n++)); do
    rc=0
    answer=$(kafka_probe "$KAFKA_HOST" "$(node_broker_port "$n")") || rc=$?
    case $rc in
    0) state="answers metadata (${answer%% *} brokers)" ;;
    2) state= ;;
    *) state="listens but does not answer metadata" ;;
    esac
    if pid=$(our_node_pid "$n"); then
      say "kafka node $n: $KAFKA_HOST:$(node_broker_port "$n") ${state:-not listening yet}, controller :$(node_controller_port "$n"), pid $pid started by this script (data: $(node_dir "$n")/data)"
    elif [[ -n $state ]]; then
      say "kafka node $n: $KAFKA_HOST:$(node_broker_port "$n") $state, a process this script did not start"
    else
      say "kafka node $n: not running ($KAFKA_HOST:$(node_broker_port "$n"), data: $(node_dir "$n")/data)"
    fi
  done
}

# node-start N: starts node N again (after kill -9 or node-stop) and prints its
# pid, without waiting for it to answer; a stale pid file is replaced. When it
# already runs, prints that pid. Messages go to stderr.
node_start_cmd() {
  local n=$1 pid dir
  dir=$(node_dir "$n")
  if pid=$(our_node_pid "$n"); then
    note "kafka node $n: already running (pid $pid)"
    printf '%s\n' "$pid"
    return 0
  fi
  [[ -s $CLUSTER_ID_FILE || -s $dir/data/meta.properties ]] ||
    die "kafka node $n: the cluster was never set up; run: KAFKA_NODES=3 bash deploy/services.sh up"
  node_listens "$n" &&
    die "kafka node $n: something this script did not start listens on $KAFKA_HOST:$(node_broker_port "$n") or :$(node_controller_port "$n")"
  prepare_node "$n" >&2
  # A node killed a moment ago may linger as a zombie; its ports are free.
  start_node "$n"
  pid=$(<"$dir/kafka.pid")
  note "kafka node $n: started pid $pid (broker $KAFKA_HOST:$(node_broker_port "$n"); not waiting for it to rejoin)"
  printf '%s\n' "$pid"
}

node_pid_cmd() {
  local pid
  pid=$(our_node_pid "$1") || {
    note "kafka node $1: not running"
    exit 1
  }
  printf '%s\n' "$pid"
}

node_stop_cmd() {
  local n=$1 pid t0 killed
  if ! pid=$(our_node_pid "$n"); then
    rm -f "$(node_dir "$n")/kafka.pid"
    say "kafka node $n: not running"
    return 0
  fi
  t0=$(now_ms)
  killed=$(stop_pids "$CLUSTER_STOP_TIMEOUT" "$pid")
  rm -f "$(node_dir "$n")/kafka.pid"
  if [[ -n $killed ]]; then
    say "kafka node $n: pid $pid did not stop within ${CLUSTER_STOP_TIMEOUT}s after SIGTERM, killed"
  else
    say "kafka node $n: stopped pid $pid ($(elapsed "$t0")s; data kept in $(node_dir "$n")/data)"
  fi
}

# ---------------------------------------------------------------------- main

usage() {
  sed -n '2p;4,/^#$/p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

case ${1:-} in
node-start | node-stop | node-pid)
  [[ $# == 2 ]] || usage
  check_node_arg "$2"
  ;;
proxy-switch) [[ $# == 2 ]] || usage ;;
*) [[ $# == 1 ]] || usage ;;
esac
[[ $(id -u) == 0 ]] || die "run as root (it installs packages and runs PostgreSQL through runuser)"
mkdir -p "$LOCAL"
# node-pid only reads: it answers even while another run holds the lock.
if [[ $1 == node-pid ]]; then
  node_pid_cmd "$2"
  exit 0
fi
# One run at a time (e.g. two `make test` at once); descriptor 9 is closed for
# the servers started below so they do not keep the lock.
exec 9>"$LOCAL/services.lock"
flock -w 600 9 || die "another deploy/services.sh holds $LOCAL/services.lock"

case $1 in
up)
  case $KAFKA_NODES in
  1)
    ensure_pg_installed
    ensure_browser_installed
    ensure_promtool_installed
    kafka_up_start
    postgres_up
    kafka_up_wait
    ;;
  3)
    ensure_pg_installed
    cluster_up_start
    postgres_up
    cluster_up_wait
    ;;
  *) die "KAFKA_NODES must be 1 (the single broker on $KAFKA_HOST:$KAFKA_PORT) or 3 (the cluster on $(cluster_bootstrap)), not '$KAFKA_NODES'" ;;
  esac
  [[ $PG_REPLICA != 1 ]] || replica_up
  ;;
postgres-up)
  ensure_pg_installed
  postgres_up
  [[ $PG_REPLICA != 1 ]] || replica_up
  ;;
down)
  kafka_down
  cluster_down
  replica_down
  postgres_down
  ;;
postgres-down)
  replica_down
  postgres_down
  ;;
primary-kill) primary_kill_cmd ;;
replica-promote) replica_promote_cmd ;;
replica-reset) replica_reset_cmd ;;
proxy-switch) proxy_switch_cmd "$2" ;;
wal-positions) wal_positions_cmd ;;
replica-detach) replica_detach_cmd ;;
replica-down) replica_down ;;
image-tools) ensure_image_tools_installed ;;
status)
  postgres_status
  replica_status
  kafka_status
  cluster_status
  ;;
node-start) node_start_cmd "$2" ;;
node-stop) node_stop_cmd "$2" ;;
postgres-stop) postgres_stop_cmd ;;
postgres-start) postgres_start_cmd ;;
*) usage ;;
esac

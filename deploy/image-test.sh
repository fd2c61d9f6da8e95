#!/usr/bin/env bash
# The shipped image, built from deploy/Dockerfile and run as the Kubernetes
# manifests run it, against the local Kafka and Postgres (issue 27).
#
#   make image-test                  (or: make services && bash deploy/image-test.sh)
#
# What it does, failing loudly at the first check that does not hold:
#  1. installs Debian's podman, buildah, runc and debootstrap when missing
#     (deploy/services.sh image-tools);
#  2. makes the runtime base image, localhost/debian:bookworm-slim, from a
#     Debian bookworm root filesystem made with `debootstrap --variant=minbase`
#     and trimmed like the official bookworm-slim (no docs, man pages or
#     locales); cached as a tarball in .local/image/, so it is made once;
#  3. builds connectflow on the host (`cargo build --release --locked`), then
#     the image with `podman build` from deploy/Dockerfile, whose runtime stage
#     is the one that ships: it runs its own `apt-get install libssl3
#     ca-certificates` against deb.debian.org, adds the user 10001 and copies
#     the binary in (`--build-context build=<dir>` stands in for the build
#     stage: see "Why the binary is built on the host" below);
#  4. runs it as the manifests do: --user 10001:10001, a read-only root
#     filesystem with a 16 MiB tmpfs on /tmp (the emptyDir), every capability
#     dropped, no-new-privileges, podman's default seccomp profile, the
#     containers' memory and CPU limits, and the environment of the ConfigMaps
#     and the containers' `env` (read from deploy/kubernetes/base/), with
#     local values only where the cluster's cannot work here (below). The
#     shells of the image (/usr/bin/dash, /usr/bin/bash) are masked by an
#     empty file in every container: nothing may need one;
#  5. checks: `migrate` as the Job runs it exits 0, twice (idempotent);
#     `serve` and `consume` answer 200 on /livez and /readyz (the time from
#     `podman run` to ready is printed); each process runs as uid/gid 10001
#     with no capability, no_new_privs and seccomp on, on a read-only root
#     (read from /proc of the host, not from the container's own word); a
#     webhook signed with the partner secret (hex HMAC-SHA256 of the body,
#     X-Finicity-Signature) is accepted and its customer's lifecycle appears
#     on `GET /v1/customers/{id}/lifecycle` with a bearer token; the image's
#     own `simulate --verify --verify-changes` then sends complete flows and
#     checks each customer's lifecycle through the API and its changes on the
#     topic; then `podman stop` (SIGTERM) stops the receiver while signed
#     webhooks keep arriving: every one answered 200 must reach Postgres
#     through the consumer (drained and flushed), the others get no answer;
#     then the consumer. Each exits 0 well within its
#     terminationGracePeriodSeconds (less the receiver's preStop sleep), and
#     every log line is JSON, none at ERROR, with the shutdown and the drain
#     logged.
# It prints the image's size and the start-to-ready times. Exit status 0 when
# every check passed. The containers, the scratch database and the temporary
# files are removed at the end, also on failure (the image and the cached base
# are kept for the next run; the run's logs are kept in target/image-test/).
# The Kafka topics it created (unique names, `cf-image-<id>.*`) are left on
# the local broker, as the integration tests leave theirs.
#
# Local values instead of the cluster's (everything else is the manifests'):
#   KAFKA_BROKERS                 127.0.0.1:9092 (host network)
#   CONNECTFLOW_*_TOPIC (all four), _CONSUMER_GROUP   unique per run
#   CONNECTFLOW_TOPIC_REPLICATION_FACTOR / _MIN_INSYNC_REPLICAS   1 / 1 (one broker)
#   CONNECTFLOW_LISTEN            127.0.0.1:IMAGE_TEST_SERVE_PORT / _CONSUME_PORT
#                                 (host network: 8080 is left to `make run`)
#   DATABASE_URL, FINICITY_PARTNER_SECRETS, CONNECTFLOW_API_TOKENS
#                                 the Secret's keys: a scratch database, test values
#
# Why the binary is built on the host by default: the build stage needs a
# Rust toolchain image (rust:<version>-bookworm, from a registry: none is
# reachable here) and crates.io from inside a container, which here is only
# reachable through a TLS-intercepting proxy whose CA the container must be
# taught. IMAGE_TEST_BUILD=container does all that: it makes a stand-in build
# base (debootstrap, gcc, g++, make, the host's Rust toolchain and its extra
# CAs) and compiles in the Dockerfile's build stage as written. It works and
# costs about the same here (cold 6-8 minutes, a change to src/ about 2), but
# that base is a local stand-in, not the public image, and podman's storage
# grows by about 2.5 GB (and keeps the layers of each change: prune it now and
# then). The default builds on the host instead: the same Debian release
# (bookworm, checked), glibc and libssl3, the same command as the build stage
# (`cargo build --release --locked --bin connectflow`, SQLX_OFFLINE=true) and
# the same toolchain; `--build-context build=<dir>` puts that binary where the
# build stage's would be. The runtime stage, what ships, is built unchanged
# either way.
#
# Environment (defaults in brackets):
#   IMAGE_TEST_SERVE_PORT [18080], IMAGE_TEST_CONSUME_PORT [18081]
#   IMAGE_TEST_TAG        [localhost/connectflow:image-test] the image built
#   IMAGE_TEST_BUILD      [host] or `container`: where the binary is compiled (above)
#   IMAGE_TEST_REFRESH_BASE=1   make the base image again (new debootstrap)
#   DEBIAN_MIRROR         [http://deb.debian.org/debian] for debootstrap
#   CARGO_TARGET_DIR      [target] where cargo builds
#   PG_SUPER_URL          [postgres://connectflow:connectflow@127.0.0.1:5432/connectflow]
#                         a role with CREATEDB, to make and drop the scratch database
#   KAFKA_BROKERS         [127.0.0.1:9092]
#
# podman here (a Firecracker VM, root without CAP_SYS_RESOURCE, cgroups v1 in
# hybrid mode): crun refuses hybrid cgroups, so runc is the runtime; podman's
# default ulimits (nofile 1048576) cannot be raised to, so every container
# gets nofile/nproc no higher than this shell's. Every container uses the
# host's network: Kafka and Postgres listen on the host's 127.0.0.1, and
# Kafka advertises that address (the build's RUN steps too, for simplicity).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$ROOT"
export SQLX_OFFLINE=true

SERVE_PORT=${IMAGE_TEST_SERVE_PORT:-18080}
CONSUME_PORT=${IMAGE_TEST_CONSUME_PORT:-18081}
TAG=${IMAGE_TEST_TAG:-localhost/connectflow:image-test}
BASE_TAG=localhost/debian:bookworm-slim
BUILD_TAG=localhost/rust:$(rustc --version | awk '{print $2}')-bookworm
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
TARGET_DIR=${CARGO_TARGET_DIR:-target}
PG_SUPER_URL=${PG_SUPER_URL:-postgres://connectflow:connectflow@127.0.0.1:5432/connectflow}
BROKERS=${KAFKA_BROKERS:-127.0.0.1:9092}
K8S=deploy/kubernetes/base
CACHE=.local/image
BASE_TAR=$CACHE/debian-bookworm-slim.tar
BUILD_WHERE=${IMAGE_TEST_BUILD:-host}
BUILD_TAR=$CACHE/rust-bookworm.tar
OUT=target/image-test
# Test credentials, for this run's scratch database only.
PARTNER_SECRET=image-test-partner-secret
API_TOKEN=image-test-api-token

RUN_ID=$(head -c4 /dev/urandom | od -An -tx1 | tr -d ' \n')
DB_NAME=connectflow_image_test_$RUN_ID
DB_URL=postgres://connectflow:connectflow@127.0.0.1:5432/$DB_NAME
CONTAINER_PREFIX=cf-image-test-$RUN_ID
T0=$(date +%s)

say() { printf 'image-test: %s\n' "$*"; }
die() {
  printf 'image-test: FAILED: %s\n' "$*" >&2
  exit 1
}
now_ms() { date +%s%3N; }
seconds_since() { # seconds_since <ms>: with one decimal
  local ms=$(($(now_ms) - $1))
  printf '%d.%d' $((ms / 1000)) $((ms % 1000 / 100))
}

[[ $(id -u) == 0 ]] || die "run as root (podman's storage is root's; the build installs packages)"

# ------------------------------------------------------------- clean-up

WORK=
DB_CREATED=
CONTAINERS=()
cleanup() {
  local rc=$? c
  set +e
  for c in "${CONTAINERS[@]}"; do
    podman rm -f -t 0 "$c" >/dev/null 2>&1
  done
  if [[ -n $DB_CREATED ]]; then
    psql -X -q "$PG_SUPER_URL" -c "drop database if exists $DB_NAME with (force)" >/dev/null 2>&1 ||
      printf 'image-test: could not drop the scratch database %s\n' "$DB_NAME" >&2
  fi
  [[ -z $WORK ]] || rm -rf "$WORK"
  if ((rc != 0)); then
    printf 'image-test: failed after %ss; logs in %s/\n' "$(($(date +%s) - T0))" "$OUT" >&2
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir -p "$CACHE" "$OUT"
rm -f "$OUT"/*.log "$OUT"/*.json
WORK=$(mktemp -d "${TMPDIR:-/tmp}/connectflow-image-test.XXXXXX")

# --------------------------------------------------------- prerequisites

bash deploy/services.sh image-tools
python3 -c 'import yaml' 2>/dev/null ||
  python3 -m pip install --quiet --disable-pip-version-check pyyaml >&2
pg_isready -q -h 127.0.0.1 -p 5432 || die "PostgreSQL does not answer on 127.0.0.1:5432 (make services)"
timeout 2 bash -c ": </dev/tcp/${BROKERS%%:*}/${BROKERS##*:}" 2>/dev/null ||
  die "Kafka does not answer on $BROKERS (make services)"
port_taken() { timeout 1 bash -c ": </dev/tcp/127.0.0.1/$1" 2>/dev/null; }
[[ $SERVE_PORT != "$CONSUME_PORT" ]] || die "IMAGE_TEST_SERVE_PORT and IMAGE_TEST_CONSUME_PORT must differ"
for port in "$SERVE_PORT" "$CONSUME_PORT"; do
  ! port_taken "$port" || die "127.0.0.1:$port is taken: set IMAGE_TEST_SERVE_PORT / IMAGE_TEST_CONSUME_PORT"
done
# shellcheck source=/dev/null
codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
[[ $codename == bookworm ]] ||
  die "the host is '$codename', not Debian bookworm: a binary built here would not match the runtime image's glibc and libssl3"

# The limits every container (and the build's RUN steps) gets: podman's
# defaults are above what this root may set (no CAP_SYS_RESOURCE here).
nofile=$(ulimit -Hn)
[[ $nofile == unlimited ]] && nofile=1048576
((nofile <= 1048576)) || nofile=1048576
PODMAN_COMMON=(--runtime runc --ulimit "nofile=$nofile:$nofile" --ulimit nproc=16384:16384)

# ----------------------------------------------------------- base image

# The runtime base: debootstrap's minbase (what the official image is made
# from, with debuerreotype), trimmed as the official -slim variant is.
make_base_tarball() {
  local rootfs=$WORK/rootfs t
  t=$(now_ms)
  say "base: debootstrap --variant=minbase bookworm from $MIRROR (about a minute)"
  debootstrap --variant=minbase bookworm "$rootfs" "$MIRROR" >"$OUT/debootstrap.log" 2>&1 || {
    tail -n 20 "$OUT/debootstrap.log" >&2
    die "debootstrap failed (log: $OUT/debootstrap.log)"
  }
  # The -slim trimming (debuerreotype-slimify): these paths are neither kept
  # now nor installed later.
  cat >"$rootfs/etc/dpkg/dpkg.cfg.d/docker" <<'EOF'
# Like the official debian:*-slim images: no documentation, man pages or locales.
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/info/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/lintian/overrides/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
EOF
  find "$rootfs/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
  find "$rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete
  rm -rf "$rootfs"/usr/share/{info,linda,locale,man,groff}/* "$rootfs"/usr/share/lintian/overrides/*
  # apt as in the official image: the archives it downloads are deleted after
  # each install, and the same three suites (security updates included).
  cat >"$rootfs/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
  printf 'Acquire::Languages "none";\n' >"$rootfs/etc/apt/apt.conf.d/docker-no-languages"
  rm -f "$rootfs/etc/apt/sources.list"
  cat >"$rootfs/etc/apt/sources.list.d/debian.sources" <<'EOF'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/lib/apt/lists/* \
    "$rootfs"/var/log/* "$rootfs"/tmp/* "$rootfs"/root/.bash_history
  printf '' >"$rootfs/etc/machine-id"
  tar -C "$rootfs" --numeric-owner -cf "$BASE_TAR.tmp" .
  mv -f "$BASE_TAR.tmp" "$BASE_TAR"
  rm -rf "$rootfs"
  say "base: $BASE_TAR made in $(seconds_since "$t")s"
}

# Whether image TAG is still the one imported from TAR (its id noted in
# STAMP at the import).
still_imported() {
  local tag=$1 tar=$2 stamp=$3
  [[ -s $tar && -s $stamp ]] && podman image exists "$tag" &&
    [[ $(podman image inspect --format '{{.Id}}' "$tag") == "$(<"$stamp")" ]]
}

ensure_base_image() {
  if [[ ${IMAGE_TEST_REFRESH_BASE:-0} == 1 ]]; then
    rm -f "$BASE_TAR"
    podman rmi -f "$BASE_TAG" >/dev/null 2>&1 || true
  fi
  local stamp="$CACHE/base-image.id"
  if still_imported "$BASE_TAG" "$BASE_TAR" "$stamp"; then
    say "base: $BASE_TAG already imported from $BASE_TAR"
    return 0
  fi
  [[ -s $BASE_TAR ]] || make_base_tarball
  podman import -q \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["bash"]' \
    "$BASE_TAR" "$BASE_TAG" >"$stamp.tmp"
  podman image inspect --format '{{.Id}}' "$BASE_TAG" >"$stamp"
  rm -f "$stamp.tmp"
  say "base: imported $BASE_TAR as $BASE_TAG"
}

# ----------------------------------------------------------------- build

# The build base for IMAGE_TEST_BUILD=container, a stand-in for
# rust:<version>-bookworm: debootstrap's minbase with the C and C++ compilers
# the build stage needs (librdkafka's configure wants both; the official image
# has them), make, libc and zlib headers (the stage itself installs libssl-dev
# and pkg-config), the host's Rust toolchain (the same version, without its
# documentation) in /usr/local/rust, and the host's extra CA certificates
# (/usr/local/share/ca-certificates), so that cargo inside the container
# reaches crates.io as the host does.
make_build_base() {
  local rootfs=$WORK/build-rootfs t sysroot
  t=$(now_ms)
  sysroot=$(rustc --print sysroot)
  say "build base: debootstrap --variant=minbase bookworm with gcc, g++, make, libc6-dev, zlib1g-dev (about two minutes)"
  debootstrap --variant=minbase --include=ca-certificates,gcc,g++,libc6-dev,make,zlib1g-dev \
    bookworm "$rootfs" "$MIRROR" >"$OUT/debootstrap-build.log" 2>&1 || {
    tail -n 20 "$OUT/debootstrap-build.log" >&2
    die "debootstrap of the build base failed (log: $OUT/debootstrap-build.log)"
  }
  printf 'deb http://deb.debian.org/debian bookworm main\ndeb http://deb.debian.org/debian bookworm-updates main\ndeb http://deb.debian.org/debian-security bookworm-security main\n' \
    >"$rootfs/etc/apt/sources.list"
  mkdir -p "$rootfs/usr/local/rust" "$rootfs/usr/local/cargo"
  tar -C "$sysroot" --exclude=./share/doc -cf - . | tar -C "$rootfs/usr/local/rust" -xf -
  if compgen -G '/usr/local/share/ca-certificates/*.crt' >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$rootfs/usr/local/share/ca-certificates/"
    chroot "$rootfs" update-ca-certificates >/dev/null 2>&1 || die "update-ca-certificates in the build base failed"
  fi
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" --numeric-owner -cf "$BUILD_TAR.tmp" .
  mv -f "$BUILD_TAR.tmp" "$BUILD_TAR"
  rm -rf "$rootfs"
  say "build base: $BUILD_TAR made in $(seconds_since "$t")s"
}

ensure_build_base() {
  local stamp="$CACHE/build-image.id"
  [[ ${IMAGE_TEST_REFRESH_BASE:-0} != 1 ]] || rm -f "$BUILD_TAR"
  if still_imported "$BUILD_TAG" "$BUILD_TAR" "$stamp"; then
    say "build base: $BUILD_TAG already imported from $BUILD_TAR"
    return 0
  fi
  [[ -s $BUILD_TAR ]] || make_build_base
  podman import -q \
    --change 'ENV CARGO_HOME=/usr/local/cargo' \
    --change 'ENV PATH=/usr/local/cargo/bin:/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    "$BUILD_TAR" "$BUILD_TAG" >/dev/null
  podman image inspect --format '{{.Id}}' "$BUILD_TAG" >"$stamp"
  say "build base: imported $BUILD_TAR as $BUILD_TAG"
}

build_image() {
  local t bin="$TARGET_DIR/release/connectflow" rust from=() old
  rust=$(rustc --version | awk '{print $2}')
  case $BUILD_WHERE in
  host)
    t=$(now_ms)
    say "build: cargo build --release --locked --bin connectflow (on the host, $(rustc --version))"
    cargo build --release --locked --bin connectflow >"$OUT/cargo.log" 2>&1 || {
      tail -n 30 "$OUT/cargo.log" >&2
      die "cargo build --release failed (log: $OUT/cargo.log)"
    }
    say "build: binary ready in $(seconds_since "$t")s"
    # The build context named `build` replaces the Dockerfile's build stage.
    mkdir -p "$WORK/binary/out"
    cp "$bin" "$WORK/binary/out/connectflow"
    from=(--build-context build="$WORK/binary")
    ;;
  container)
    ensure_build_base
    from=(--build-arg BUILD_IMAGE="$BUILD_TAG")
    ;;
  *) die "IMAGE_TEST_BUILD must be host or container, not '$BUILD_WHERE'" ;;
  esac
  old=$(podman image inspect --format '{{.Id}}' "$TAG" 2>/dev/null || true)
  t=$(now_ms)
  say "build: podman build -f deploy/Dockerfile (runtime base $BASE_TAG, binary from the $BUILD_WHERE$([[ $BUILD_WHERE == host ]] || echo "'s build stage on $BUILD_TAG"))"
  podman build "${PODMAN_COMMON[@]}" --network host --pull=never --layers \
    -f deploy/Dockerfile -t "$TAG" \
    --build-arg RUST_VERSION="$rust" \
    --build-arg RUNTIME_IMAGE="$BASE_TAG" \
    "${from[@]}" \
    . >"$OUT/podman-build.log" 2>&1 || {
    tail -n 30 "$OUT/podman-build.log" >&2
    die "podman build failed (log: $OUT/podman-build.log)"
  }
  say "build: $TAG built in $(seconds_since "$t")s"
  # The image this one replaces, with the layers only it used: storage stays
  # bounded on a machine that runs this often (the base layers are shared).
  if [[ -n $old && $old != "$(podman image inspect --format '{{.Id}}' "$TAG")" ]]; then
    podman rmi "$old" >/dev/null 2>&1 || true
  fi
}

# The image's own metadata: what runAsNonRoot and the manifests rely on.
check_image() {
  local user entrypoint cmd size
  user=$(podman image inspect --format '{{.Config.User}}' "$TAG")
  entrypoint=$(podman image inspect --format '{{json .Config.Entrypoint}}' "$TAG")
  cmd=$(podman image inspect --format '{{json .Config.Cmd}}' "$TAG")
  size=$(podman image inspect --format '{{.Size}}' "$TAG")
  [[ $user == 10001:10001 ]] || die "the image's USER is '$user', not 10001:10001"
  [[ $entrypoint == '["/usr/local/bin/connectflow"]' ]] || die "the image's ENTRYPOINT is $entrypoint"
  [[ $cmd == null || $cmd == '[]' ]] || die "the image has a CMD ($cmd): every deployment must name its subcommand"
  IMAGE_SIZE=$size
  say "ok: image $TAG: USER 10001:10001, ENTRYPOINT the binary in exec form, no CMD; size $size bytes ($((size / 1024 / 1024)) MiB)"
  podman run --rm "${PODMAN_COMMON[@]}" --network none --user 10001:10001 "$TAG" --version >"$OUT/version.log" 2>&1 ||
    die "\`connectflow --version\` in the image failed: $(cat "$OUT/version.log")"
  say "ok: the image runs: $(cat "$OUT/version.log")"
}

# --------------------------------------------------------- environments

# env_file <component> <file>: the environment the manifests give that
# container (ConfigMaps from envFrom, literal `env` values), then the local
# values above; secrets (secretKeyRef) are given test values here. Prints,
# on stderr, what it replaced.
env_file() {
  python3 - "$K8S" "$1" "$2" "${LOCAL_ENV[@]}" <<'PY'
import sys, yaml, pathlib
base, component, out, *overrides = sys.argv[1:]
docs = []
for path in sorted(pathlib.Path(base).glob("*.yaml")):
    docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
maps = {d["metadata"]["name"]: d.get("data") or {} for d in docs if d.get("kind") == "ConfigMap"}
name = lambda d: (d.get("metadata") or {}).get("name")
workload = {"migrate": ("Job", "connectflow-migrate"), "serve": ("Deployment", "connectflow-receiver"),
            "consume": ("Deployment", "connectflow-consumer")}[component]
spec = next(d for d in docs if (d.get("kind"), name(d)) == workload)
container = spec["spec"]["template"]["spec"]["containers"][0]
env, secrets = {}, []
for source in container.get("envFrom") or []:
    env.update({k: str(v) for k, v in maps[source["configMapRef"]["name"]].items()})
for item in container.get("env") or []:
    if "value" in item:
        env[item["name"]] = str(item["value"])
    elif "secretKeyRef" in (item.get("valueFrom") or {}):
        secrets.append(item["name"])
local = dict(o.split("=", 1) for o in overrides)
replaced, replaced_names = [], set()
for name, value in local.items():
    if name in ("FINICITY_PARTNER_SECRETS", "CONNECTFLOW_API_TOKENS", "DATABASE_URL") and name not in secrets:
        continue  # a secret this container is not given
    if name == "CONNECTFLOW_CONSUMER_GROUP" and component != "consume":
        continue  # read by `consume` only
    if name in env and env[name] != value:
        replaced.append(f"{name}={env[name]} -> {value}")
        replaced_names.add(name)
    env[name] = value
with open(out, "w") as f:
    for name, value in sorted(env.items()):
        f.write(f"{name}={value}\n")
# The Secret's optional keys absent here (CONNECTFLOW_KAFKA_PROPERTIES: plaintext Kafka).
added = sorted(n for n in local if n not in replaced_names and n in env)
print(f"image-test: env {component}: {len(env)} variables; local values: " + ("; ".join(replaced) or "none")
      + "; added: " + ", ".join(added), file=sys.stderr)
PY
}

# The manifests' figures for a container: grace period, preStop sleep,
# memory limit (bytes) and CPU limit.
manifest_figures() { # manifest_figures <component>: "grace prestop memory cpus"
  python3 - "$K8S" "$1" <<'PY'
import sys, yaml, pathlib
base, component = sys.argv[1:]
workload = {"migrate": ("Job", "connectflow-migrate"), "serve": ("Deployment", "connectflow-receiver"),
            "consume": ("Deployment", "connectflow-consumer")}[component]
for path in sorted(pathlib.Path(base).glob("*.yaml")):
    for d in yaml.safe_load_all(path.read_text()):
        if d and (d.get("kind"), (d.get("metadata") or {}).get("name")) == workload:
            pod = d["spec"]["template"]["spec"]
            c = pod["containers"][0]
            grace = pod.get("terminationGracePeriodSeconds", 30)
            prestop = ((c.get("lifecycle") or {}).get("preStop") or {}).get("sleep", {}).get("seconds", 0)
            limits = (c.get("resources") or {}).get("limits") or {}
            mem = str(limits.get("memory", "0"))
            units = {"Ki": 1024, "Mi": 1024**2, "Gi": 1024**3}
            mem_bytes = int(mem[:-2]) * units[mem[-2:]] if mem[-2:] in units else int(mem)
            cpu = str(limits.get("cpu", "0"))
            cpus = int(cpu[:-1]) / 1000 if cpu.endswith("m") else float(cpu)
            print(grace, prestop, mem_bytes, cpus)
PY
}

# ------------------------------------------------------------------ runs

# run_args <component>: podman options for the manifests' securityContext,
# volumes and limits.
run_args() {
  local grace prestop mem cpus
  read -r grace prestop mem cpus < <(manifest_figures "$1")
  RUN_ARGS=("${PODMAN_COMMON[@]}" --network host
    --user 10001:10001 --read-only --read-only-tmpfs=false --tmpfs "/tmp:rw,size=16m,mode=1777"
    --cap-drop=ALL --security-opt no-new-privileges
    --memory "$mem" --cpus "$cpus"
    --mount "type=bind,source=$WORK/no-shell,target=/usr/bin/dash,readonly"
    --mount "type=bind,source=$WORK/no-shell,target=/usr/bin/bash,readonly"
    --env-file "$WORK/$1.env")
  GRACE=$grace
  PRESTOP=$prestop
}

# Asserts, from the host's /proc, how the container's process really runs.
check_process() { # check_process <container>
  local pid status mounts uid gid
  pid=$(podman inspect --format '{{.State.Pid}}' "$1")
  [[ $pid =~ ^[0-9]+$ && $pid != 0 ]] || die "$1: no process"
  status=$(cat "/proc/$pid/status")
  uid=$(awk '/^Uid:/ {print $2, $3, $4, $5}' <<<"$status")
  gid=$(awk '/^Gid:/ {print $2, $3, $4, $5}' <<<"$status")
  [[ $uid == "10001 10001 10001 10001" ]] || die "$1: the process's uids are $uid, not 10001"
  [[ $gid == "10001 10001 10001 10001" ]] || die "$1: the process's gids are $gid, not 10001"
  grep -qE '^CapEff:\s+0+$' <<<"$status" || die "$1: the process has capabilities: $(grep CapEff <<<"$status")"
  grep -qE '^CapBnd:\s+0+$' <<<"$status" || die "$1: capabilities left in the bounding set: $(grep CapBnd <<<"$status")"
  grep -qE '^NoNewPrivs:\s+1$' <<<"$status" || die "$1: no_new_privs is not set"
  grep -qE '^Seccomp:\s+2$' <<<"$status" || die "$1: no seccomp filter"
  mounts=$(cat "/proc/$pid/mountinfo")
  awk '$5 == "/" {print $6}' <<<"$mounts" | grep -qE '(^|,)ro(,|$)' || die "$1: the root filesystem is not read-only"
  [[ $(podman inspect --format '{{.HostConfig.ReadonlyRootfs}}' "$1") == true ]] || die "$1: podman says the root is writable"
  say "ok: $1: pid $pid runs as uid/gid 10001, no capabilities, no_new_privs, seccomp, read-only root"
}

# JSON on every line, no ERROR, and the messages of a clean stop: each
# <message> must be logged, each !<message> must not.
check_logs() { # check_logs <container> <log file> [!]<message>...
  local name=$1 log=$2
  shift 2
  python3 - "$log" "$@" <<'PY' || die "$name: its log is not what a clean stop writes (see $log)"
import json, sys
path, *needed = sys.argv[1:]
lines = [l for l in open(path, encoding="utf-8") if l.strip()]
bad = []
messages = []
for l in lines:
    try:
        record = json.loads(l)
    except ValueError:
        bad.append(l.rstrip())
        continue
    fields = record.get("fields") or {}
    messages.append(fields.get("message") or record.get("message") or "")
    if record.get("level") in ("ERROR", "error"):
        print(f"  error logged: {l.rstrip()[:300]}", file=sys.stderr)
        bad.append(l.rstrip())
if bad:
    print(f"  {len(bad)} of {len(lines)} lines are not JSON or are errors, e.g.: {bad[0][:300]}", file=sys.stderr)
    sys.exit(1)
for m in needed:
    if m.startswith("!"):
        if any(m[1:] in x for x in messages):
            print(f"  a log line says '{m[1:]}'", file=sys.stderr)
            sys.exit(1)
    elif not any(m in x for x in messages):
        print(f"  no log line says '{m}'", file=sys.stderr)
        sys.exit(1)
said = [m for m in needed if not m.startswith("!")]
print(f"  {len(lines)} log lines, all JSON, none at ERROR" + ("; logged: " + "; ".join(said) if said else ""), file=sys.stderr)
PY
}

run_migrate() { # run_migrate <attempt>
  local t name=$CONTAINER_PREFIX-migrate-$1 rc=0
  run_args migrate
  t=$(now_ms)
  CONTAINERS+=("$name")
  podman run --name "$name" "${RUN_ARGS[@]}" "$TAG" migrate >"$OUT/migrate-$1.log" 2>&1 || rc=$?
  podman rm -f "$name" >/dev/null 2>&1 || true
  ((rc == 0)) || {
    tail -n 20 "$OUT/migrate-$1.log" >&2
    die "migrate (run $1) exited $rc"
  }
  check_logs "$name" "$OUT/migrate-$1.log" "migrations applied and topics present"
  say "ok: migrate run $1 exited 0 in $(seconds_since "$t")s"
}

wait_ready() { # wait_ready <container> <port> <start ms>: sets READY_S
  local name=$1 port=$2 t=$3 deadline=$((SECONDS + 60))
  while :; do
    if curl -fsS -o /dev/null --max-time 3 "http://127.0.0.1:$port/readyz" 2>/dev/null; then
      READY_S=$(seconds_since "$t")
      break
    fi
    [[ $(podman inspect --format '{{.State.Running}}' "$name") == true ]] || {
      podman logs "$name" 2>&1 | tail -n 20 >&2
      die "$name exited before it was ready"
    }
    ((SECONDS < deadline)) || {
      podman logs "$name" 2>&1 | tail -n 20 >&2
      die "$name not ready on 127.0.0.1:$port/readyz after 60 s"
    }
    sleep 0.2
  done
  curl -fsS -o /dev/null --max-time 3 "http://127.0.0.1:$port/livez" || die "$name: /livez did not answer 200"
}

start_service() { # start_service <component> <port>: sets READY_S
  local component=$1 port=$2 name=$CONTAINER_PREFIX-$1 t started
  run_args "$component"
  # Whatever answers on the port must be this container.
  ! port_taken "$port" || die "127.0.0.1:$port is taken before $component starts"
  t=$(now_ms)
  CONTAINERS+=("$name")
  podman run -d --name "$name" --stop-timeout "$GRACE" "${RUN_ARGS[@]}" "$TAG" "$component" >/dev/null ||
    die "podman run $component failed"
  started=$(seconds_since "$t")
  wait_ready "$name" "$port" "$t"
  say "ok: $component ready (/livez and /readyz 200) ${READY_S}s after podman run was called (the container was running after ${started}s)"
  check_process "$name"
}

# stop_service <component> <message>...: SIGTERM through podman stop, with
# the grace period left after the preStop hook.
stop_service() {
  local component=$1 name=$CONTAINER_PREFIX-$1 t budget code took
  shift
  run_args "$component"
  budget=$((GRACE - PRESTOP))
  t=$(now_ms)
  podman stop -t "$budget" "$name" >/dev/null || die "podman stop $name failed"
  took=$(seconds_since "$t")
  code=$(podman inspect --format '{{.State.ExitCode}}' "$name")
  podman logs "$name" >"$OUT/$component.log" 2>&1
  [[ $code == 0 ]] || {
    tail -n 20 "$OUT/$component.log" >&2
    die "$component exited $code after SIGTERM (0 expected; 137 means podman had to kill it)"
  }
  ((${took%.*} < budget)) || die "$component took ${took}s to stop, the grace period left is ${budget}s"
  check_logs "$name" "$OUT/$component.log" "$@"
  say "ok: $component stopped on SIGTERM in ${took}s with exit status 0 (grace ${GRACE}s, less preStop ${PRESTOP}s)"
}

# signed_body <customer> <event id>: an `added` webhook (docs/event-schema.md's
# example) and, on the line after it, its X-Finicity-Signature.
signed_body() {
  local body
  body=$(printf '{"customerId":"%s","consumerId":"c-%s","eventType":"added","eventId":"%s","payload":{"institutionId":"101732","oauth":true,"accounts":[{"id":"1045121390","number":"4111111111111111","realAccountNumberLast4":"1111","name":"Checking","balance":501.24,"type":"checking","status":"active","institutionId":"101732","institutionLoginId":1022599285,"aggregationStatusCode":0}]},"webhookData":{"ref":"image-test"}}' \
    "$1" "$RUN_ID" "$2")
  printf '%s\n' "$body"
  printf '%s' "$body" | openssl dgst -sha256 -hmac "$PARTNER_SECRET" -hex | awk '{print $NF}'
}

# post_webhook <body> <signature> <response file>: prints the HTTP status (000: no answer).
post_webhook() {
  curl -sS -o "$3" -w '%{http_code}' --max-time 10 \
    -H 'Content-Type: application/json' -H "X-Finicity-Signature: $2" \
    --data-binary "$1" "http://127.0.0.1:$SERVE_PORT/webhooks/finicity/connect" 2>/dev/null || true
}

# A webhook signed as the partner signs it, then its customer in the API.
webhook_through() {
  local customer="77$((16#$RUN_ID))" event body signature code deadline lifecycle
  event="$(date +%s%3N)-imagetest$RUN_ID"
  { read -r body && read -r signature; } < <(signed_body "$customer" "$event")
  code=$(post_webhook "$body" "$signature" "$OUT/webhook-response.json")
  [[ $code == 200 ]] || die "the signed webhook was answered $code: $(cat "$OUT/webhook-response.json")"
  code=$(post_webhook "$body" "$(printf '%064d' 0)" /dev/null)
  [[ $code == 401 ]] || die "a webhook with a wrong signature was answered $code, not 401"
  say "ok: the signed webhook was answered 200 (and the same body with a wrong signature 401)"
  deadline=$((SECONDS + 30))
  while :; do
    code=$(curl -sS -o "$OUT/lifecycle.json" -w '%{http_code}' --max-time 5 \
      -H "Authorization: Bearer $API_TOKEN" "http://127.0.0.1:$SERVE_PORT/v1/customers/$customer/lifecycle")
    [[ $code == 200 ]] && break
    [[ $code == 404 ]] || die "GET /v1/customers/$customer/lifecycle answered $code: $(cat "$OUT/lifecycle.json")"
    ((SECONDS < deadline)) || die "the customer's lifecycle did not appear in the API within 30 s"
    sleep 0.3
  done
  lifecycle=$(python3 - "$OUT/lifecycle.json" "$customer" "$event" <<'PY'
import json, sys
path, customer, event = sys.argv[1:]
doc = json.load(open(path))
problems = []
if doc.get("customer_id") != customer:
    problems.append(f"customer_id {doc.get('customer_id')!r}")
if (doc.get("last_event") or {}).get("event_id") != event:
    problems.append(f"last_event {doc.get('last_event')!r}")
if doc.get("event_count") != 1:
    problems.append(f"event_count {doc.get('event_count')!r}")
if not doc.get("institution_logins"):
    problems.append("no institution login")
if problems:
    print("; ".join(problems))
    sys.exit(1)
logins = doc["institution_logins"]
print(f"event_count 1, last event {event}, {len(logins)} institution login(s), consent {(doc.get('consent') or {}).get('state')}")
PY
  ) || die "the lifecycle API does not show the webhook: $lifecycle"
  code=$(curl -sS -o /dev/null -w '%{http_code}' --max-time 5 "http://127.0.0.1:$SERVE_PORT/v1/customers/$customer/lifecycle")
  [[ $code == 401 ]] || die "the lifecycle API without a token answered $code, not 401"
  say "ok: GET /v1/customers/$customer/lifecycle (bearer token): $lifecycle; without a token 401"
}

# The image's own `simulate`: complete flows, each customer's lifecycle
# checked through the API.
simulate_flows() {
  local name=$CONTAINER_PREFIX-simulate rc=0 t
  t=$(now_ms)
  CONTAINERS+=("$name")
  podman run --name "$name" "${PODMAN_COMMON[@]}" --network host --user 10001:10001 --read-only \
    --read-only-tmpfs=false --cap-drop=ALL --security-opt no-new-privileges "$TAG" simulate \
    --url "http://127.0.0.1:$SERVE_PORT/webhooks/finicity/connect" --secret "$PARTNER_SECRET" \
    --flow all --customers 3 --duplicates 0.3 --shuffle \
    --verify --api-url "http://127.0.0.1:$SERVE_PORT" --api-token "$API_TOKEN" --verify-timeout-s 60 \
    --verify-changes --kafka-brokers "$BROKERS" --events-topic "cf-image-$RUN_ID.events" \
    --changes-topic "cf-image-$RUN_ID.changes" --dlq-topic "cf-image-$RUN_ID.dlq" \
    --institutions-topic "cf-image-$RUN_ID.institutions" \
    >"$OUT/simulate.log" 2>&1 || rc=$?
  podman rm -f "$name" >/dev/null 2>&1 || true
  ((rc == 0)) || {
    tail -n 30 "$OUT/simulate.log" >&2
    die "the image's \`simulate --verify\` exited $rc"
  }
  say "ok: the image's simulate --verify --verify-changes passed in $(seconds_since "$t")s:"
  grep -E '^(simulate|verify|verify-changes):' "$OUT/simulate.log" | sed 's/^/    /'
}

# Signed webhooks one after another until the receiver stops answering; one
# line per webhook: "<status> <event id>".
webhook_burst() { # webhook_burst <customer> <output file>
  local i=0 event body signature code
  while :; do
    i=$((i + 1))
    event="$(now_ms)-burst$RUN_ID-$i"
    { read -r body && read -r signature; } < <(signed_body "$1" "$event")
    code=$(post_webhook "$body" "$signature" /dev/null)
    printf '%s %s\n' "$code" "$event" >>"$2"
    [[ $code != 000 ]] || break
    ((i < 5000)) || break
  done
}

# SIGTERM to the receiver while webhooks are arriving: every webhook answered
# 200 must reach Postgres through the consumer (the receiver flushed its
# producer before it exited); the others got no answer (refused once the
# listener closed) and would be retried by Finicity.
stop_serve_under_load() {
  local customer="78$((16#$RUN_ID))" burst=$WORK/burst.txt pid accepted others recorded deadline
  : >"$burst"
  webhook_burst "$customer" "$burst" &
  pid=$!
  sleep 1.5
  stop_service serve "shutdown requested" "HTTP server stopped" \
    "!in-flight requests did not finish" "!producer did not flush"
  wait "$pid" || true
  cp "$burst" "$OUT/burst.txt"
  accepted=$(awk '$1 == 200' "$burst" | wc -l)
  others=$(awk '$1 != 200 && $1 != "000"' "$burst" | wc -l)
  ((accepted > 0)) || die "no webhook was accepted before the receiver stopped (see $OUT/burst.txt)"
  ((others == 0)) || die "$others webhooks were answered neither 200 nor not at all during the stop (see $OUT/burst.txt)"
  deadline=$((SECONDS + 30))
  while :; do
    recorded=$(psql -X -At "${DB_URL}" -c "select count(*) from connect_events where customer_id = '$customer'")
    ((recorded == accepted)) && break
    ((recorded < accepted)) || die "$recorded events recorded for $accepted webhooks accepted"
    ((SECONDS < deadline)) || die "only $recorded of the $accepted webhooks answered 200 during the receiver's stop reached Postgres within 30 s"
    sleep 0.3
  done
  say "ok: during the receiver's stop, $accepted webhooks were answered 200 and all $recorded reached Postgres through the consumer; the next got no answer"
}

# ------------------------------------------------------------------ main

ensure_base_image
build_image
check_image

: >"$WORK/no-shell"
psql -X -q "$PG_SUPER_URL" -c "create database $DB_NAME" || die "could not create the scratch database $DB_NAME"
DB_CREATED=1
LOCAL_ENV=(
  "DATABASE_URL=$DB_URL"
  "KAFKA_BROKERS=$BROKERS"
  "CONNECTFLOW_EVENTS_TOPIC=cf-image-$RUN_ID.events"
  "CONNECTFLOW_DLQ_TOPIC=cf-image-$RUN_ID.dlq"
  "CONNECTFLOW_CHANGES_TOPIC=cf-image-$RUN_ID.changes"
  "CONNECTFLOW_INSTITUTIONS_TOPIC=cf-image-$RUN_ID.institutions"
  "CONNECTFLOW_CONSUMER_GROUP=cf-image-$RUN_ID"
  "CONNECTFLOW_TOPIC_REPLICATION_FACTOR=1"
  "CONNECTFLOW_TOPIC_MIN_INSYNC_REPLICAS=1"
  "FINICITY_PARTNER_SECRETS=$PARTNER_SECRET"
  "CONNECTFLOW_API_TOKENS=$API_TOKEN"
)
env_file migrate "$WORK/migrate.env"
LOCAL_ENV+=("CONNECTFLOW_LISTEN=127.0.0.1:$SERVE_PORT")
env_file serve "$WORK/serve.env"
LOCAL_ENV[-1]="CONNECTFLOW_LISTEN=127.0.0.1:$CONSUME_PORT"
env_file consume "$WORK/consume.env"

run_migrate 1
run_migrate 2
start_service serve "$SERVE_PORT"
SERVE_READY=$READY_S
start_service consume "$CONSUME_PORT"
CONSUME_READY=$READY_S
webhook_through
simulate_flows
# The receiver: stops accepting, lets in-flight requests finish and flushes
# the producer (it warns when either does not complete within its grace).
stop_serve_under_load
# The consumer: drains its lanes, commits and leaves the group.
stop_service consume "shutdown requested" "draining lanes" "consumer stopped"

say "PASSED in $(($(date +%s) - T0))s: image $TAG, $IMAGE_SIZE bytes ($((IMAGE_SIZE / 1024 / 1024)) MiB); start to ready: serve ${SERVE_READY}s, consume ${CONSUME_READY}s"

#!/usr/bin/env python3
"""Checks deploy/ against the code, without Docker or a cluster.

Run through deploy/lint-deploy.sh, which finds the binary and a kustomize
renderer. What the binary accepts (subcommands, environment variables, which
of them are secrets) is read from `connectflow <command> --help`; the routes
from src/; nothing of either is written down here. Every problem is printed
and makes the exit status 1.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
COMPOSE = DEPLOY / "compose.yaml"
DOCKERFILE = DEPLOY / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

# Variables with a meaning this check relies on. Each must still be one the
# binary knows (checked), so a rename in src/config.rs fails here loudly.
LISTEN = "CONNECTFLOW_LISTEN"
NO_MIGRATE = "CONNECTFLOW_NO_MIGRATE"
SHUTDOWN_GRACE = "CONNECTFLOW_SHUTDOWN_GRACE_MS"
PARTITIONS = "CONNECTFLOW_TOPIC_PARTITIONS"
CONSUMER_GROUP = "CONNECTFLOW_CONSUMER_GROUP"
# Read by the program but not a clap option: the name, the file that reads it
# and the code that does (checked, so the exception cannot outlive the code).
NOT_CLAP = {"RUST_LOG": ("src/telemetry.rs", "EnvFilter::try_from_default_env")}
MIGRATE_COMMAND = "migrate"
DEV_MARKER = "DEVELOPMENT ONLY"

problems: list[str] = []


def problem(message: str) -> None:
    problems.append(message)
    print(f"  FAIL {message}")


def ok(message: str) -> None:
    print(f"  ok   {message}")


def section(title: str) -> None:
    print(f"== {title}")


# --------------------------------------------------------------------------
# What the binary knows


@dataclass
class Option:
    env: str
    flag: str
    secret: bool  # clap hides its value (`[env: NAME]` without `=`)
    default: str | None


@dataclass
class Binary:
    path: str
    commands: list[str] = field(default_factory=list)
    options: dict[str, dict[str, Option]] = field(default_factory=dict)  # command -> env -> option

    def knows(self, command: str, name: str) -> bool:
        return name in self.options.get(command, {}) or name in NOT_CLAP

    def commands_knowing(self, name: str) -> list[str]:
        return [c for c in self.commands if name in self.options[c]]

    def all_names(self) -> set[str]:
        return {n for opts in self.options.values() for n in opts} | set(NOT_CLAP)

    def option(self, name: str) -> Option | None:
        for opts in self.options.values():
            if name in opts:
                return opts[name]
        return None

    def secret_names(self) -> set[str]:
        return {n for opts in self.options.values() for n, o in opts.items() if o.secret}

    def has_listener(self, command: str) -> bool:
        return LISTEN in self.options.get(command, {})

    def default(self, name: str) -> str | None:
        option = self.option(name)
        return option.default if option else None


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """An environment without any CONNECTFLOW_* or other setting, so that
    --help shows no value and parsing sees only what we give it."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"}
    env.update(extra or {})
    return env


def run_help(binary: str, *args: str) -> str:
    result = subprocess.run(
        [binary, *args, "--help"], env=clean_env(), capture_output=True, text=True, timeout=60
    )
    if result.returncode != 0:
        raise SystemExit(f"lint-deploy: `{binary} {' '.join(args)} --help` failed: {result.stderr.strip()}")
    return result.stdout


OPTION_LINE = re.compile(r"^\s+(?:-\w, )?--([a-z0-9][a-z0-9-]*)(?: <[A-Z_]+>)?\s*$")
ENV_TAG = re.compile(r"\[env: ([A-Za-z_][A-Za-z0-9_]*)(=?)")
DEFAULT_TAG = re.compile(r"\[default: ([^\]]*)\]")


def parse_options(help_text: str) -> dict[str, Option]:
    options: dict[str, Option] = {}
    blocks: list[tuple[str, list[str]]] = []
    for line in help_text.splitlines():
        match = OPTION_LINE.match(line)
        if match:
            blocks.append((match.group(1), []))
        elif blocks:
            blocks[-1][1].append(line)
    for flag, lines in blocks:
        text = "\n".join(lines)
        env = ENV_TAG.search(text)
        if not env:
            continue
        default = DEFAULT_TAG.search(text)
        options[env.group(1)] = Option(
            env=env.group(1), flag=flag, secret=env.group(2) != "=", default=default.group(1) if default else None
        )
    return options


def parse_commands(help_text: str) -> list[str]:
    commands, inside = [], False
    for line in help_text.splitlines():
        if line.strip() == "Commands:":
            inside = True
            continue
        if inside:
            match = re.match(r"^  ([a-z][a-z0-9-]*)\s", line)
            if not match:
                break
            if match.group(1) != "help":
                commands.append(match.group(1))
    return commands


def read_binary(path: str) -> Binary:
    binary = Binary(path=path)
    binary.commands = parse_commands(run_help(path))
    if not binary.commands:
        raise SystemExit(f"lint-deploy: found no subcommands in `{path} --help`")
    for command in binary.commands:
        binary.options[command] = parse_options(run_help(path, command))
    return binary


# --------------------------------------------------------------------------
# What the code serves


def served_get_paths() -> set[str]:
    """GET routes declared in src/: axum `.route("/p", get(..))` calls and
    utoipa `#[utoipa::path(get, path = "/p")]` attributes (which utoipa-axum's
    `routes!` registers)."""
    paths: set[str] = set()
    for file in sorted(glob.glob(str(ROOT / "src" / "**" / "*.rs"), recursive=True)):
        text = Path(file).read_text(encoding="utf-8")
        paths.update(re.findall(r'\.route\(\s*"([^"]+)"\s*,\s*(?:axum::routing::)?get\(', text))
        for attribute in re.findall(r"#\[utoipa::path\((.*?)\)\]\s*(?:pub )?(?:async )?fn", text, re.S):
            method = re.match(r"\s*([a-z]+)", attribute)
            path = re.search(r'\bpath\s*=\s*"([^"]+)"', attribute)
            if method and path and method.group(1) == "get":
                paths.add(path.group(1))
    return paths


# --------------------------------------------------------------------------
# The Dockerfile


@dataclass
class Image:
    env: dict[str, str]
    expose: list[int]
    user: str | None
    entrypoint: list[str] | None
    cmd: list[str] | None


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    joined = re.sub(r"\\\n", " ", "\n".join(l for l in text.splitlines() if not l.lstrip().startswith("#")))
    out = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def check_dockerfile(binary: Binary) -> Image:
    section(f"image: {DOCKERFILE.relative_to(ROOT)}")
    instructions = dockerfile_instructions(DOCKERFILE.read_text(encoding="utf-8"))
    stages: list[list[tuple[str, str]]] = []
    for word, rest in instructions:
        if word == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((word, rest))
    if len(stages) < 2:
        problem("the Dockerfile should be multi-stage (a build stage and a runtime stage)")
    runtime = stages[-1] if stages else []
    build_env: dict[str, str] = {}
    for stage in stages[:-1]:
        for word, rest in stage:
            if word == "ENV":
                build_env.update(parse_env_instruction(rest))
    if build_env.get("SQLX_OFFLINE") == "true":
        ok("the build stage sets SQLX_OFFLINE=true (no database needed)")
    else:
        problem("the build stage must set ENV SQLX_OFFLINE=true so that the build needs no database")

    # COPY sources must exist and not be excluded from the context.
    ignored = dockerignore_patterns()
    for stage in stages:
        for word, rest in stage:
            if word != "COPY" or "--from=" in rest:
                continue
            sources = [s for s in shlex.split(rest) if not s.startswith("--")][:-1]
            for source in sources:
                where = ROOT / source
                if not where.exists():
                    problem(f"COPY {source}: {where.relative_to(ROOT)} does not exist (docker build would fail)")
                elif is_ignored(source, ignored):
                    problem(f"COPY {source}: excluded by .dockerignore")
                else:
                    ok(f"COPY {source} exists in the build context")

    image = Image(env={}, expose=[], user=None, entrypoint=None, cmd=None)
    for word, rest in runtime:
        if word == "ENV":
            image.env.update(parse_env_instruction(rest))
        elif word == "EXPOSE":
            image.expose += [int(p.split("/")[0]) for p in rest.split()]
        elif word == "USER":
            image.user = rest
        elif word == "ENTRYPOINT":
            image.entrypoint = exec_form(rest, "ENTRYPOINT")
        elif word == "CMD":
            image.cmd = exec_form(rest, "CMD")
    for name in image.env:
        if name in binary.all_names():
            ok(f"runtime ENV {name} is known to the binary")
        else:
            problem(f"runtime ENV {name} is not an environment variable connectflow knows")
    if image.entrypoint != ["/usr/local/bin/connectflow"]:
        problem(f'ENTRYPOINT should be ["/usr/local/bin/connectflow"], is {image.entrypoint}')
    else:
        ok("ENTRYPOINT is the binary (exec form: it gets SIGTERM itself)")
    if image.cmd and image.cmd[0] not in binary.commands:
        problem(f"CMD {image.cmd} does not start with a subcommand ({', '.join(binary.commands)})")
    uid = (image.user or "").split(":")[0]
    if not uid.isdigit() or uid == "0":
        problem(f"USER must be a numeric non-root uid (runAsNonRoot checks it), is {image.user!r}")
    else:
        ok(f"USER {image.user} is numeric and not root")
    listen = image.env.get(LISTEN)
    if listen:
        host, port = split_address(listen)
        if host not in ("0.0.0.0", "::", "[::]"):
            problem(f"ENV {LISTEN}={listen}: a container must listen on all interfaces")
        if port not in image.expose:
            problem(f"EXPOSE {image.expose} does not include the port of ENV {LISTEN}={listen}")
        else:
            ok(f"EXPOSE {port} matches ENV {LISTEN}={listen}")
    return image


def parse_env_instruction(rest: str) -> dict[str, str]:
    parts = shlex.split(rest)
    if parts and "=" not in parts[0]:  # legacy `ENV NAME value`
        return {parts[0]: " ".join(parts[1:])}
    return dict(p.split("=", 1) for p in parts)


def exec_form(rest: str, word: str) -> list[str] | None:
    try:
        value = yaml.safe_load(rest)
    except yaml.YAMLError:
        value = None
    if not isinstance(value, list):
        problem(f"{word} should use the exec form (JSON list), is {rest!r}")
        return None
    return [str(v) for v in value]


def dockerignore_patterns() -> list[str]:
    if not DOCKERIGNORE.exists():
        problem(".dockerignore is missing at the repository root (target/ would be sent as build context)")
        return []
    patterns = [l.strip() for l in DOCKERIGNORE.read_text().splitlines() if l.strip() and not l.startswith("#")]
    for needed in ("target", ".git", ".local"):
        if any(p.strip("/") == needed for p in patterns):
            ok(f".dockerignore excludes {needed}/")
        else:
            problem(f".dockerignore should exclude {needed}/")
    return patterns


def is_ignored(source: str, patterns: list[str]) -> bool:
    top = source.strip("/").split("/")[0]
    return any(p.strip("/") == top for p in patterns if not p.startswith("!"))


def split_address(address: str) -> tuple[str, int | None]:
    host, _, port = address.rpartition(":")
    return host, int(port) if port.isdigit() else None


# --------------------------------------------------------------------------
# One container, from compose or Kubernetes: the checks both share


@dataclass
class Container:
    where: str  # for messages
    command: str | None
    literal_env: dict[str, str]  # name -> value known here (not those from Secrets)
    all_names: list[tuple[str, str]]  # (name, how it is set), in order, for the name check


def check_names(c: Container, binary: Binary) -> None:
    if c.command is None:
        return
    for name, how in c.all_names:
        if binary.knows(c.command, name):
            continue
        others = binary.commands_knowing(name)
        if others:
            problem(f"{c.where}: {name} ({how}) is not read by `connectflow {c.command}` (only by {', '.join(others)})")
        else:
            problem(f"{c.where}: {name} ({how}) is not an environment variable connectflow knows")


def effective(c: Container, image: Image, binary: Binary, name: str) -> str | None:
    if name in c.literal_env:
        return c.literal_env[name]
    if name in image.env:
        return image.env[name]
    return binary.default(name)


def listen_port(c: Container, image: Image, binary: Binary) -> int | None:
    listen = effective(c, image, binary, LISTEN)
    if listen is None:
        problem(f"{c.where}: no {LISTEN}")
        return None
    host, port = split_address(listen)
    if host not in ("0.0.0.0", "::", "[::]"):
        problem(f"{c.where}: {LISTEN}={listen} listens on {host} only: probes and Services cannot reach it")
    return port


def grace_seconds(c: Container, image: Image, binary: Binary) -> float:
    value = effective(c, image, binary, SHUTDOWN_GRACE)
    return int(value) / 1000 if value and value.isdigit() else 0.0


# --------------------------------------------------------------------------
# docker compose


def duration_seconds(text: str | int | None) -> float | None:
    if text is None:
        return None
    if isinstance(text, (int, float)):
        return float(text)
    total, found = 0.0, False
    for amount, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", str(text)):
        found = True
        total += float(amount) * {"h": 3600, "m": 60, "s": 1, "ms": 0.001, "us": 0.000001}[unit]
    return total if found else None


def compose_env(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v).lower() if isinstance(v, bool) else str(v) for k, v in env.items()}


def check_compose(binary: Binary, image: Image, runs: list[Container]) -> None:
    section(f"compose: {COMPOSE.relative_to(ROOT)}")
    raw = COMPOSE.read_text(encoding="utf-8")
    try:
        doc = yaml.safe_load(raw)
    except yaml.YAMLError as err:
        problem(f"compose.yaml does not parse: {err}")
        return
    ok("compose.yaml parses (anchors and merge keys resolved)")
    services: dict = doc.get("services") or {}
    declared_volumes = set((doc.get("volumes") or {}).keys())
    ours: dict[str, Container] = {}
    for name, service in services.items():
        where = f"compose service {name}"
        # Named volumes must be declared.
        for volume in service.get("volumes") or []:
            source = volume.get("source") if isinstance(volume, dict) else str(volume).split(":")[0]
            if source and not source.startswith((".", "/", "~")) and source not in declared_volumes:
                problem(f"{where}: volume {source} is not declared under volumes:")
        # depends_on: targets exist; service_healthy needs a healthcheck.
        depends = service.get("depends_on") or {}
        if isinstance(depends, list):
            depends = {d: {"condition": "service_started"} for d in depends}
        for target, spec in depends.items():
            if target not in services:
                problem(f"{where}: depends on {target}, which is not a service")
            elif (spec or {}).get("condition") == "service_healthy" and "healthcheck" not in services[target]:
                problem(f"{where}: waits for {target} to be healthy, but {target} has no healthcheck")
        build = service.get("build")
        is_ours = isinstance(build, dict) and str(build.get("dockerfile", "")).endswith("deploy/Dockerfile")
        is_ours = is_ours or str(service.get("image", "")).split(":")[0].split("/")[-1] == "connectflow"
        env = compose_env(service)
        if not is_ours:
            for key, value in env.items():
                if re.search(r"PASSWORD|SECRET|TOKEN", key) and value:
                    require_dev_marker(raw, key, where)
            continue
        if isinstance(build, dict):
            context = (COMPOSE.parent / str(build.get("context", "."))).resolve()
            dockerfile = context / str(build.get("dockerfile", "Dockerfile"))
            if context != ROOT:
                problem(f"{where}: build context {build.get('context')} is not the repository root")
            if not dockerfile.exists():
                problem(f"{where}: build dockerfile {dockerfile} does not exist")
        command = service.get("command")
        command = shlex.split(command) if isinstance(command, str) else command or image.cmd or []
        sub = command[0] if command else None
        if sub not in binary.commands:
            problem(f"{where}: command {command} does not start with a subcommand ({', '.join(binary.commands)})")
            sub = None
        secret = {k for k in env if k in binary.secret_names()}
        c = Container(
            where=where,
            command=sub,
            literal_env=env,
            all_names=[(k, "environment") for k in env],
        )
        ours[name] = c
        runs.append(c)
        check_names(c, binary)
        for key in secret:
            require_dev_marker(raw, key, where)
        if sub and binary.has_listener(sub):
            port = listen_port(c, image, binary)
            published = [published_target(p) for p in service.get("ports") or []]
            if port not in published:
                problem(f"{where}: ports {service.get('ports')} do not publish the {LISTEN} port {port}")
            else:
                ok(f"{where}: publishes container port {port} = {LISTEN}")
            grace = grace_seconds(c, image, binary)
            stop = duration_seconds(service.get("stop_grace_period")) or 10.0
            if stop <= 2 * grace:
                problem(
                    f"{where}: stop_grace_period {stop:g}s must exceed drain + flush (2 x {SHUTDOWN_GRACE} = {2 * grace:g}s)"
                )
            else:
                ok(f"{where}: stop_grace_period {stop:g}s > drain + flush {2 * grace:g}s")
        healthcheck = service.get("healthcheck")
        if healthcheck and not healthcheck.get("disable"):
            test = healthcheck.get("test") or []
            test = shlex.split(test) if isinstance(test, str) else test
            if test[:1] == ["CMD-SHELL"] or (test[:1] == ["CMD"] and test[1:2] != ["/usr/local/bin/connectflow"]):
                problem(f"{where}: healthcheck {test} needs tools the image does not have (no shell, no curl)")
    # A migrate service means the others must not migrate, and must wait for it.
    migrators = [n for n, c in ours.items() if c.command == MIGRATE_COMMAND]
    for name, c in ours.items():
        if c.command in (None, MIGRATE_COMMAND) or not migrators or not binary.knows(c.command, NO_MIGRATE):
            continue
        if c.literal_env.get(NO_MIGRATE) != "true":
            problem(f"{c.where}: a `migrate` service exists, so set {NO_MIGRATE}=true here")
        else:
            ok(f"{c.where}: {NO_MIGRATE}=true (the migrate service migrates)")
        depends = services[name].get("depends_on") or {}
        conditions = {m: (depends.get(m) or {}).get("condition") if isinstance(depends, dict) else None for m in migrators}
        if not all(v == "service_completed_successfully" for v in conditions.values()):
            problem(f"{c.where}: should depend on {migrators} with condition service_completed_successfully")
        else:
            ok(f"{c.where}: starts after {', '.join(migrators)} completed successfully")
    if ours:
        ok(f"compose: {len(ours)} connectflow services checked: {', '.join(f'{n} ({c.command})' for n, c in ours.items())}")


def published_target(port) -> int | None:
    if isinstance(port, dict):
        return int(port.get("target")) if port.get("target") else None
    text = str(port).split("/")[0]
    target = text.rsplit(":", 1)[-1]
    return int(target) if target.isdigit() else None


def require_dev_marker(raw: str, key: str, where: str) -> None:
    lines = [l for l in raw.splitlines() if re.match(rf"^\s*-?\s*{re.escape(key)}\s*[:=]", l)]
    if not lines or not all(DEV_MARKER in l for l in lines):
        problem(f"{where}: {key} holds a credential: mark the line `# {DEV_MARKER}`")
    else:
        ok(f"{where}: {key} is marked {DEV_MARKER}")


# --------------------------------------------------------------------------
# Kubernetes


def load_yaml_files(directory: Path) -> dict[Path, list[dict]]:
    docs: dict[Path, list[dict]] = {}
    for file in sorted(directory.rglob("*.yaml")) + sorted(directory.rglob("*.yml")):
        try:
            docs[file] = [d for d in yaml.safe_load_all(file.read_text(encoding="utf-8")) if d is not None]
        except yaml.YAMLError as err:
            problem(f"{file.relative_to(ROOT)} does not parse: {err}")
    return docs


def kustomization_dirs() -> list[Path]:
    return sorted({p.parent for p in K8S.rglob("kustomization.yaml")})


def referenced_paths(kustomization: dict) -> list[str]:
    paths = list(kustomization.get("resources") or []) + list(kustomization.get("components") or [])
    paths += list(kustomization.get("patchesStrategicMerge") or [])
    for patch in (kustomization.get("patches") or []) + (kustomization.get("patchesJson6902") or []):
        if isinstance(patch, dict) and patch.get("path"):
            paths.append(patch["path"])
    for generator in (kustomization.get("configMapGenerator") or []) + (kustomization.get("secretGenerator") or []):
        paths += [f.split("=", 1)[-1] for f in generator.get("files") or []] + list(generator.get("envs") or [])
    return [str(p) for p in paths]


def check_references(directory: Path, seen: set[Path] | None = None) -> None:
    """Every path a kustomization names exists (recursively)."""
    seen = seen if seen is not None else set()
    if directory in seen:
        return
    seen.add(directory)
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text(encoding="utf-8")) or {}
    for ref in referenced_paths(kustomization):
        if "://" in ref:
            problem(f"{directory.relative_to(ROOT)}: remote resource {ref}: keep deploy/ self-contained")
            continue
        target = (directory / ref).resolve()
        if not target.exists():
            problem(f"{directory.relative_to(ROOT)}/kustomization.yaml: {ref} does not exist")
        elif target.is_dir():
            if not (target / "kustomization.yaml").exists():
                problem(f"{directory.relative_to(ROOT)}: {ref} is a folder without kustomization.yaml")
            else:
                check_references(target, seen)


def fallback_render(directory: Path) -> list[dict]:
    """Without kustomize: the resources, recursively, with no patch, image,
    replica or namespace transformation applied."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text(encoding="utf-8")) or {}
    docs: list[dict] = []
    for ref in kustomization.get("resources") or []:
        target = (directory / ref).resolve()
        if target.is_dir() and (target / "kustomization.yaml").exists():
            docs += fallback_render(target)
        elif target.is_file():
            docs += [d for d in yaml.safe_load_all(target.read_text(encoding="utf-8")) if d]
    return docs


def render(directory: Path, renderer: list[str]) -> list[dict] | None:
    result = subprocess.run([*renderer, str(directory)], capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        problem(f"{directory.relative_to(ROOT)} does not render: {result.stderr.strip()}")
        return None
    return [d for d in yaml.safe_load_all(result.stdout) if d]


WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"}


def pod_spec(doc: dict) -> dict | None:
    if doc.get("kind") in WORKLOADS:
        return ((doc.get("spec") or {}).get("template") or {}).get("spec")
    if doc.get("kind") == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return None


def pod_labels(doc: dict) -> dict:
    if doc.get("kind") == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"].get("metadata", {}).get("labels", {})
    return ((doc.get("spec") or {}).get("template") or {}).get("metadata", {}).get("labels", {}) or {}


def is_connectflow_image(image: str) -> bool:
    name = image.split("@")[0]
    last = name.rsplit("/", 1)[-1]
    return last.split(":")[0] == "connectflow"


def selects(selector: dict, labels: dict) -> bool:
    match = selector.get("matchLabels", selector) if isinstance(selector, dict) else {}
    expressions = selector.get("matchExpressions") if isinstance(selector, dict) else None
    if expressions:
        problem("matchExpressions are not checked by lint-deploy; use matchLabels")
    return bool(match) and all(labels.get(k) == v for k, v in match.items())


def check_stream(label: str, docs: list[dict], binary: Binary, image: Image, routes: set[str],
                 runs: list[Container], probes: set[str], rendered: bool) -> None:
    section(f"kubernetes: {label}" + ("" if rendered else " (resources only: patches NOT applied)"))
    # ConfigMaps of environment variables; a dashboard's (labelled for
    # Grafana's sidecar) is for Grafana, checked by check_dashboard.
    config_maps = {
        d["metadata"]["name"]: d.get("data") or {}
        for d in docs
        if d.get("kind") == "ConfigMap" and "grafana_dashboard" not in (d["metadata"].get("labels") or {})
    }
    imported: set[str] = set()
    has_migrate_job = False
    workloads = [d for d in docs if pod_spec(d) is not None]
    ports_by_workload: dict[str, dict] = {}
    secret_names = binary.secret_names()

    for doc in docs:
        if doc.get("kind") == "Secret" and (doc.get("data") or doc.get("stringData")):
            problem(f"{label}: Secret/{doc['metadata']['name']} carries values: keep secrets out of the repository")

    for doc in workloads:
        spec = pod_spec(doc)
        kind_name = f"{doc['kind']}/{doc['metadata']['name']}"
        pod_security = spec.get("securityContext") or {}
        for container in spec.get("containers") or []:
            if not is_connectflow_image(str(container.get("image", ""))):
                continue
            where = f"{label} {kind_name} container {container.get('name')}"
            image_ref = str(container.get("image"))
            if rendered and not re.search(r"(:[^/:]+|@sha256:[0-9a-f]+)$", image_ref) or image_ref.endswith(":latest"):
                problem(f"{where}: image {image_ref} is not pinned to a tag or digest (or is :latest)")
            args = container.get("args") or []
            command = container.get("command")
            if command:
                if command[:1] != ["/usr/local/bin/connectflow"]:
                    problem(f"{where}: command {command} replaces the entrypoint; use args: [<subcommand>]")
                args = command[1:] + args
            sub = args[0] if args else (image.cmd or [None])[0]
            if sub not in binary.commands:
                problem(f"{where}: args {args} do not start with a subcommand ({', '.join(binary.commands)})")
                sub = None
            if sub == MIGRATE_COMMAND and doc["kind"] == "Job":
                has_migrate_job = True
            where = f"{where} ({sub})"

            literal: dict[str, str] = {}
            names: list[tuple[str, str]] = []
            for source in container.get("envFrom") or []:
                prefix = source.get("prefix", "")
                if "secretRef" in source:
                    problem(f"{where}: envFrom secretRef imports unknown names; use one secretKeyRef per variable")
                    continue
                ref = (source.get("configMapRef") or {}).get("name")
                if ref not in config_maps:
                    if not (source.get("configMapRef") or {}).get("optional"):
                        problem(f"{where}: envFrom ConfigMap {ref} does not exist")
                    continue
                imported.add(ref)
                for key, value in config_maps[ref].items():
                    name = prefix + key
                    if name in literal:
                        problem(f"{where}: {name} comes from two envFrom sources (the later silently wins)")
                    literal[name] = str(value)
                    names.append((name, f"ConfigMap {ref}"))
                    if name in secret_names:
                        problem(f"{where}: {name} is a secret: it must come from a Secret, not ConfigMap {ref}")
            for item in container.get("env") or []:
                name = item["name"]
                if "value" in item:
                    literal[name] = str(item["value"])
                    names.append((name, "env value"))
                    if name in secret_names:
                        problem(f"{where}: {name} is a secret: use valueFrom.secretKeyRef, never a literal value")
                else:
                    value_from = item.get("valueFrom") or {}
                    literal.pop(name, None)
                    if "secretKeyRef" in value_from:
                        names.append((name, f"Secret {value_from['secretKeyRef'].get('name')}"))
                    elif "configMapKeyRef" in value_from:
                        ref = value_from["configMapKeyRef"]
                        if ref.get("name") not in config_maps or ref.get("key") not in config_maps[ref.get("name")]:
                            if not ref.get("optional"):
                                problem(f"{where}: {name} refers to missing ConfigMap key {ref}")
                        else:
                            literal[name] = str(config_maps[ref["name"]][ref["key"]])
                            imported.add(ref["name"])
                        names.append((name, "configMapKeyRef"))
                    else:
                        names.append((name, "valueFrom"))
            c = Container(where=where, command=sub, literal_env=literal, all_names=names)
            runs.append(c)
            check_names(c, binary)
            known = [n for n, _ in names if sub and binary.knows(sub, n)]
            if sub:
                ok(f"{where}: {len(known)}/{len(names)} variables known to `connectflow {sub}`")

            # Migrations belong to the Job.
            if doc["kind"] != "Job" and sub != MIGRATE_COMMAND and sub and binary.knows(sub, NO_MIGRATE):
                if literal.get(NO_MIGRATE) != "true":
                    problem(f"{where}: long-running; the migrate Job migrates: set {NO_MIGRATE}=true")

            # HTTP: listener, ports, probes.
            container_ports = {p.get("name"): p.get("containerPort") for p in container.get("ports") or []}
            probe_specs = {k: container.get(k) for k in ("startupProbe", "livenessProbe", "readinessProbe") if container.get(k)}
            for kind, probe in probe_specs.items():
                if "exec" in probe:
                    problem(f"{where}: {kind} uses exec: the image has no shell or curl; use httpGet")
            lifecycle = container.get("lifecycle") or {}
            for hook, handler in lifecycle.items():
                if "exec" in (handler or {}):
                    problem(f"{where}: {hook} uses exec: the image relies on no shell; use the sleep action")
            if sub and binary.has_listener(sub):
                port = listen_port(c, image, binary)
                ports_by_workload[kind_name] = {"port": port, "named": container_ports, "labels": pod_labels(doc)}
                if port not in container_ports.values():
                    problem(f"{where}: containerPort {list(container_ports.values())} does not include the {LISTEN} port {port}")
                else:
                    ok(f"{where}: containerPort {port} = {LISTEN} port")
                for needed in ("livenessProbe", "readinessProbe"):
                    if needed not in probe_specs:
                        problem(f"{where}: no {needed}")
                for kind, probe in probe_specs.items():
                    http = probe.get("httpGet")
                    if not http:
                        continue
                    probe_port = http.get("port")
                    resolved = container_ports.get(probe_port) if isinstance(probe_port, str) else probe_port
                    if resolved != port:
                        problem(f"{where}: {kind} port {probe_port} is not the {LISTEN} port {port}")
                    path = http.get("path", "/")
                    probes.add(path)
                    if path not in routes:
                        problem(f"{where}: {kind} path {path} is not a GET route in src/ ({', '.join(sorted(routes))})")
                    else:
                        ok(f"{where}: {kind} GET {path} on port {probe_port} -> {resolved} is served")
                grace = grace_seconds(c, image, binary)
                pre_stop = ((lifecycle.get("preStop") or {}).get("sleep") or {}).get("seconds", 0)
                period = spec.get("terminationGracePeriodSeconds", 30)
                budget = pre_stop + 2 * grace
                if period <= budget:
                    problem(
                        f"{where}: terminationGracePeriodSeconds {period} must exceed preStop {pre_stop}s + drain and "
                        f"flush (2 x {SHUTDOWN_GRACE} = {2 * grace:g}s)"
                    )
                else:
                    ok(f"{where}: terminationGracePeriodSeconds {period} > preStop {pre_stop}s + drain and flush {2 * grace:g}s")
            elif sub:
                if container_ports:
                    problem(f"{where}: declares ports, but `connectflow {sub}` has no listener")
                for kind, probe in probe_specs.items():
                    if "httpGet" in probe or "tcpSocket" in probe or "grpc" in probe:
                        problem(f"{where}: {kind} probes a port, but `connectflow {sub}` has no listener")

            # Consumers beyond the partition count idle.
            if sub and binary.knows(sub, CONSUMER_GROUP) and doc["kind"] == "Deployment":
                replicas = (doc.get("spec") or {}).get("replicas", 1)
                partitions = effective(c, image, binary, PARTITIONS)
                if partitions and partitions.lstrip("-").isdigit() and replicas > int(partitions):
                    problem(f"{where}: {replicas} replicas > {PARTITIONS}={partitions}: the extra ones would idle")
                else:
                    ok(f"{where}: {replicas} replicas <= {PARTITIONS}={partitions}")

            # Security context: container settings over pod settings.
            security = {**pod_security, **(container.get("securityContext") or {})}
            expected_uid = int((image.user or "0").split(":")[0] or 0)
            wanted = {
                "runAsNonRoot": True,
                "readOnlyRootFilesystem": True,
                "allowPrivilegeEscalation": False,
            }
            wrong = [k for k, v in wanted.items() if security.get(k) is not v]
            if security.get("runAsUser") != expected_uid:
                wrong.append(f"runAsUser={expected_uid} (the image's USER)")
            if "ALL" not in ((security.get("capabilities") or {}).get("drop") or []):
                wrong.append("capabilities.drop [ALL]")
            if (security.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
                wrong.append("seccompProfile RuntimeDefault")
            if wrong:
                problem(f"{where}: securityContext lacks {', '.join(map(str, wrong))}")
            else:
                ok(f"{where}: securityContext non-root {expected_uid}, read-only root, no escalation, no capabilities, seccomp")
            resources = container.get("resources") or {}
            missing = [f"{k}.{r}" for k in ("requests", "limits") for r in ("cpu", "memory") if r not in (resources.get(k) or {})]
            if missing:
                problem(f"{where}: resources lack {', '.join(missing)}")

    for name, data in config_maps.items():
        for key in data:
            if key not in binary.all_names():
                problem(f"{label}: ConfigMap {name} key {key} is not an environment variable connectflow knows")
        if name not in imported:
            problem(f"{label}: ConfigMap {name} is not used by any connectflow container")
    ok(f"{label}: {sum(len(d) for d in config_maps.values())} ConfigMap keys in {len(config_maps)} ConfigMaps checked")

    if not has_migrate_job:
        problem(f"{label}: no Job runs `connectflow {MIGRATE_COMMAND}`")

    # Services select HTTP pods, and their targetPort is the listener.
    for svc in (d for d in docs if d.get("kind") == "Service"):
        selector = (svc.get("spec") or {}).get("selector") or {}
        where = f"{label} Service/{svc['metadata']['name']}"
        matched = [d for d in workloads if selects(selector, pod_labels(d))]
        if not matched:
            problem(f"{where}: selector {selector} matches no pods")
        for doc in matched:
            kind_name = f"{doc['kind']}/{doc['metadata']['name']}"
            if kind_name not in ports_by_workload:
                problem(f"{where}: selects {kind_name}, which has no HTTP listener")
                continue
            info = ports_by_workload[kind_name]
            for port in (svc.get("spec") or {}).get("ports") or []:
                target = port.get("targetPort", port.get("port"))
                resolved = info["named"].get(target) if isinstance(target, str) else target
                if resolved != info["port"]:
                    problem(f"{where}: targetPort {target} of {kind_name} is not its {LISTEN} port {info['port']}")
                else:
                    ok(f"{where}: port {port.get('port')} -> {kind_name} {target} ({resolved})")

    deployments = {d["metadata"]["name"]: d for d in docs if d.get("kind") == "Deployment"}
    for hpa in (d for d in docs if d.get("kind") == "HorizontalPodAutoscaler"):
        where = f"{label} HorizontalPodAutoscaler/{hpa['metadata']['name']}"
        if hpa.get("apiVersion") != "autoscaling/v2":
            problem(f"{where}: use autoscaling/v2")
        spec = hpa.get("spec") or {}
        target = (spec.get("scaleTargetRef") or {}).get("name")
        if target not in deployments:
            problem(f"{where}: scales Deployment {target}, which does not exist")
        elif "replicas" in deployments[target].get("spec", {}):
            problem(f"{where}: Deployment {target} sets replicas: every apply would reset the HPA's count")
        if spec.get("minReplicas", 1) > spec.get("maxReplicas", 0):
            problem(f"{where}: minReplicas > maxReplicas")
        else:
            ok(f"{where}: scales Deployment/{target} {spec.get('minReplicas', 1)}..{spec.get('maxReplicas')}")
    for pdb in (d for d in docs if d.get("kind") == "PodDisruptionBudget"):
        where = f"{label} PodDisruptionBudget/{pdb['metadata']['name']}"
        if not [d for d in workloads if selects((pdb.get("spec") or {}).get("selector") or {}, pod_labels(d))]:
            problem(f"{where}: selector matches no pods")
        else:
            ok(f"{where}: selects pods")


def check_kubernetes(binary: Binary, image: Image, routes: set[str], renderer: list[str] | None,
                     runs: list[Container], probes: set[str]) -> None:
    section(f"kubernetes: parse every manifest under {K8S.relative_to(ROOT)}")
    files = load_yaml_files(K8S)
    ok(f"{sum(len(d) for d in files.values())} documents in {len(files)} files parse")
    for file, docs in files.items():
        text = file.read_text(encoding="utf-8")
        if re.search(r"NOT-FOR-PRODUCTION|connectflow-dev-password", text):
            problem(f"{file.relative_to(ROOT)}: holds a development credential")
    directories = kustomization_dirs()
    seen: set[Path] = set()
    for directory in directories:
        check_references(directory, seen)
    ok(f"every path named by {len(directories)} kustomizations exists")
    if renderer is None:
        print("  NOTE no kustomize renderer: overlays are checked from their resources only (patches, images,")
        print("       replicas and namespace NOT applied); install kustomize or kubectl for the full check")
    for directory in directories:
        label = str(directory.relative_to(K8S))
        docs = render(directory, renderer) if renderer else fallback_render(directory)
        if docs is None:
            continue
        if renderer:
            ok(f"{label} renders with `{' '.join(renderer)}`: {len(docs)} objects")
        check_stream(label, docs, binary, image, routes, runs, probes, rendered=renderer is not None)


# --------------------------------------------------------------------------
# The binary itself


def check_values_with_binary(binary: Binary, runs: list[Container]) -> None:
    """Each container's literal configuration, parsed by the binary itself.
    Secrets are left out, so `serve`/`all` stop right after parsing with
    "<secret>: required" and bind nothing; the other commands get dead
    loopback addresses for Postgres and Kafka and are stopped after a moment.
    A value the binary rejects ends it at once with status 2 and one line
    naming the variable."""
    section("values: parsed by the binary with each container's literal configuration")
    secrets = binary.secret_names()
    started = []
    for c in runs:
        if c.command is None:
            continue
        env = {k: v for k, v in c.literal_env.items() if k not in secrets}
        env.update(
            KAFKA_BROKERS="127.0.0.1:1",
            DATABASE_URL="postgres://lint:lint@127.0.0.1:1/lint",
            CONNECTFLOW_LOG_FORMAT=env.get("CONNECTFLOW_LOG_FORMAT", "json"),
        )
        log = tempfile.TemporaryFile(mode="w+")
        process = subprocess.Popen([binary.path, c.command], env=clean_env(env), stdout=subprocess.DEVNULL,
                                   stderr=log, start_new_session=True)
        started.append((c, process, log))
    # A rejected value ends the process at once; give a loaded machine time.
    deadline = time.monotonic() + 3.0
    for c, process, log in started:
        with log:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                stop(process)
                ok(f"{c.where}: accepted (still running after parsing)")
                continue
            log.seek(0)
            lines = log.read().strip().splitlines()
            last = lines[-1] if lines else ""
            if process.returncode == 2 and not any(f"{s}: required" in last for s in secrets):
                problem(f"{c.where}: the binary rejects the configuration: {last}")
            else:
                ok(f"{c.where}: accepted")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_routes_live(binary: Binary, probes: set[str]) -> None:
    """The probe paths answered by the real binary with Postgres and Kafka
    unreachable: /livez must still be 200 (liveness must not depend on them),
    and no probe path may be 404. Then SIGTERM must end it promptly."""
    commands = [c for c in binary.commands if binary.has_listener(c) and c != "all"] or \
               [c for c in binary.commands if binary.has_listener(c)]
    if not commands or not probes:
        return
    command = commands[0]
    section(f"routes: probe paths asked of a running `connectflow {command}` (Postgres and Kafka unreachable)")
    port = free_port()
    base = {
        LISTEN: f"127.0.0.1:{port}",
        NO_MIGRATE: "true",
        SHUTDOWN_GRACE: "1000",
        "KAFKA_BROKERS": "127.0.0.1:1",
        "DATABASE_URL": "postgres://lint:lint@127.0.0.1:1/lint",
        "CONNECTFLOW_LOG_FORMAT": "json",
        "RUST_LOG": "error",
    }
    # A dummy only for the secrets the binary says are required: it names
    # them one at a time ("NAME: required") and exits 2.
    required: dict[str, str] = {}
    process = None
    with tempfile.TemporaryFile(mode="w+") as log:
        for _ in range(len(binary.secret_names()) + 1):
            log.seek(0)
            log.truncate()
            process = subprocess.Popen([binary.path, command], env=clean_env({**base, **required}),
                                       stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
            if wait_listening(process, port, timeout=20):
                break
            log.seek(0)
            stderr = log.read().strip()
            missing = re.search(r"error: ([A-Z_]+): required", stderr)
            if process.poll() != 2 or not missing or missing.group(1) in required:
                stop(process)
                problem(f"`connectflow {command}` did not start listening: {stderr[-300:]}")
                return
            required[missing.group(1)] = "lint-only"
        try:
            for path in sorted(probes):
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
                        status = response.status
                except urllib.error.HTTPError as err:
                    status = err.code
                except OSError as err:
                    problem(f"GET {path}: {err}")
                    continue
                if status in (404, 405):
                    problem(f"GET {path}: {status}: the binary does not serve this probe path")
                elif path == "/livez" and status != 200:
                    problem(f"GET /livez: {status} with dependencies down: liveness must not depend on them")
                else:
                    ok(f"GET {path}: {status}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
                    SCRAPED["metrics"] = response.read().decode("utf-8")
            except OSError as err:
                problem(f"GET /metrics: {err}")
            started = time.monotonic()
            os.killpg(process.pid, signal.SIGTERM)
            try:
                code = process.wait(timeout=15)
                if code != 0:
                    problem(f"SIGTERM: `connectflow {command}` exited {code}, not 0")
                else:
                    ok(f"SIGTERM: exited 0 after {time.monotonic() - started:.1f}s")
            except subprocess.TimeoutExpired:
                problem(f"SIGTERM: `connectflow {command}` still running 15 s later")
        finally:
            stop(process)


def wait_listening(process: subprocess.Popen, port: int, timeout: float) -> bool:
    """True once the port accepts; False if the process exited first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.1)
    return False


def stop(process: subprocess.Popen | None) -> None:
    if process is not None and process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


# --------------------------------------------------------------------------


# What the running binary exported on /metrics (check_routes_live).
SCRAPED: dict[str, str] = {}

ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yaml"
ALERT_TESTS = ROOT / "deploy" / "prometheus" / "alerts.test.yaml"
PROMETHEUS_RULE = ROOT / "deploy" / "kubernetes" / "base" / "prometheusrule.yaml"


def check_alerts() -> None:
    """The alert rules parse (`promtool check rules`), every alert is unit
    tested and the tests pass (`promtool test rules`), every alert says what
    to do and how urgent it is, and the Kubernetes PrometheusRule carries the
    same groups."""
    section(f"alerts: {ALERTS.relative_to(ROOT)}")
    promtool = shutil.which("promtool")
    if promtool is None:
        problem("promtool is missing: `make services` installs Debian's prometheus package, which has it")
        return
    for args in (["check", "rules", str(ALERTS)], ["test", "rules", str(ALERT_TESTS)]):
        run = subprocess.run([promtool, *args], capture_output=True, text=True, cwd=ALERTS.parent)
        if run.returncode != 0:
            problem(f"promtool {' '.join(args[:2])} failed:\n{run.stdout}{run.stderr}")
        else:
            ok(f"promtool {' '.join(args[:2])}")
    groups = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    alerts = [rule for group in groups["groups"] for rule in group["rules"] if "alert" in rule]
    tested = {
        step["alertname"]
        for test in yaml.safe_load(ALERT_TESTS.read_text(encoding="utf-8"))["tests"]
        for step in test.get("alert_rule_test", [])
    }
    for rule in alerts:
        name = rule["alert"]
        missing = [key for key in ("summary", "description", "runbook") if not rule.get("annotations", {}).get(key)]
        if missing:
            problem(f"alert {name} has no {', '.join(missing)}")
        if rule.get("labels", {}).get("severity") not in ("page", "ticket"):
            problem(f"alert {name}: severity must be page or ticket")
        runbook = rule.get("annotations", {}).get("runbook", "")
        doc, _, anchor = runbook.partition("#")
        if doc and not (ROOT / doc).is_file():
            problem(f"alert {name}: runbook {runbook} names no file")
        elif anchor and anchor not in markdown_anchors(ROOT / doc):
            problem(f"alert {name}: runbook {runbook} names no section of {doc}")
        if name not in tested:
            problem(f"alert {name} has no unit test in {ALERT_TESTS.relative_to(ROOT)}")
    ok(f"{len(alerts)} alerts, each with a severity, a summary, what to do, a runbook section and a unit test")
    # A family with labels shows on /metrics once it has a sample (not with
    # Kafka and Postgres away, as here): those are taken from the registry's
    # source, the others from the running binary's scrape.
    exported = exported_metrics()
    if not exported:
        problem("no /metrics scrape of the running binary to check the alerts' metrics against")
    for rule in alerts:
        for metric in sorted(set(re.findall(r"\bconnectflow_[a-z0-9_]+", rule["expr"]))):
            if exported and metric_family(metric) not in exported:
                problem(f"alert {rule['alert']} uses {metric}, which the binary does not export")
    if exported:
        ok(f"every metric the alerts use is exported ({len(exported)} families)")
    # docs/operations.md's table of alerts says what the rules say.
    operations = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    stale = []
    for rule in alerts:
        expr = " ".join(rule["expr"].split()).replace("|", "\\|")
        row = (f"| `{rule['alert']}` | {rule['labels'].get('severity')} | `{expr}` for {rule.get('for', 'at once')} | "
               f"{rule.get('annotations', {}).get('description', '')} |")
        if row not in operations.splitlines():
            stale.append(rule["alert"])
    if stale:
        problem(f"docs/operations.md's alerts table differs from the rules for {', '.join(stale)}")
    else:
        ok("docs/operations.md's alerts table says what the rules say")
    shipped = yaml.safe_load(PROMETHEUS_RULE.read_text(encoding="utf-8"))
    if shipped.get("kind") != "PrometheusRule" or shipped.get("spec") != groups:
        problem(f"{PROMETHEUS_RULE.relative_to(ROOT)} does not carry the groups of {ALERTS.relative_to(ROOT)}")
    else:
        ok(f"{PROMETHEUS_RULE.relative_to(ROOT)} carries the same groups")


DASHBOARD = ROOT / "deploy" / "kubernetes" / "base" / "dashboards" / "connectflow.json"
# Grafana's variables in the panels' queries, replaced by what Grafana would
# put there so that promtool can parse the query.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}


def exported_metrics() -> set[str]:
    """The metric families the binary exports: those on the scrape of the
    running binary, and those registered in src/metrics.rs (a family with
    labels shows on /metrics only once it has a sample; the integration
    test `dashboard` sees them on a busy service)."""
    scraped = set(re.findall(r"^# TYPE (connectflow_[a-z0-9_]+) ", SCRAPED.get("metrics", ""), re.MULTILINE))
    if not scraped:
        return set()
    registered = {
        f"connectflow_{name}"
        for name in re.findall(r'registry\.register\(\s*"([a-z0-9_]+)"', (ROOT / "src/metrics.rs").read_text(encoding="utf-8"))
    }
    return scraped | registered


def metric_family(metric: str) -> str:
    return re.sub(r"_(total|bucket|sum|count)$", "", metric)


def check_dashboard(renderer: list[str] | None) -> None:
    """Every panel's query parses (promtool, as recording rules of a
    temporary file), names only metrics the binary exports, and the
    Kubernetes base ships the dashboard as a ConfigMap, unchanged."""
    section(f"dashboard: {DASHBOARD.relative_to(ROOT)}")
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    targets = [(panel["title"], target) for panel in dashboard.get("panels", []) for target in panel.get("targets", [])]
    if not targets:
        problem("the dashboard has no panel with a query")
        return
    exprs = []
    for title, target in targets:
        expr = target.get("expr", "")
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        if "$" in expr:
            problem(f"dashboard panel {title!r}: {expr!r} uses a variable this check does not know")
        exprs.append((title, expr))
    promtool = shutil.which("promtool")
    if promtool is None:
        problem("promtool is missing: `make services` installs Debian's prometheus package, which has it")
    else:
        rules = {"groups": [{"name": "dashboard", "rules": [
            {"record": f"dashboard:query_{index}", "expr": expr} for index, (_, expr) in enumerate(exprs)
        ]}]}
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as file:
            yaml.safe_dump(rules, file)
        try:
            run = subprocess.run([promtool, "check", "rules", file.name], capture_output=True, text=True)
        finally:
            os.unlink(file.name)
        if run.returncode != 0:
            problem(f"a dashboard query does not parse:\n{run.stdout}{run.stderr}")
        else:
            ok(f"{len(exprs)} queries of {len(dashboard['panels'])} panels parse (promtool check rules)")
    exported = exported_metrics()
    if not exported:
        problem("no /metrics scrape of the running binary to check the dashboard's metrics against")
    else:
        named = set()
        for title, expr in exprs:
            for metric in sorted(set(re.findall(r"\bconnectflow_[a-z0-9_]+", expr))):
                named.add(metric)
                if metric_family(metric) not in exported:
                    problem(f"dashboard panel {title!r} uses {metric}, which the binary does not export")
        ok(f"the dashboard's {len(named)} metrics are all exported")
    if renderer:
        docs = render(K8S / "base", renderer) or []
        shipped = [
            d for d in docs
            if d.get("kind") == "ConfigMap" and DASHBOARD.name in (d.get("data") or {})
        ]
        if len(shipped) != 1 or json.loads(shipped[0]["data"][DASHBOARD.name]) != dashboard:
            problem(f"kubernetes/base does not ship {DASHBOARD.name} unchanged as one ConfigMap")
        else:
            ok(f"kubernetes/base ships it as ConfigMap/{shipped[0]['metadata']['name']}")


def markdown_anchors(path: Path) -> set[str]:
    """GitHub's anchors of a Markdown file's headings."""
    anchors = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchor = "".join(ch for ch in title if ch.isalnum() or ch in " -_").replace(" ", "-")
            anchors.add(anchor)
    return anchors


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bin", required=True, help="the connectflow binary")
    parser.add_argument("--renderer", help="kustomize command, e.g. 'kustomize build' or 'kubectl kustomize'")
    args = parser.parse_args()
    started = time.monotonic()

    section(f"binary: {args.bin}")
    binary = read_binary(args.bin)
    names = binary.all_names() - set(NOT_CLAP)
    print(f"  subcommands: {', '.join(binary.commands)}")
    print(f"  {len(names)} environment variables; secrets (hidden values): {', '.join(sorted(binary.secret_names()))}")
    for name in (LISTEN, NO_MIGRATE, SHUTDOWN_GRACE, PARTITIONS, CONSUMER_GROUP):
        if name not in names:
            problem(f"the binary no longer knows {name}: update deploy/ and this check")
    for name, (file, code) in NOT_CLAP.items():
        if code not in (ROOT / file).read_text(encoding="utf-8"):
            problem(f"{name} is allowed because {file} reads it ({code}), which it no longer does")
        else:
            ok(f"{name} is read by {file} (not a clap option)")
    routes = served_get_paths()
    if not routes:
        problem("found no GET routes in src/: the route discovery in this check needs updating")
    print(f"  GET routes in src/: {', '.join(sorted(routes))}")

    runs: list[Container] = []
    probes: set[str] = set()
    image = check_dockerfile(binary)
    check_compose(binary, image, runs)
    renderer = shlex.split(args.renderer) if args.renderer else None
    check_kubernetes(binary, image, routes, renderer, runs, probes)
    check_values_with_binary(binary, runs)
    check_routes_live(binary, probes)
    check_alerts()
    check_dashboard(renderer)

    took = time.monotonic() - started
    if problems:
        print(f"lint-deploy: {len(problems)} problem(s) ({took:.1f}s)")
        return 1
    print(f"lint-deploy: all checks passed ({took:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

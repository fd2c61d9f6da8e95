//! Child processes (the release-build service, the baseline server) and
//! scratch databases and topics for a bench run.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection};

pub const LOCAL_DATABASE_URL: &str = "postgres://connectflow:connectflow@127.0.0.1:5432/connectflow";
pub const LOCAL_KAFKA: &str = "127.0.0.1:9092";
pub const SECRET: &str = "bench-partner-secret";
pub const TOKEN: &str = "bench-api-token";

pub fn database_url() -> String {
    std::env::var("CONNECTFLOW_BENCH_DATABASE_URL").unwrap_or_else(|_| LOCAL_DATABASE_URL.to_owned())
}

pub fn kafka_brokers() -> String {
    std::env::var("CONNECTFLOW_BENCH_KAFKA_BROKERS").unwrap_or_else(|_| LOCAL_KAFKA.to_owned())
}

/// A child process, stopped with SIGTERM (then killed) when dropped.
pub struct Proc {
    pub child: Child,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Peak resident set size (VmHWM), MiB.
    pub fn peak_rss_mib(&self) -> Option<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib / 1024.0)
    }

    pub fn stop(mut self) {
        terminate(&mut self.child);
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        terminate(&mut self.child);
    }
}

fn terminate(child: &mut Child) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A free loopback port (bound and released: a tiny race, fine for a bench).
pub fn free_addr() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?)
}

/// The release `connectflow` next to this bench binary.
pub fn connectflow_bin() -> anyhow::Result<PathBuf> {
    if let Ok(path) = std::env::var("CONNECTFLOW_BIN") {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe()?;
    let dir = exe.parent().and_then(|p| p.parent()).context("locating target/release")?;
    let bin = dir.join("connectflow");
    if !bin.exists() {
        bail!("{} is missing: build it with `cargo build --release --bin connectflow`", bin.display());
    }
    Ok(bin)
}

/// Starts `connectflow <command>` with the bench's environment.
pub fn spawn_connectflow(command: &str, env: &[(&str, String)], listen: Option<SocketAddr>) -> anyhow::Result<Proc> {
    let mut cmd = Command::new(connectflow_bin()?);
    cmd.arg(command)
        .env("FINICITY_PARTNER_SECRETS", SECRET)
        .env("CONNECTFLOW_API_TOKENS", TOKEN)
        .env("CONNECTFLOW_LOG_FORMAT", "json")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    if let Some(addr) = listen {
        cmd.env("CONNECTFLOW_LISTEN", addr.to_string());
    }
    for (key, value) in env {
        cmd.env(key, value);
    }
    let child = cmd.spawn().with_context(|| format!("starting connectflow {command}"))?;
    Ok(Proc { child })
}

/// Starts this bench binary as the baseline server.
pub fn spawn_baseline(addr: SocketAddr) -> anyhow::Result<Proc> {
    let child = Command::new(std::env::current_exe()?)
        .args(["baseline-server", &addr.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting the baseline server")?;
    Ok(Proc { child })
}

/// Waits until `GET url` answers 200.
pub async fn wait_for(url: &str, timeout: Duration) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(response) = client.get(url).send().await
            && response.status().is_success()
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{url} did not answer 200 within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until something accepts TCP connections on `addr`.
pub async fn wait_for_port(addr: SocketAddr, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        if Instant::now() > deadline {
            bail!("{addr} did not open within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// A fresh, empty database; returns its URL.
pub async fn fresh_database(tag: &str) -> anyhow::Result<String> {
    let base = database_url();
    let name = format!("cf_bench_{tag}_{}", uuid::Uuid::new_v4().simple());
    let mut conn = PgConnectOptions::from_str(&base)?.connect().await.context("connecting to Postgres")?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&mut conn).await?;
    conn.close().await.ok();
    let (prefix, _) = base.rsplit_once('/').context("database URL has no database name")?;
    Ok(format!("{prefix}/{name}"))
}

/// A port of deploy/services.sh's Postgres set from its variable
/// (`PG_REPLICA_PORT`, default 5433; `PG_PROXY_PORT`, 5434).
pub fn pg_port(variable: &str, default: u16) -> u16 {
    std::env::var(variable).ok().and_then(|p| p.parse().ok()).unwrap_or(default)
}

/// `url` with another port.
pub fn with_port(url: &str, port: u16) -> anyhow::Result<String> {
    let (prefix, name) = url.rsplit_once('/').context("database URL has no database name")?;
    let (host, _) = prefix.rsplit_once(':').context("database URL has no port")?;
    Ok(format!("{host}:{port}/{name}"))
}

/// A connection to a streaming standby, checked to be in recovery. Tries for
/// `within`: a database just created on the primary takes the standby a
/// moment to replay.
pub async fn connect_standby(options: &PgConnectOptions, within: Duration) -> anyhow::Result<sqlx::PgConnection> {
    let deadline = Instant::now() + within;
    let mut conn = loop {
        match options.connect().await {
            Ok(conn) => break conn,
            Err(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(200)).await,
            Err(err) => return Err(err).context("no standby (PG_REPLICA=1 bash deploy/services.sh up)"),
        }
    };
    let standby: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()").fetch_one(&mut conn).await?;
    anyhow::ensure!(standby, "the server on port {} is not a standby", options.get_port());
    Ok(conn)
}

/// Drops a bench database.
pub async fn drop_database(url: &str) {
    let Some((_, name)) = url.rsplit_once('/') else { return };
    let Ok(options) = PgConnectOptions::from_str(&database_url()) else { return };
    if let Ok(mut conn) = options.connect().await {
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")))
            .execute(&mut conn)
            .await;
    }
}

/// Unique topic names for a run.
pub fn topics(tag: &str) -> (String, String) {
    let id = uuid::Uuid::new_v4().simple();
    (format!("cf-bench-{tag}-{id}.events"), format!("cf-bench-{tag}-{id}.dlq"))
}

/// Clock ticks per second of `/proc/<pid>/stat`'s CPU times (`getconf
/// CLK_TCK`; 100 on every Linux this runs on when getconf is missing).
pub fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(100.0)
}

/// User plus system CPU time a process has used so far (all its threads), in
/// clock ticks. `None` once it is gone.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces: count from its closing ')'.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state): utime is field 14, stime field 15.
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// The postmaster of the server the bench's databases are on, once
/// [`find_postmaster`] has found it.
static POSTMASTER: std::sync::OnceLock<u32> = std::sync::OnceLock::new();

/// A process's parent, from `/proc/<pid>/stat`.
fn parent_pid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Finds the postmaster of the server at [`database_url`] (the parent of a
/// backend), so that [`postgres_cpu_ticks`] counts that server alone and
/// not, say, a streaming standby replaying its WAL on the same machine.
pub async fn find_postmaster() {
    let Ok(options) = PgConnectOptions::from_str(&database_url()) else { return };
    let Ok(mut conn) = options.connect().await else { return };
    let backend: Result<i32, _> = sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(&mut conn).await;
    match backend.ok().and_then(|pid| parent_pid(u32::try_from(pid).ok()?)) {
        Some(postmaster) => {
            eprintln!("bench: Postgres CPU is that of postmaster {postmaster} and its children");
            let _ = POSTMASTER.set(postmaster);
        }
        None => eprintln!("bench: the server's postmaster not found: Postgres CPU counts every process named postgres"),
    }
    conn.close().await.ok();
}

/// CPU ticks used so far by the server's running processes (its backends
/// and background workers): the children of the postmaster
/// [`find_postmaster`] found, or, before that or when it could not, every
/// process named `postgres`. Processes that exit in between are not
/// counted, so measure across a window in which the connections that do the
/// work stay open.
pub fn postgres_cpu_ticks() -> u64 {
    let Ok(entries) = std::fs::read_dir("/proc") else { return 0 };
    let postmaster = POSTMASTER.get().copied();
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|comm| comm.trim() == "postgres"))
        .filter(|&pid| postmaster.is_none_or(|postmaster| pid == postmaster || parent_pid(pid) == Some(postmaster)))
        .filter_map(cpu_ticks)
        .sum()
}

/// CPU microseconds per unit of work from a tick difference.
pub fn us_per(ticks: u64, units: f64, ticks_per_s: f64) -> Option<f64> {
    (units > 0.0).then(|| ticks as f64 / ticks_per_s * 1e6 / units)
}

//! A lean HTTP/1.1 load generator: one hyper connection per worker, keep-alive,
//! requests taken round-robin from a pre-built pool so the generator spends
//! its CPU on sending, not on building bodies.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;

/// One prepared request.
#[derive(Clone)]
pub struct Prepared {
    pub method: hyper::Method,
    pub path: String,
    pub headers: Vec<(&'static str, String)>,
    pub body: Bytes,
}

/// What a run measured.
#[derive(Debug, Default)]
pub struct LoadResult {
    pub ok: u64,
    pub failed: u64,
    /// Answers that were not 2xx, by status.
    pub failed_statuses: std::collections::BTreeMap<u16, u64>,
    pub elapsed: Duration,
    /// Latencies of successful requests, microseconds.
    pub latencies_us: Vec<u32>,
}

impl LoadResult {
    pub fn per_second(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn percentile_ms(&self, p: f64) -> f64 {
        percentile_ms(&self.latencies_us, p)
    }
}

pub fn percentile_ms(latencies_us: &[u32], p: f64) -> f64 {
    if latencies_us.is_empty() {
        return f64::NAN;
    }
    let mut sorted = latencies_us.to_vec();
    sorted.sort_unstable();
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    f64::from(sorted[rank.min(sorted.len() - 1)]) / 1000.0
}

/// Drives `requests` at `addr` for `duration` with `connections` workers;
/// at most `rate` requests per second in total when given (each worker keeps
/// its own schedule, so latency is measured from the scheduled send time and
/// a slow answer shows as latency, not as a missed send).
pub async fn drive(
    addr: SocketAddr,
    requests: Arc<Vec<Prepared>>,
    connections: usize,
    duration: Duration,
    rate: Option<f64>,
) -> LoadResult {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let deadline = started + duration;
    let mut workers = Vec::with_capacity(connections);
    for worker in 0..connections {
        let requests = requests.clone();
        let next = next.clone();
        let interval = rate.map(|r| Duration::from_secs_f64(connections as f64 / r));
        // Spread the workers' schedules over one interval.
        let offset = interval.map(|i| i.mul_f64(worker as f64 / connections as f64)).unwrap_or_default();
        workers.push(tokio::spawn(async move {
            let mut result = LoadResult::default();
            let Ok(stream) = tokio::net::TcpStream::connect(addr).await else {
                result.failed += 1;
                return result;
            };
            let _ = stream.set_nodelay(true);
            let Ok((mut sender, connection)) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await else {
                result.failed += 1;
                return result;
            };
            tokio::spawn(connection);
            let mut scheduled = Instant::now() + offset;
            loop {
                if interval.is_some() {
                    tokio::time::sleep_until(scheduled.into()).await;
                }
                let send_at = if interval.is_some() { scheduled } else { Instant::now() };
                if send_at >= deadline {
                    break;
                }
                let prepared = &requests[next.fetch_add(1, Ordering::Relaxed) % requests.len()];
                let mut builder = Request::builder().method(prepared.method.clone()).uri(&prepared.path);
                builder = builder.header("host", "bench");
                for (name, value) in &prepared.headers {
                    builder = builder.header(*name, value);
                }
                let Ok(request) = builder.body(Full::new(prepared.body.clone())) else {
                    result.failed += 1;
                    break;
                };
                if sender.ready().await.is_err() {
                    result.failed += 1;
                    break;
                }
                match sender.send_request(request).await {
                    Ok(response) => {
                        let status = response.status();
                        let _ = response.into_body().collect().await;
                        if status.is_success() {
                            result.ok += 1;
                            result.latencies_us.push(send_at.elapsed().as_micros().min(u32::MAX as u128) as u32);
                        } else {
                            result.failed += 1;
                            *result.failed_statuses.entry(status.as_u16()).or_default() += 1;
                        }
                    }
                    Err(_) => {
                        result.failed += 1;
                        break;
                    }
                }
                if let Some(interval) = interval {
                    scheduled += interval;
                }
            }
            result
        }));
    }
    let mut total = LoadResult::default();
    for worker in workers {
        if let Ok(result) = worker.await {
            total.ok += result.ok;
            total.failed += result.failed;
            for (status, count) in result.failed_statuses {
                *total.failed_statuses.entry(status).or_default() += count;
            }
            total.latencies_us.extend(result.latencies_us);
        }
    }
    total.elapsed = started.elapsed().min(duration);
    total
}

//! A TCP proxy in front of Postgres that a test can take down and bring
//! back: connections through it fail as they do when Postgres stops (reset,
//! then refused), without stopping the Postgres other tests share.

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;

use sqlx::postgres::PgConnectOptions;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The proxy; stops when dropped.
pub struct PgProxy {
    addr: SocketAddr,
    up: Arc<watch::Sender<bool>>,
    task: JoinHandle<()>,
}

impl PgProxy {
    /// Proxies to the host and port of `url`, up.
    pub async fn start(url: &str) -> Self {
        let options = PgConnectOptions::from_str(url).expect("a Postgres URL");
        let target = format!("{}:{}", options.get_host(), options.get_port());
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy listener");
        let addr = listener.local_addr().expect("proxy address");
        let (up, _) = watch::channel(true);
        let up = Arc::new(up);
        let accepting = up.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if !*accepting.borrow() {
                    // Down: the connection is dropped at once.
                    continue;
                }
                let target = target.clone();
                let mut state = accepting.subscribe();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(&target).await else { return };
                    let (mut client, mut server) = (client, server);
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = state.wait_for(|up| !*up) => {}
                    }
                });
            }
        });
        Self { addr, up, task }
    }

    /// `url` pointed at the proxy instead.
    pub fn url_for(&self, url: &str) -> String {
        let (scheme, rest) = url.split_once("://").expect("a URL");
        let (credentials, after_at) = rest.rsplit_once('@').map_or(("", rest), |(c, r)| (c, r));
        let path = after_at.find('/').map_or("", |i| &after_at[i..]);
        let at = if credentials.is_empty() { String::new() } else { format!("{credentials}@") };
        format!("{scheme}://{at}{}{path}", self.addr)
    }

    /// Takes the proxy down (every connection cut, new ones dropped) or
    /// brings it back.
    pub fn set_up(&self, up: bool) {
        self.up.send_replace(up);
    }
}

impl Drop for PgProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

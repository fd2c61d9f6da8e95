//! A real headless Chromium driven over WebDriver: Debian's `chromium` and
//! `chromium-driver` (installed by `make services`, `deploy/services.sh
//! up`), one `chromedriver` per test on a port of its own, killed when the
//! test ends.

use std::net::TcpListener;
use std::process::Stdio;
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};
use tokio::process::{Child, Command};

/// How long an element or a text may take to appear (the page waits for
/// the API, and the machine is shared).
pub const WAIT: Duration = Duration::from_secs(30);

/// A browser session and the chromedriver behind it.
pub struct Browser {
    /// The WebDriver session.
    pub client: Client,
    _driver: Child,
}

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

impl Browser {
    /// Starts chromedriver and a headless Chromium with a 1280x800 viewport.
    pub async fn start() -> Self {
        for program in [CHROMEDRIVER, CHROMIUM] {
            assert!(
                std::path::Path::new(program).exists(),
                "{program} is missing: `make services` (deploy/services.sh up) installs chromium and chromium-driver"
            );
        }
        let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("starting chromedriver");
        let capabilities = json!({
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                // Root needs --no-sandbox; /dev/shm is small in containers.
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1280,800", "--hide-scrollbars", "--lang=en-US"]
            }
        });
        let Value::Object(capabilities) = capabilities else { unreachable!("an object literal") };
        let started = Instant::now();
        let client = loop {
            let mut builder = ClientBuilder::new(HttpConnector::new());
            match builder.capabilities(capabilities.clone()).connect(&format!("http://127.0.0.1:{port}")).await {
                Ok(client) => break client,
                // chromedriver is still starting.
                Err(_) if started.elapsed() < WAIT => tokio::time::sleep(Duration::from_millis(200)).await,
                Err(err) => panic!("no WebDriver session after {WAIT:?}: {err}"),
            }
        };
        let browser = Self { client, _driver: driver };
        browser.resize(1280, 800).await;
        browser
    }

    /// Goes to `url`.
    pub async fn goto(&self, url: &str) {
        self.client.goto(url).await.unwrap_or_else(|err| panic!("loading {url}: {err}"));
    }

    /// The element with this `data-testid`, once it is there.
    pub async fn wait_for(&self, testid: &str) -> fantoccini::elements::Element {
        self.client
            .wait()
            .at_most(WAIT)
            .for_element(Locator::Css(&format!("[data-testid={testid}]")))
            .await
            .unwrap_or_else(|err| panic!("no [data-testid={testid}] within {WAIT:?}: {err}"))
    }

    /// Waits until the element with this `data-testid` shows `expected`
    /// (whitespace trimmed); panics with what it showed otherwise.
    pub async fn wait_for_text(&self, testid: &str, expected: &str) {
        let started = Instant::now();
        let mut last = String::from("(absent)");
        while started.elapsed() < WAIT {
            if let Some(text) = self.text(testid).await {
                if text == expected {
                    return;
                }
                last = text;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("[data-testid={testid}] shows {last:?}, expected {expected:?}");
    }

    /// Waits until the element with this `data-testid` contains `part`.
    pub async fn wait_for_text_containing(&self, testid: &str, part: &str) -> String {
        let started = Instant::now();
        let mut last = String::from("(absent)");
        while started.elapsed() < WAIT {
            if let Some(text) = self.text(testid).await {
                if text.contains(part) {
                    return text;
                }
                last = text;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("[data-testid={testid}] shows {last:?}, expected it to contain {part:?}");
    }

    /// The trimmed text of the first element with this `data-testid`, if any.
    pub async fn text(&self, testid: &str) -> Option<String> {
        let element = self.client.find(Locator::Css(&format!("[data-testid={testid}]"))).await.ok()?;
        element.text().await.ok().map(|t| t.trim().to_owned())
    }

    /// The texts of every element with this `data-testid`.
    pub async fn texts(&self, testid: &str) -> Vec<String> {
        let elements = self.client.find_all(Locator::Css(&format!("[data-testid={testid}]"))).await.unwrap_or_default();
        let mut texts = Vec::with_capacity(elements.len());
        for element in elements {
            texts.push(element.text().await.map(|t| t.trim().to_owned()).unwrap_or_default());
        }
        texts
    }

    /// Waits until there are `n` elements with this `data-testid`.
    pub async fn wait_for_count(&self, testid: &str, n: usize) {
        let started = Instant::now();
        let mut last = 0;
        while started.elapsed() < WAIT {
            last = self.client.find_all(Locator::Css(&format!("[data-testid={testid}]"))).await.map_or(0, |e| e.len());
            if last == n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{last} [data-testid={testid}], expected {n}");
    }

    /// Types into the field with this `data-testid` (after clearing it).
    pub async fn type_into(&self, testid: &str, text: &str) {
        let field = self.wait_for(testid).await;
        field.clear().await.expect("clearing a field");
        field.send_keys(text).await.expect("typing");
    }

    /// Clicks the element with this `data-testid`.
    pub async fn click(&self, testid: &str) {
        self.wait_for(testid).await.click().await.unwrap_or_else(|err| panic!("clicking {testid}: {err}"));
    }

    /// Runs `script` in the page and returns its value.
    pub async fn eval(&self, script: &str) -> Value {
        self.client.execute(script, vec![]).await.unwrap_or_else(|err| panic!("{script}: {err}"))
    }

    /// Makes the page's viewport `width` x `height` CSS pixels: the window
    /// is resized, then grown by whatever the browser's frame takes.
    pub async fn resize(&self, width: u32, height: u32) {
        self.client.set_window_size(width, height).await.expect("resizing");
        let inner = self.eval("return [window.innerWidth, window.innerHeight];").await;
        let size = |i: usize| inner[i].as_u64().and_then(|v| u32::try_from(v).ok()).unwrap_or(0);
        let (extra_width, extra_height) = (width.saturating_sub(size(0)), height.saturating_sub(size(1)));
        if extra_width > 0 || extra_height > 0 {
            self.client.set_window_size(width + extra_width, height + extra_height).await.expect("resizing");
        }
    }

    /// Saves a screenshot as `<dir>/<name>.png` when
    /// `CONNECTFLOW_CONSOLE_SCREENSHOTS=<dir>` is set (how docs/console/ is
    /// refreshed); nothing otherwise.
    pub async fn screenshot(&self, name: &str) {
        let Ok(dir) = std::env::var("CONNECTFLOW_CONSOLE_SCREENSHOTS") else { return };
        let png = self.client.screenshot().await.expect("a screenshot");
        std::fs::create_dir_all(&dir).expect("the screenshot directory");
        std::fs::write(format!("{dir}/{name}.png"), png).expect("writing a screenshot");
    }

    /// Ends the session (the driver is killed when dropped).
    pub async fn close(self) {
        let _ = self.client.close().await;
    }
}

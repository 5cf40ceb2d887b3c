//! A real browser for the studio's tests: headless Chromium driven through
//! chromedriver with the W3C WebDriver protocol (JSON over HTTP, the few
//! commands the tests use). Chromedriver runs in a process group of its
//! own, which is killed with everything in it when the `Browser` drops.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

/// WebDriver's key for an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

pub struct Browser {
    driver: Child,
    base: String,
    session: String,
    http: reqwest::Client,
    _profile: tempfile::TempDir,
}

/// An element of the current page.
#[derive(Debug, Clone)]
pub struct Element(String);

impl Browser {
    /// Starts chromedriver and a headless Chromium (a fresh profile; the
    /// control plane's self-signed certificate accepted).
    pub async fn start() -> anyhow::Result<Browser> {
        for program in ["chromedriver", "chromium"] {
            if !crate::on_path(program) {
                bail!(
                    "{program} is missing: run `cargo xtask setup` (it installs Debian's chromium and chromium-driver)"
                );
            }
        }
        // One rustls provider in the build (ring); reqwest needs it set.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::new();
        // The prefix marks the test's processes for `cargo xtask ci`'s
        // leftovers check (and nobody else's browser).
        let profile = tempfile::Builder::new()
            .prefix("strato-e2e-browser-")
            .tempdir()?;
        let port = crate::free_port();
        let mut command = Command::new("chromedriver");
        command
            .arg(format!("--port={port}"))
            .arg(format!(
                "--log-path={}",
                profile.path().join("chromedriver.log").display()
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        {
            use std::os::unix::process::CommandExt as _;
            command.process_group(0);
        }
        let driver = command.spawn().context("chromedriver")?;
        let base = format!("http://127.0.0.1:{port}");
        // From here the Browser owns chromedriver: dropping it (also on an
        // error below) kills its process group.
        let mut browser = Browser {
            driver,
            base,
            session: String::new(),
            http,
            _profile: profile,
        };
        let status_url = format!("{}/status", browser.base);
        crate::wait_for("chromedriver", Duration::from_secs(30), || {
            let http = browser.http.clone();
            let url = status_url.clone();
            async move {
                let ready = http
                    .get(&url)
                    .send()
                    .await
                    .ok()?
                    .json::<Value>()
                    .await
                    .ok()?;
                ready["value"]["ready"].as_bool().filter(|r| *r)
            }
        })
        .await;
        let capabilities = json!({
            "capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "acceptInsecureCerts": true,
                "goog:chromeOptions": {
                    "binary": "/usr/bin/chromium",
                    "args": [
                        "--headless=new", "--no-sandbox", "--disable-gpu",
                        "--disable-dev-shm-usage", "--window-size=1280,900",
                        format!("--user-data-dir={}", browser._profile.path().display()),
                    ],
                },
            }}
        });
        let created = browser.call("POST", "/session", Some(capabilities)).await?;
        browser.session = created["sessionId"]
            .as_str()
            .context("no session id")?
            .to_owned();
        Ok(browser)
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        let request = match method {
            "GET" => self.http.get(&url),
            "DELETE" => self.http.delete(&url),
            _ => self
                .http
                .post(&url)
                .json(&body.unwrap_or_else(|| json!({}))),
        };
        let answer: Value = request.send().await?.json().await?;
        if let Some(error) = answer["value"]["error"].as_str() {
            bail!(
                "webdriver {method} {path}: {error}: {}",
                answer["value"]["message"].as_str().unwrap_or_default()
            );
        }
        Ok(answer["value"].clone())
    }

    fn at(&self, path: &str) -> String {
        format!("/session/{}{path}", self.session)
    }

    /// Opens `url`. A page Chromium shows for a failed load (its
    /// `chrome-error://` page: a connection refused, reset or closed
    /// before an answer) is loaded again once, as a user would reload,
    /// and said on stderr; a second failure is an error naming Chromium's.
    pub async fn goto(&self, url: &str) -> anyhow::Result<()> {
        self.navigate(url).await?;
        let Some(failure) = self.load_failure().await? else {
            return Ok(());
        };
        eprintln!("browser: Chromium could not load {url} ({failure}); loading it again");
        self.navigate(url).await?;
        match self.load_failure().await? {
            None => Ok(()),
            Some(again) => bail!("Chromium could not load {url}, twice: {failure}; then {again}"),
        }
    }

    async fn navigate(&self, url: &str) -> anyhow::Result<()> {
        self.call("POST", &self.at("/url"), Some(json!({"url": url})))
            .await
            .map(drop)
    }

    /// Chromium's own error page's text, when the current page is one.
    async fn load_failure(&self) -> anyhow::Result<Option<String>> {
        let page = self.shown().await?;
        Ok(page.uri.starts_with("chrome-error:").then_some(page.text))
    }

    /// What the current page says, for an error: its title and the start
    /// of its text.
    async fn what_is_shown(&self) -> String {
        match self.shown().await {
            Ok(Shown { uri, title, text }) => format!("{uri} (title {title:?}): {text}"),
            Err(e) => format!("(unreadable: {e})"),
        }
    }

    /// The current page's document URI, title and the start of its text.
    async fn shown(&self) -> anyhow::Result<Shown> {
        let page = self
            .run(
                "return [document.documentURI, document.title, document.body ? document.body.innerText : ''];",
                json!([]),
            )
            .await?;
        let field = |i: usize| page[i].as_str().unwrap_or_default().to_owned();
        Ok(Shown {
            uri: field(0),
            title: field(1),
            text: one_line(&field(2), 300),
        })
    }

    pub async fn url(&self) -> anyhow::Result<String> {
        Ok(self
            .call("GET", &self.at("/url"), None)
            .await?
            .as_str()
            .unwrap_or_default()
            .to_owned())
    }

    pub async fn source(&self) -> anyhow::Result<String> {
        Ok(self
            .call("GET", &self.at("/source"), None)
            .await?
            .as_str()
            .unwrap_or_default()
            .to_owned())
    }

    /// The elements `css` selects now (none is not an error).
    pub async fn all(&self, css: &str) -> anyhow::Result<Vec<Element>> {
        let found = self
            .call(
                "POST",
                &self.at("/elements"),
                Some(json!({"using": "css selector", "value": css})),
            )
            .await?;
        Ok(found
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|e| e[ELEMENT].as_str().map(|id| Element(id.to_owned())))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// The first element `css` selects, waiting up to 10 s for it.
    pub async fn find(&self, css: &str) -> anyhow::Result<Element> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(e) = self.all(css).await?.into_iter().next() {
                return Ok(e);
            }
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "no element {css:?} on {}; the page shows {}",
                    self.url().await?,
                    self.what_is_shown().await
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn click(&self, e: &Element) -> anyhow::Result<()> {
        self.call("POST", &self.at(&format!("/element/{}/click", e.0)), None)
            .await
            .map(drop)
    }

    /// Replaces a field's text.
    pub async fn fill(&self, e: &Element, text: &str) -> anyhow::Result<()> {
        self.call("POST", &self.at(&format!("/element/{}/clear", e.0)), None)
            .await?;
        self.call(
            "POST",
            &self.at(&format!("/element/{}/value", e.0)),
            Some(json!({"text": text})),
        )
        .await
        .map(drop)
    }

    pub async fn text(&self, e: &Element) -> anyhow::Result<String> {
        Ok(self
            .call("GET", &self.at(&format!("/element/{}/text", e.0)), None)
            .await?
            .as_str()
            .unwrap_or_default()
            .to_owned())
    }

    /// Runs `script` in the page (a returned promise is awaited) with
    /// `args`; its result.
    pub async fn run(&self, script: &str, args: Value) -> anyhow::Result<Value> {
        self.call(
            "POST",
            &self.at("/execute/sync"),
            Some(json!({"script": script, "args": args})),
        )
        .await
    }

    /// The browser's cookies for the current page, as WebDriver lists them.
    pub async fn cookies(&self) -> anyhow::Result<Vec<Value>> {
        Ok(self
            .call("GET", &self.at("/cookie"), None)
            .await?
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    pub async fn resize(&self, width: u32, height: u32) -> anyhow::Result<()> {
        self.call(
            "POST",
            &self.at("/window/rect"),
            Some(json!({"width": width, "height": height})),
        )
        .await
        .map(drop)
    }

    /// A PNG of the window, written to `path`.
    pub async fn screenshot(&self, path: &Path) -> anyhow::Result<()> {
        use base64::Engine as _;
        let png = self.call("GET", &self.at("/screenshot"), None).await?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap_or_default())
            .context("screenshot")?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, bytes)?;
        Ok(())
    }

    /// Waits up to `timeout` until the page's text (`body`) contains
    /// `needle`, reloading it every half second when `reload`.
    pub async fn wait_for_text(
        &self,
        needle: &str,
        reload: bool,
        timeout: Duration,
    ) -> anyhow::Result<String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if reload {
                let url = self.url().await?;
                self.goto(&url).await?;
            }
            // A page still loading may swap its body under the read: read
            // again.
            let text = match self.find("body").await {
                Ok(body) => self.text(&body).await.unwrap_or_default(),
                Err(_) => String::new(),
            };
            if text.contains(needle) {
                return Ok(text);
            }
            if tokio::time::Instant::now() > deadline {
                bail!("{needle:?} never showed on {}: {text}", self.url().await?);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// What a page shows (`Browser::shown`).
struct Shown {
    uri: String,
    title: String,
    text: String,
}

/// `text` on one line, at most `most` characters of it.
fn one_line(text: &str, most: usize) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .take(most)
        .collect()
}

/// Where the tests put the studio's screenshots (`target/studio-screenshots`).
pub fn screenshots_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("target")
        .join("studio-screenshots")
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ends the session (chromedriver closes Chromium), then the whole
        // group, so that no browser outlives a failed test.
        if !self.session.is_empty() {
            let url = format!("{}/session/{}", self.base, self.session);
            let _ = std::thread::spawn(move || {
                let _ = Command::new("curl")
                    .args(["-s", "-m", "5", "-X", "DELETE", &url])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            })
            .join();
        }
        let group = self.driver.id();
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{group}")])
            .stderr(Stdio::null())
            .status();
        let _ = self.driver.wait();
    }
}

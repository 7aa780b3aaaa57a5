//! The HTML report in a real headless Chromium: the report of an honest run shows the verdict
//! and draws the timeline; the report of a run against a server that loses acknowledged
//! writes shows the violation, names the key, and outlines the operations involved. Chromium
//! comes from Debian's `chromium` package (scripts/test.sh installs it); without it the test
//! skips with a message, and fails under `CI=true`.

mod common;

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::{Arc, Mutex},
};

use async_trait::async_trait;
use kvcore::{
    ServerOptions,
    storage::{MemoryStorage, Storage, StorageError, Versioned, Write, Written},
};
use rand::{Rng, SeedableRng, rngs::StdRng};

/// The browser to test with (the first on PATH), or `None` to skip.
fn chromium() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Some(candidate);
            }
        }
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("chromium not installed: run scripts/test.sh, which installs it");
    }
    eprintln!(
        "skipping: chromium not installed (apt-get install chromium, or run scripts/test.sh)"
    );
    None
}

/// The page's DOM after its scripts ran.
fn rendered(browser: &Path, page: &Path) -> String {
    let out = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--dump-dom",
        ])
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("running chromium");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 DOM")
}

fn chaos(target: &str, html: &Path) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_kvctl"))
        .args([
            "chaos",
            "--target",
            target,
            "--duration",
            "2",
            "--seed",
            "5",
        ])
        .arg("--html")
        .arg(html)
        .output()
        .expect("kvctl chaos");
    (
        out.status.code().expect("exited"),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Acknowledges 2% of updates without applying them.
struct LosesWrites {
    inner: MemoryStorage,
    rng: Mutex<StdRng>,
}

#[async_trait]
impl Storage for LosesWrites {
    async fn get(&self, key: &str) -> Result<Versioned, StorageError> {
        self.inner.get(key).await
    }
    async fn put(&self, write: Write) -> Result<Written, StorageError> {
        if write.expected_version > 0 && self.rng.lock().unwrap().random_bool(0.02) {
            return Ok(Written {
                version: write.expected_version + 1,
                replayed: false,
            });
        }
        self.inner.put(write).await
    }
    async fn entries(&self) -> Result<Vec<(String, Versioned)>, StorageError> {
        self.inner.entries().await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_render_in_chromium() {
    let Some(browser) = chromium() else { return };
    let dir = tempfile::tempdir().expect("temp dir");

    // An honest run: the verdict, and a timeline with bars drawn by the script.
    let (mut honest, addr) = common::spawn_kv_server(&[]);
    let page = dir.path().join("honest.html");
    let (code, out) = tokio::task::spawn_blocking({
        let page = page.clone();
        move || chaos(&addr, &page)
    })
    .await
    .expect("kvctl");
    assert_eq!(code, 0, "{out}");
    let _ = honest.kill();
    let _ = honest.wait();
    let dom = tokio::task::spawn_blocking({
        let (browser, page) = (browser.clone(), page.clone());
        move || rendered(&browser, &page)
    })
    .await
    .expect("chromium");
    assert!(
        dom.contains(r#"<h1 id="verdict" class="pass">linearizable: yes"#),
        "{dom}"
    );
    assert!(dom.contains("--seed 5"), "the replay command");
    let bars = dom.matches(r#"class="op""#).count();
    assert!(bars > 50, "the script drew {bars} bars");
    assert!(
        dom.contains("operations of chaos-5-"),
        "the notice names the key"
    );
    assert!(
        dom.contains(r#"<circle class="fault""#),
        "answers lost to faults and recovered are marked"
    );
    assert!(!dom.contains("Violations"));

    // A server that loses writes: the violation, its key, and its operations outlined.
    let storage = Arc::new(LosesWrites {
        inner: MemoryStorage::new(),
        rng: Mutex::new(StdRng::seed_from_u64(3)),
    });
    let server = common::start_server_opts(storage, ServerOptions::default()).await;
    let page = dir.path().join("broken.html");
    let (code, out) = tokio::task::spawn_blocking({
        let (addr, page) = (server.addr.to_string(), page.clone());
        move || chaos(&addr, &page)
    })
    .await
    .expect("kvctl");
    assert_eq!(code, 1, "{out}");
    server.stop().await;
    // KV_REPORT_SCREENSHOT=docs/chaos-report.png regenerates the README's picture.
    if let Ok(shot) = std::env::var("KV_REPORT_SCREENSHOT") {
        let status = Command::new(&browser)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
            ])
            .arg("--window-size=1150,1000")
            .arg(format!("--screenshot={shot}"))
            .arg(format!("file://{}", page.display()))
            .status()
            .expect("chromium");
        assert!(status.success());
    }
    let dom = tokio::task::spawn_blocking(move || rendered(&browser, &page))
        .await
        .expect("chromium");
    assert!(dom.contains(r#"class="fail">VIOLATION"#), "{dom}");
    let start = dom
        .find(r#"<li class="violation" data-key=""#)
        .expect("a violation item");
    let key: String = dom[start + 32..]
        .chars()
        .take_while(|c| *c != '"')
        .collect();
    assert!(key.starts_with("chaos-5-"), "{key}");
    assert!(
        dom.contains(&format!("<b>key {key}</b>")),
        "the key is named"
    );
    assert!(
        dom.contains(r#"class="op violation""#),
        "its operations are outlined"
    );
    assert!(dom.contains(r#"class="window""#), "its window is shaded");
    assert!(
        dom.contains(&format!("operations of {key} in this window")),
        "the timeline shows the violating key"
    );
}

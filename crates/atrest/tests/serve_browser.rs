//! The whole Storage > Encryption story in a real browser (Debian's chromium driven through
//! chromedriver over WebDriver), against a PyKMIP server of the test's own:
//!
//! log in; fill the form (hosts, CA and PKCS#12 uploads, passphrase, credentials); Save and
//! Test; see Encrypt enabled; Encrypt; watch progress reach 100%; restart; see it unlocked; stop
//! the KMIP server; restart; see "locked" and why; start the KMIP server; see the page unlock by
//! itself. Afterwards no copy of the key is in the data directory, the volume or the logs.
//!
//! Needs: chromium and chromedriver (PATH, or ATREST_CHROMIUM / ATREST_CHROMEDRIVER), and the
//! PyKMIP kit (ATREST_PYKMIP_KIT: the folder with its `start` and `stop`). The PyKMIP server
//! runs on a free loopback port with its state in ATREST_BROWSER_PYKMIP_STATE (kept between
//! runs so that its Python environment is made once) or a temporary folder. Without them the
//! test is skipped with a note, unless ATREST_REQUIRE_PEERS=1.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use atrest_testkit::process::{
    Served, appliance_port, free_port, serve_command, spawn, spawn_until_logging,
};
use serde_json::{Value, json};

fn skip(why: &str) {
    if atrest_testkit::require_peers() {
        panic!("ATREST_REQUIRE_PEERS=1 but {why}");
    }
    eprintln!("note: skipping the browser test: {why}");
}

/// A program from the environment variable `var`, else the first of `names` on PATH.
fn program(var: &str, names: &[&str]) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(var) {
        return Some(PathBuf::from(p)).filter(|p| p.is_file());
    }
    let path = std::env::var_os("PATH")?;
    for dir in std::env::split_paths(&path) {
        for n in names {
            let p = dir.join(n);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

/// Waits (generously) until `f` gives a value.
fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() > limit {
            panic!("gave up waiting until {what}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

// ---- the PyKMIP server of this test ----

struct Pykmip {
    kit: PathBuf,
    state: PathBuf,
    port: u16,
    env: atrest_testkit::Peer,
}

/// Runs the kit's `start`; returns the server its env file describes.
fn launch(kit: &Path, state: &Path, port: u16) -> atrest_testkit::Peer {
    let out = Command::new(kit.join("start"))
        .arg(state)
        .env("PYKMIP_PORT", port.to_string())
        .env("PYKMIP_LOG_LEVEL", "INFO")
        .stderr(Stdio::inherit())
        .output()
        .expect("the PyKMIP kit's start runs");
    assert!(out.status.success(), "the PyKMIP server did not start");
    let env_file = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    atrest_testkit::Peer::from_file(Path::new(&env_file))
}

impl Pykmip {
    fn start(kit: &Path, state: &Path, port: u16) -> Pykmip {
        let env = launch(kit, state, port);
        Pykmip {
            kit: kit.to_path_buf(),
            state: state.to_path_buf(),
            port,
            env,
        }
    }
    fn var(&self, k: &str) -> String {
        self.env.v(k).to_owned()
    }
    fn stop(&self) {
        let ok = Command::new(self.kit.join("stop"))
            .arg(&self.state)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .status()
            .unwrap()
            .success();
        assert!(ok, "the PyKMIP server did not stop");
    }
    fn restart(&self) {
        launch(&self.kit, &self.state, self.port);
    }
    /// The key's bytes, fetched with the atrest KMIP client.
    fn key(&self, uid: &str) -> Vec<u8> {
        use atrest_kmip::client::{
            Client, ClientConfig, DEFAULT_MAX_RESPONSE_LEN, Identity, ServerAddr, Timeouts,
        };
        let read = |k: &str| std::fs::read(self.var(k)).unwrap();
        let mut c = Client::new(ClientConfig {
            servers: vec![ServerAddr {
                host: self.var("KMIP_HOST"),
                port: self.port,
            }],
            server_name: Some(self.var("KMIP_SERVER_NAME")),
            ca_pem: read("KMIP_CA"),
            identity: Identity::Pem {
                cert_chain: read("KMIP_CLIENT_CERT"),
                key: zeroize::Zeroizing::new(read("KMIP_CLIENT_KEY")),
                passphrase: None,
            },
            username: None,
            password: None,
            version: None,
            timeouts: Timeouts::uniform(Duration::from_secs(10)),
            max_response_len: DEFAULT_MAX_RESPONSE_LEN,
        })
        .unwrap();
        c.get_key(uid).unwrap().material.to_vec()
    }
}

impl Drop for Pykmip {
    fn drop(&mut self) {
        let _ = Command::new(self.kit.join("stop"))
            .arg(&self.state)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

// ---- the appliance ----

struct Appliance {
    _served: Served,
    url: String,
}

/// `atrest serve` logging at debug level, its stdout and stderr in `logs`/runN.out and .err.
fn start_appliance(data: &Path, logs: &Path, run: u32) -> Appliance {
    let err = logs.join(format!("run{run}.err"));
    let (served, port) = spawn_until_logging(
        serve_command(env!("CARGO_BIN_EXE_atrest"), data)
            .args([
                "--volume-size",
                "64M",
                "--unlock-retry-max",
                "2",
                "--kmip-timeout",
                "5",
                // Slow enough to watch the progress on the page: 48 MiB of data at 4 MiB/s.
                "--convert-chunk",
                "1M",
                "--convert-rate",
                "4M",
            ])
            .env("RUST_LOG", "debug")
            .stderr(std::fs::File::create(&err).unwrap()),
        &logs.join(format!("run{run}.out")),
        appliance_port,
    );
    Appliance {
        _served: served,
        url: format!("https://127.0.0.1:{port}"),
    }
}

// ---- WebDriver over plain HTTP ----

struct Driver {
    _served: Served,
    port: u16,
}

fn http(port: u16, method: &str, path: &str, body: Option<&Value>) -> Value {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let body = body.map(|v| v.to_string()).unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    // Read the head, then exactly Content-Length bytes (the driver may keep the connection).
    let mut raw = Vec::new();
    let mut buf = [0u8; 16384];
    let head_end = loop {
        if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut buf).unwrap();
        assert!(
            n > 0,
            "chromedriver closed the connection without an answer"
        );
        raw.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0);
    while raw.len() < head_end + len {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "chromedriver closed the connection mid-answer");
        raw.extend_from_slice(&buf[..n]);
    }
    serde_json::from_slice(&raw[head_end..head_end + len]).unwrap_or(Value::Null)
}

impl Driver {
    fn start(chromedriver: &Path, logs: &Path) -> Driver {
        let port = free_port();
        let served = spawn(
            Command::new(chromedriver)
                .arg(format!("--port={port}"))
                .stdout(std::fs::File::create(logs.join("chromedriver.log")).unwrap())
                .stderr(Stdio::null()),
        );
        let d = Driver {
            _served: served,
            port,
        };
        wait_for("chromedriver is ready", Duration::from_secs(30), || {
            TcpStream::connect(("127.0.0.1", port)).ok()?;
            (http(port, "GET", "/status", None)["value"]["ready"] == true).then_some(())
        });
        d
    }

    fn session(&self, chromium: &Path, profile: &Path) -> Browser<'_> {
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "acceptInsecureCerts": true,
            "goog:chromeOptions": {
                "binary": chromium.to_string_lossy(),
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--ignore-certificate-errors",
                    format!("--user-data-dir={}", profile.display()),
                ]
            }
        }}});
        let v = http(self.port, "POST", "/session", Some(&caps));
        let id = v["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {v}"))
            .to_owned();
        Browser { driver: self, id }
    }
}

struct Browser<'a> {
    driver: &'a Driver,
    id: String,
}

impl Drop for Browser<'_> {
    fn drop(&mut self) {
        http(
            self.driver.port,
            "DELETE",
            &format!("/session/{}", self.id),
            None,
        );
    }
}

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

impl Browser<'_> {
    fn cmd(&self, method: &str, path: &str, body: Value) -> Value {
        let v = http(
            self.driver.port,
            method,
            &format!("/session/{}{path}", self.id),
            (method == "POST").then_some(&body),
        );
        if let Some(e) = v["value"]["error"].as_str() {
            panic!("WebDriver {method} {path}: {e}: {}", v["value"]["message"]);
        }
        v["value"].clone()
    }
    fn go(&self, url: &str) {
        self.cmd("POST", "/url", json!({ "url": url }));
    }
    fn find(&self, css: &str) -> String {
        let v = self.cmd(
            "POST",
            "/element",
            json!({"using": "css selector", "value": css}),
        );
        v[ELEMENT].as_str().unwrap().to_owned()
    }
    fn type_into(&self, css: &str, text: &str) {
        let e = self.find(css);
        self.cmd("POST", &format!("/element/{e}/clear"), json!({}));
        self.cmd(
            "POST",
            &format!("/element/{e}/value"),
            json!({ "text": text }),
        );
    }
    fn upload(&self, css: &str, file: &str) {
        let e = self.find(css);
        self.cmd(
            "POST",
            &format!("/element/{e}/value"),
            json!({ "text": file }),
        );
    }
    fn click(&self, css: &str) {
        let e = self.find(css);
        self.cmd("POST", &format!("/element/{e}/click"), json!({}));
    }
    /// Runs `script` in the page; errors while the page reloads count as null.
    fn js(&self, script: &str) -> Value {
        let v = http(
            self.driver.port,
            "POST",
            &format!("/session/{}/execute/sync", self.id),
            Some(&json!({"script": script, "args": []})),
        );
        if v["value"]["error"].is_string() {
            return Value::Null;
        }
        v["value"].clone()
    }
    fn text(&self, id: &str) -> Option<String> {
        self.js(&format!(
            "const e = document.getElementById('{id}'); return e ? e.textContent : null;"
        ))
        .as_str()
        .map(str::to_owned)
    }
    fn log_in(&self, url: &str, password: &str) {
        self.go(&format!("{url}/login"));
        self.type_into("#password", password);
        self.click("#login");
        wait_for(
            "the encryption page is shown",
            Duration::from_secs(30),
            || self.text("state"),
        );
    }
    fn wait_state(&self, want: &str, limit: Duration) {
        let mut last = String::new();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            wait_for(&format!("the page shows state {want}"), limit, || {
                let s = self.text("state")?;
                last = s.clone();
                (s == want).then_some(())
            })
        }));
        if r.is_err() {
            panic!(
                "the page never showed state {want:?} (last: {last:?}); page text: {}",
                self.js("return document.body ? document.body.innerText : ''")
            );
        }
    }
}

fn no_copy_of(key: &[u8], files: &[PathBuf]) {
    let hex = hex::encode(key);
    let b64 = openssl::base64::encode_block(key);
    for f in files {
        let bytes = std::fs::read(f).unwrap();
        for half in [key, &key[..key.len() / 2], &key[key.len() / 2..]] {
            assert!(
                !bytes.windows(half.len()).any(|w| w == half),
                "{} holds key bytes",
                f.display()
            );
        }
        let text = String::from_utf8_lossy(&bytes).to_ascii_lowercase();
        assert!(!text.contains(&hex), "{} holds the key in hex", f.display());
        assert!(
            !String::from_utf8_lossy(&bytes).contains(&b64),
            "{} holds the key in base64",
            f.display()
        );
    }
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files_under(&p, out);
        } else {
            out.push(p);
        }
    }
}

#[test]
fn encryption_story_in_a_real_browser() {
    let Some(chromium) = program("ATREST_CHROMIUM", &["chromium", "chromium-browser"]) else {
        return skip("chromium is not installed (apt-get install chromium chromium-driver)");
    };
    let Some(chromedriver) = program("ATREST_CHROMEDRIVER", &["chromedriver"]) else {
        return skip("chromedriver is not installed (apt-get install chromium-driver)");
    };
    let Some(kit) = std::env::var_os("ATREST_PYKMIP_KIT").map(PathBuf::from) else {
        return skip("ATREST_PYKMIP_KIT (the PyKMIP kit folder) is not set; scripts/test sets it");
    };
    let tmp = tempfile::tempdir().unwrap();
    let state = std::env::var_os("ATREST_BROWSER_PYKMIP_STATE")
        .map(PathBuf::from)
        .unwrap_or_else(|| tmp.path().join("pykmip"));
    let kms = Pykmip::start(&kit, &state, free_port());
    let data = tmp.path().join("appliance");
    let logs = tmp.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let driver = Driver::start(&chromedriver, &logs);
    let browser = driver.session(&chromium, &tmp.path().join("profile"));

    // First start: log in with the generated password.
    let app = start_appliance(&data, &logs, 1);
    let password = std::fs::read_to_string(data.join("initial-admin-password"))
        .unwrap()
        .trim()
        .to_owned();
    browser.log_in(&app.url, &password);
    assert_eq!(browser.text("state").as_deref(), Some("plain"));
    assert_eq!(
        browser.js("return document.getElementById('encrypt').disabled"),
        true
    );

    // Fill in the form and Save and Test.
    browser.type_into("#hosts", &format!("127.0.0.1:{}", kms.port));
    browser.type_into("#server_name", &kms.var("KMIP_SERVER_NAME"));
    browser.upload("#ca", &kms.var("KMIP_CA"));
    browser.upload("#client_cert", &kms.var("KMIP_CLIENT_P12"));
    browser.type_into("#passphrase", &kms.var("KMIP_CLIENT_P12_PASSPHRASE"));
    browser.type_into("#kmip-username", &kms.var("KMIP_USERNAME"));
    browser.type_into("#kmip-password", &kms.var("KMIP_PASSWORD"));
    browser.click("#save-test");
    let summary = wait_for("the test result is shown", Duration::from_secs(120), || {
        let t = browser.text("test-summary")?;
        (browser.js("const b = document.getElementById('encrypt'); return !!b && !b.disabled")
            == true
            || t.starts_with("Failed"))
        .then_some(t)
    });
    assert!(summary.starts_with("Passed"), "{summary}");
    let steps = browser.js("return document.querySelectorAll('tr[data-step] td.ok').length");
    assert_eq!(steps, 10, "every step of the test is shown as OK");

    // Encrypt, and watch the progress reach 100%.
    browser.click("#encrypt");
    let mut seen = Vec::new();
    wait_for("the encryption finished", Duration::from_secs(300), || {
        if browser.text("state").as_deref() == Some("encrypting")
            && let Some(t) = browser.text("progress-text").filter(|t| !t.is_empty())
            && seen.last() != Some(&t)
        {
            seen.push(t);
        }
        browser
            .text("last-conversion")
            .filter(|t| t.contains("100%"))
    });
    // The page followed the conversion: percent, amounts, rate and time left.
    assert!(!seen.is_empty(), "no progress was shown while encrypting");
    assert!(
        seen.iter()
            .any(|t| t.contains("% — ") && t.contains("MiB/s") && t.contains("left")),
        "{seen:?}"
    );
    browser.wait_state("encrypted", Duration::from_secs(30));
    let key_id = browser.text("key-id").unwrap();
    assert!(!key_id.is_empty() && key_id != "—");
    assert!(browser.text("cipher").unwrap().contains("aes-xts-plain64"));
    eprintln!("progress shown while encrypting: {seen:?}");

    // Restart: unlocked by itself with the key from the KMIP server.
    drop(app);
    let app = start_appliance(&data, &logs, 2);
    browser.log_in(&app.url, &password);
    browser.wait_state("encrypted", Duration::from_secs(60));
    assert_eq!(browser.text("key-id").as_deref(), Some(key_id.as_str()));

    // The disk grows while the appliance runs (a VM disk extended): the page offers Grow, and
    // Grow gives the content store the new space, encrypted like the rest.
    assert_eq!(browser.text("grow-box"), None, "nothing to grow yet");
    let space_before = browser.text("volume-space").unwrap();
    let img = data.join("volume.img");
    let len = std::fs::metadata(&img).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&img)
        .unwrap()
        .set_len(len + (16 << 20))
        .unwrap();
    browser.go(&format!("{}/storage/encryption", app.url));
    let offer = wait_for("the page offers Grow", Duration::from_secs(30), || {
        browser.text("grow-box")
    });
    assert!(offer.contains("16.0 MiB more"), "{offer}");
    browser.click("#grow");
    let space_after = wait_for(
        "the page shows the grown volume",
        Duration::from_secs(30),
        || {
            browser
                .text("volume-space")
                .filter(|t| t.contains(" used of 64.0 MiB") && browser.text("grow-box").is_none())
        },
    );
    assert!(space_before.contains(" used of 48.0 MiB"), "{space_before}");
    eprintln!("volume space before Grow: {space_before}; after: {space_after}");
    browser.wait_state("encrypted", Duration::from_secs(10));

    // No KMIP server: the restarted appliance is locked and says why.
    drop(app);
    kms.stop();
    let app = start_appliance(&data, &logs, 3);
    browser.log_in(&app.url, &password);
    browser.wait_state("locked", Duration::from_secs(30));
    let reasons = wait_for("the lock reason is shown", Duration::from_secs(60), || {
        browser.text("lock-reasons").filter(|t| !t.is_empty())
    });
    assert!(
        reasons.contains(&format!("127.0.0.1:{}", kms.port)) && reasons.contains("refused"),
        "{reasons}"
    );
    // The KMIP server is back: the page unlocks by itself (no reload by the test).
    kms.restart();
    browser.wait_state("encrypted", Duration::from_secs(120));
    drop(app);

    // No copy of the key in the data directory, the volume or the logs.
    let key = kms.key(&key_id);
    assert_eq!(key.len(), 32);
    let mut files = Vec::new();
    files_under(&data, &mut files);
    files_under(&logs, &mut files);
    assert!(files.iter().any(|f| f.ends_with("volume.img")));
    no_copy_of(&key, &files);
}

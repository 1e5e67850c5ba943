//! The web admin's pages, rendered on the server (readable without JavaScript); a small script
//! sends the forms to the JSON API with the CSRF token and follows progress.

use axum::Extension;
use axum::extract::State;
use axum::response::Html;
use serde_json::Value;

use crate::api::status_json;
use crate::auth::Authenticated;
use crate::kmip_test::StepStatus;
use crate::state::AppState;

/// Escapes text for HTML content and attribute values.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

const STYLE: &str = r#"<style>
body{font-family:system-ui,sans-serif;margin:0;background:#f4f5f7;color:#1d2330}
header{background:#1d2330;color:#fff;padding:.8em 1.5em;display:flex;justify-content:space-between;align-items:center}
header form{margin:0} main{max-width:60em;margin:1.5em auto;padding:0 1em}
section{background:#fff;border-radius:6px;padding:1em 1.5em;margin-bottom:1.2em;box-shadow:0 1px 2px #0002}
label{display:block;margin:.6em 0 .2em;font-weight:600} input[type=text],input[type=password],input[type=number]{width:100%;padding:.4em;box-sizing:border-box}
.hint{color:#5b6478;font-size:.9em} .error{color:#a4161a;font-weight:600} .warn{color:#8a5a00;font-weight:600}
.ok{color:#1b7a35} .failed{color:#a4161a} .warning{color:#8a5a00} .skipped{color:#888}
table{border-collapse:collapse;width:100%} td,th{text-align:left;padding:.3em .5em;border-bottom:1px solid #e3e5ea;vertical-align:top}
button{padding:.5em 1.2em;font-size:1em;cursor:pointer} button:disabled{cursor:not-allowed;opacity:.5}
progress{width:100%;height:1.4em}
</style>"#;

fn page(title: &str, csrf: Option<&str>, body: &str) -> Html<String> {
    let meta = csrf
        .map(|c| format!(r#"<meta name="csrf-token" content="{}">"#, esc(c)))
        .unwrap_or_default();
    Html(format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width\">{meta}<title>{} — atrest</title>{STYLE}</head>\
         <body>{body}</body></html>",
        esc(title)
    ))
}

/// The login page, with an error line when a login failed.
pub fn login_html(error: Option<&str>) -> Html<String> {
    let err = error
        .map(|e| format!(r#"<p class="error" id="login-error">{}</p>"#, esc(e)))
        .unwrap_or_default();
    page(
        "Log in",
        None,
        &format!(
            r#"<header><strong>atrest appliance</strong></header><main><section>
<h1>Log in</h1>{err}
<form method="post" action="/login" id="login-form">
<label for="username">Username</label><input type="text" id="username" name="username" value="admin" autocomplete="username" required>
<label for="password">Password</label><input type="password" id="password" name="password" autocomplete="current-password" required autofocus>
<p><button type="submit" id="login">Log in</button></p>
<p class="hint">On the first start the appliance prints the admin password and keeps it in
DIR/initial-admin-password until you change it.</p>
</form></section></main>"#
        ),
    )
}

pub async fn login_page() -> Html<String> {
    login_html(None)
}

pub fn not_found() -> Html<String> {
    page(
        "Not found",
        None,
        r#"<main><section><h1>Not found</h1><p>No such page. Go to <a href="/storage/encryption">Storage &gt; Encryption</a>.</p></section></main>"#,
    )
}

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or("")
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64)
}

/// "42.0% — 10.0 MiB of 24.0 MiB, 180.3 MiB/s, about 1 s left".
fn progress_text(p: &Value) -> String {
    let mut t = format!(
        "{:.1}% — {} of {}",
        p["percent"].as_f64().unwrap_or(0.0),
        mib(p["done_bytes"].as_u64().unwrap_or(0)),
        mib(p["total_bytes"].as_u64().unwrap_or(0))
    );
    if let Some(r) = p["bytes_per_second"].as_f64() {
        t += &format!(", {:.1} MiB/s", r / (1u64 << 20) as f64);
    }
    if let Some(e) = p["eta_seconds"].as_u64() {
        t += &format!(", about {e} s left");
    }
    t
}

fn status_section(st: &Value) -> String {
    let state = s(st, "state");
    let mut o = String::from(r#"<section id="status"><h2>Status</h2><table>"#);
    o += &format!(
        r#"<tr><th>State</th><td id="state">{}</td></tr>"#,
        esc(state)
    );
    let key = s(st, "key_id");
    o += &format!(
        r#"<tr><th>Key id</th><td id="key-id">{}</td></tr>"#,
        if key.is_empty() {
            "—".into()
        } else {
            esc(key)
        }
    );
    let servers: Vec<String> = st["servers"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).map(esc).collect())
        .unwrap_or_default();
    o += &format!(
        r#"<tr><th>KMIP servers</th><td id="servers">{}</td></tr>"#,
        if servers.is_empty() {
            "—".into()
        } else {
            servers.join(", ")
        }
    );
    let cipher = s(st, "cipher");
    o += &format!(
        r#"<tr><th>Cipher</th><td id="cipher">{}</td></tr>"#,
        if cipher.is_empty() {
            "—".into()
        } else {
            esc(cipher)
        }
    );
    o += "</table>";
    let p = &st["progress"];
    let (pct, text) = if p.is_object() {
        (p["percent"].as_f64().unwrap_or(0.0), progress_text(p))
    } else {
        (0.0, String::new())
    };
    let hidden = if p.is_object() { "" } else { " hidden" };
    o += &format!(
        r#"<div id="progress-box"{hidden}><label for="progress">Progress</label><progress id="progress" max="100" value="{pct:.1}"></progress> <span id="progress-text">{}</span></div>"#,
        esc(&text)
    );
    let vol = &st["volume"];
    let last = &vol["last_conversion"];
    if last.is_object() && !p.is_object() {
        o += &format!(
            r#"<p id="last-conversion" class="ok">{} finished: 100% of {} in {:.1} s ({}).</p>"#,
            esc(match s(last, "kind") {
                "encrypting" => "Encryption",
                "rekeying" => "Rekey",
                "decrypting" => "Decryption",
                _ => "Conversion",
            }),
            mib(last["bytes"].as_u64().unwrap_or(0)),
            last["seconds"].as_f64().unwrap_or(0.0),
            esc(s(last, "finished_at"))
        );
    }
    for a in vol["alerts"].as_array().into_iter().flatten() {
        o += &format!(
            r#"<p class="error alert">Alert: {}</p>"#,
            esc(a.as_str().unwrap_or(""))
        );
    }
    if st["volume_attached"] == Value::Bool(false) {
        o += r#"<p class="hint" id="no-volume">No content volume is attached to this appliance.</p>"#;
    } else if let Some(sp) = vol["space"].as_object() {
        o += &format!(
            r#"<p class="hint" id="volume-space">Content volume: {} used of {}.</p>"#,
            mib(sp.get("used").and_then(Value::as_u64).unwrap_or(0)),
            mib(sp.get("capacity").and_then(Value::as_u64).unwrap_or(0))
        );
    }
    if let Some(reasons) = st["lock_reasons"].as_array().filter(|a| !a.is_empty()) {
        let next = s(&st["volume"], "next_retry_at");
        o += &format!(
            r#"<p class="error" id="locked">Locked: the volume key could not be fetched, so the content is not available. The appliance retries by itself{}.</p><ul id="lock-reasons">"#,
            if next.is_empty() {
                String::new()
            } else {
                format!(" (next attempt {})", esc(next))
            }
        );
        for r in reasons {
            o += &format!(
                "<li><strong>{}</strong>: {}</li>",
                esc(s(r, "server")),
                esc(s(r, "reason"))
            );
        }
        o += "</ul>";
    }
    let err = s(st, "last_error");
    if !err.is_empty() {
        o += &format!(r#"<p class="error" id="last-error">{}</p>"#, esc(err));
    }
    if let Some(ws) = st["warnings"].as_array() {
        for w in ws.iter().filter_map(Value::as_str) {
            o += &format!(r#"<p class="warn">Warning: {}</p>"#, esc(w));
        }
    }
    o += "</section>";
    o
}

fn test_section(st: &Value) -> String {
    let t = &st["last_test"];
    let mut o = String::from(r#"<section id="last-test"><h2>Last test</h2>"#);
    if !t.is_object() {
        o += "<p>The settings have not been tested yet.</p></section>";
        return o;
    }
    let ok = t["ok"].as_bool().unwrap_or(false);
    let current = st["last_test_current"].as_bool().unwrap_or(false);
    o += &format!(
        r#"<p id="test-summary" class="{}">{} — {}{}</p>"#,
        if ok { "ok" } else { "failed" },
        if ok { "Passed" } else { "Failed" },
        esc(s(t, "summary")),
        esc(&format!(" (tested {})", s(t, "tested_at")))
    );
    if !current {
        o += r#"<p class="warn">The settings changed since this test: press Save and Test Changes.</p>"#;
    }
    for srv in t["servers"].as_array().into_iter().flatten() {
        o += &format!(
            r#"<h3>{}</h3><table class="steps"><tr><th>Step</th><th>Result</th><th>Detail</th></tr>"#,
            esc(s(srv, "server"))
        );
        for step in srv["steps"].as_array().into_iter().flatten() {
            let status = s(step, "status");
            let label = match serde_json::from_value::<StepStatus>(step["status"].clone()) {
                Ok(StepStatus::Ok) => "OK",
                Ok(StepStatus::Warning) => "Warning",
                Ok(StepStatus::Failed) => "Failed",
                _ => "Skipped",
            };
            o += &format!(
                r#"<tr data-step="{}"><td>{}</td><td class="{}">{}</td><td>{}</td></tr>"#,
                esc(s(step, "name")),
                esc(s(step, "title")),
                esc(status),
                label,
                esc(s(step, "detail"))
            );
        }
        o += "</table>";
    }
    o += "</section>";
    o
}

fn settings_section(st: &Value) -> String {
    let k = &st["settings"];
    let servers: Vec<String> = k["servers"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| format!("{}:{}", s["host"].as_str().unwrap_or(""), s["port"]))
                .collect()
        })
        .unwrap_or_default();
    let cert_line = |c: &Value| {
        if c.is_object() {
            format!(
                r#"<span class="hint">Saved: {} — valid until {}{}</span>"#,
                esc(s(c, "subject")),
                esc(s(c, "not_after")),
                c["days_left"]
                    .as_i64()
                    .map(|d| format!(" ({d} days left)"))
                    .unwrap_or_default()
            )
        } else {
            String::new()
        }
    };
    let kept = |set: bool| {
        if set {
            r#" placeholder="saved — leave empty to keep""#
        } else {
            ""
        }
    };
    format!(
        r#"<section id="settings"><h2>KMIP settings</h2>
<form id="kmip-form" method="post" enctype="multipart/form-data" action="/api/encryption/kmip">
<label for="hosts">KMIP server hostname(s)</label>
<input type="text" id="hosts" name="hosts" value="{hosts}" placeholder="kmip1.example.com, kmip2.example.com" required>
<span class="hint">Several servers, separated by commas, are tried in order (failover). HOST:PORT overrides the port.</span>
<label for="port">Port</label><input type="number" id="port" name="port" min="1" max="65535" value="{port}">
<label for="server_name">Name in the server certificate (optional)</label>
<input type="text" id="server_name" name="server_name" value="{server_name}" placeholder="when it differs from the host name">
<label for="ca">Server CA certificate (PEM or DER)</label><input type="file" id="ca" name="ca" accept=".pem,.crt,.cer,.der">{ca_line}
<label for="client_cert">Client certificate (PKCS#12, or PEM)</label><input type="file" id="client_cert" name="client_cert" accept=".p12,.pfx,.pem,.crt">{client_line}
<label for="client_key">Client private key (PEM, only with a PEM certificate without its key)</label><input type="file" id="client_key" name="client_key" accept=".pem,.key">
<label for="passphrase">Passphrase of the PKCS#12 file or the key</label><input type="password" id="passphrase" name="passphrase" autocomplete="off"{pp}>
<label for="username">KMIP username</label><input type="text" id="kmip-username" name="username" value="{username}" autocomplete="off">
<label for="kmip-password">KMIP password</label><input type="password" id="kmip-password" name="password" autocomplete="off"{pw}>
<p><button type="submit" id="save-test">Save and Test Changes</button></p>
</form></section>"#,
        hosts = esc(&servers.join(", ")),
        port = k["servers"][0]["port"].as_u64().unwrap_or(5696),
        server_name = esc(s(k, "server_name")),
        ca_line = cert_line(&k["ca"]),
        client_line = cert_line(&k["client_certificate"]),
        username = esc(s(k, "username")),
        pp = kept(k["passphrase_set"].as_bool().unwrap_or(false)),
        pw = kept(k["password_set"].as_bool().unwrap_or(false)),
    )
}

fn actions_section(st: &Value) -> String {
    let allowed = st["encrypt"]["allowed"].as_bool().unwrap_or(false);
    let reason = s(&st["encrypt"], "reason");
    let state = s(st, "state");
    let mut o = String::from(r#"<section id="actions"><h2>Encryption</h2>"#);
    if state == "plain" {
        o += &format!(
            r#"<p><button id="encrypt"{}>Encrypt</button></p>"#,
            if allowed { "" } else { " disabled" }
        );
        if !allowed {
            o += &format!(r#"<p class="hint" id="encrypt-reason">{}</p>"#, esc(reason));
        } else {
            o += r#"<p class="hint">Creates a key on the KMIP server and encrypts the data in place while the appliance keeps running.</p>"#;
        }
    } else if state == "encrypted" {
        o += r#"<p><button id="rekey">Rekey</button> <button id="decrypt">Decrypt</button></p>"#;
        o += r#"<p id="decrypt-confirm" hidden><label for="decrypt-password">Decrypting writes the content back without encryption. Enter the admin password to confirm:</label> <input type="password" id="decrypt-password" autocomplete="current-password"> <button id="decrypt-go">Decrypt now</button></p>"#;
    } else if state == "locked" && st["volume"]["hold"]["resume"].as_bool() == Some(true) {
        let pending = s(st, "pending");
        o += r#"<p class="error" id="hold">The volume's header failed its authentication: it was changed outside atrest, or written by an atrest without header authentication. Nothing was read or written. Resume only if you know where this header comes from: it is accepted as it is and signed again.</p>"#;
        o += r#"<p><button id="resume" data-url="/api/encryption/resume">Resume</button>"#;
        if pending == "decrypting" {
            o += r#" <label for="resume-password">The header asks to decrypt: admin password</label> <input type="password" id="resume-password" autocomplete="current-password">"#;
        }
        o += "</p>";
    } else {
        o += &format!("<p>The volume is {}.</p>", esc(state));
        let url = match state {
            "encrypting" => Some("/api/encryption/encrypt"),
            "rekeying" => Some("/api/encryption/rekey"),
            "decrypting" => Some("/api/encryption/decrypt"),
            _ => None,
        };
        if let Some(url) = url
            && !s(st, "last_error").is_empty()
        {
            o += &format!(
                r#"<p><button id="resume" data-url="{url}">Resume</button> <span class="hint">The conversion stopped on an error; fix its cause, then resume it where it stopped.</span></p>"#
            );
        }
    }
    o += "</section>";
    o
}

const SCRIPT: &str = r#"<script>
const csrf = document.querySelector('meta[name="csrf-token"]').content;
const msg = document.getElementById('message');
function say(text, cls) { msg.textContent = text; msg.className = cls || ''; }
async function call(method, url, body, json) {
  const headers = {'X-CSRF-Token': csrf};
  if (json) { headers['Content-Type'] = 'application/json'; body = JSON.stringify(body); }
  const r = await fetch(url, {method, headers, body, credentials: 'same-origin'});
  let j = null; try { j = await r.json(); } catch (e) {}
  return {ok: r.ok, status: r.status, body: j};
}
document.getElementById('kmip-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  document.getElementById('save-test').disabled = true;
  say('Saving the settings…');
  const r = await call('PUT', '/api/encryption/kmip', new FormData(e.target));
  if (!r.ok) { say((r.body && r.body.error) || ('saving failed: HTTP ' + r.status), 'error'); document.getElementById('save-test').disabled = false; return; }
  say('Saved. Testing every KMIP server step by step…');
  const t = await call('POST', '/api/encryption/test');
  if (!t.ok) { say((t.body && t.body.error) || ('the test failed: HTTP ' + t.status), 'error'); }
  location.reload();
});
const resume = document.getElementById('resume');
for (const [id, url] of [['encrypt', '/api/encryption/encrypt'], ['rekey', '/api/encryption/rekey'], ['decrypt', '/api/encryption/decrypt'], ['resume', resume && resume.dataset.url]]) {
  const b = document.getElementById(id);
  if (!b) continue;
  b.addEventListener('click', async () => {
    if (id === 'decrypt') { document.getElementById('decrypt-confirm').hidden = false; document.getElementById('decrypt-password').focus(); return; }
    b.disabled = true; say('Starting…');
    const pw = document.getElementById('resume-password');
    const r = pw ? await call('POST', url, {password: pw.value}, true) : await call('POST', url);
    if (!r.ok) { say((r.body && r.body.error) || ('HTTP ' + r.status), 'error'); b.disabled = false; return; }
    location.reload();
  });
}
const decryptGo = document.getElementById('decrypt-go');
if (decryptGo) decryptGo.addEventListener('click', async () => {
  decryptGo.disabled = true; say('Starting…');
  const r = await call('POST', '/api/encryption/decrypt', {password: document.getElementById('decrypt-password').value}, true);
  if (!r.ok) { say((r.body && r.body.error) || ('HTTP ' + r.status), 'error'); decryptGo.disabled = false; return; }
  location.reload();
});
document.getElementById('password-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  const f = new FormData(e.target);
  const r = await call('POST', '/api/account/password', {current_password: f.get('current_password'), new_password: f.get('new_password')}, true);
  if (!r.ok) { say((r.body && r.body.error) || ('HTTP ' + r.status), 'error'); return; }
  location.href = '/login';
});
const initial = document.getElementById('state').textContent;
if (['encrypting', 'rekeying', 'decrypting', 'locked'].includes(initial)) {
  setInterval(async () => {
    const r = await fetch('/api/encryption', {credentials: 'same-origin'});
    if (!r.ok) return;
    const st = await r.json();
    if (st.state !== initial) { location.reload(); return; }
    const lr = document.getElementById('lock-reasons');
    if (lr && st.lock_reasons) {
      lr.replaceChildren(...st.lock_reasons.map((r) => {
        const li = document.createElement('li'), b = document.createElement('strong');
        b.textContent = r.server; li.append(b, ': ' + r.reason); return li;
      }));
    }
    if (st.progress) {
      document.getElementById('progress-box').hidden = false;
      document.getElementById('progress').value = st.progress.percent;
      const p = st.progress, m = (b) => (b / 1048576).toFixed(1) + ' MiB';
      document.getElementById('progress-text').textContent = p.percent.toFixed(1) + '% — ' + m(p.done_bytes) + ' of ' + m(p.total_bytes) +
        (p.bytes_per_second != null ? ', ' + (p.bytes_per_second / 1048576).toFixed(1) + ' MiB/s' : '') +
        (p.eta_seconds != null ? ', about ' + p.eta_seconds + ' s left' : '');
    }
  }, 1000);
}
</script>"#;

/// Storage > Encryption.
pub async fn encryption_page(
    State(state): State<AppState>,
    Extension(session): Extension<Authenticated>,
) -> Html<String> {
    let st = status_json(&state);
    let initial = state.admin().is_initial();
    let csrf = esc(&session.csrf);
    let pw_note = if initial {
        r#"<p class="warn" id="initial-password">You are using the generated admin password: change it now.</p>"#
    } else {
        ""
    };
    let body = format!(
        r#"<header><strong>atrest appliance</strong><form method="post" action="/logout"><input type="hidden" name="csrf_token" value="{csrf}"><button type="submit" id="logout">Log out</button></form></header>
<main><h1>Storage &gt; Encryption</h1><p id="message" role="status"></p>
{status}{actions}{test}{settings}
<section id="account"><h2>Admin password</h2>{pw_note}
<form id="password-form"><label for="current_password">Current password</label><input type="password" id="current_password" name="current_password" autocomplete="current-password" required>
<label for="new_password">New password (at least {min} characters)</label><input type="password" id="new_password" name="new_password" autocomplete="new-password" minlength="{min}" required>
<p><button type="submit" id="change-password">Change password</button></p></form></section>
</main>{SCRIPT}"#,
        status = status_section(&st),
        actions = actions_section(&st),
        test = test_section(&st),
        settings = settings_section(&st),
        min = crate::auth::MIN_PASSWORD_LEN,
    );
    page("Storage > Encryption", Some(&session.csrf), &body)
}

//! The web admin's pages, rendered on the server from the typed status
//! ([`EncryptionStatus`], the same value GET /api/encryption answers) with askama templates
//! (`templates/`, HTML-escaped by default), readable without JavaScript. The style sheet and
//! the script are static assets (`assets/`), so the Content-Security-Policy allows no inline
//! code at all.

use askama::Template;
use axum::Extension;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};

use crate::auth::Authenticated;
use crate::state::AppState;
use crate::status::{EMBEDDED_KMS_WARNING, EncryptionStatus};

/// The style sheet, served at `/assets/admin.css`.
pub const ADMIN_CSS: &str = include_str!("../assets/admin.css");
/// The script, served at `/assets/admin.js`.
pub const ADMIN_JS: &str = include_str!("../assets/admin.js");

fn render(t: &impl Template) -> Html<String> {
    match t.render() {
        Ok(s) => Html(s),
        Err(e) => {
            tracing::error!("a page could not be rendered: {e}");
            Html("<!doctype html><title>atrest</title><p>The page could not be rendered; see the appliance's log.</p>".into())
        }
    }
}

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage<'a> {
    title: &'a str,
    csrf: Option<&'a str>,
    error: Option<&'a str>,
}

/// The login page, with an error line when a login failed.
pub fn login_html(error: Option<&str>) -> Html<String> {
    render(&LoginPage {
        title: "Log in",
        csrf: None,
        error,
    })
}

/// GET /login.
pub async fn login_page() -> Html<String> {
    login_html(None)
}

#[derive(Template)]
#[template(path = "not_found.html")]
struct NotFoundPage<'a> {
    title: &'a str,
    csrf: Option<&'a str>,
}

/// The page answered (404) for a path that is not a page.
pub fn not_found() -> Html<String> {
    render(&NotFoundPage {
        title: "Not found",
        csrf: None,
    })
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut res = (StatusCode::OK, body).into_response();
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Assets change only with the binary; the page itself is never cached.
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=300"),
    );
    res
}

/// GET /assets/admin.css.
pub async fn admin_css() -> Response {
    asset(ADMIN_CSS, "text/css; charset=utf-8")
}

/// GET /assets/admin.js.
pub async fn admin_js() -> Response {
    asset(ADMIN_JS, "text/javascript; charset=utf-8")
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64)
}

/// The content volume's space on the page: the store's, and the free space of the file system
/// under an image file (a sparse image can run out of it first).
fn space_text(sp: crate::status::SpaceView) -> String {
    match sp.filesystem_free {
        Some(free) => format!(
            "{} used of {}; {} free on the file system under it",
            mib(sp.used),
            mib(sp.capacity),
            mib(free)
        ),
        None => format!("{} used of {}", mib(sp.used), mib(sp.capacity)),
    }
}

/// The settings form's values.
struct SettingsForm {
    hosts: String,
    port: u16,
    server_name: String,
    username: String,
    ca: Option<String>,
    client: Option<String>,
    passphrase_set: bool,
    password_set: bool,
}

#[derive(Template)]
#[template(path = "encryption.html")]
struct EncryptionPage<'a> {
    title: &'a str,
    csrf: Option<&'a str>,
    session_csrf: &'a str,
    st: &'a EncryptionStatus,
    state: &'static str,
    pending: &'static str,
    progress_percent: String,
    progress_text: String,
    last_conversion: Option<String>,
    alerts: Vec<&'a str>,
    space: Option<String>,
    /// The disk grew by this much (text), and no conversion runs: the page offers Grow.
    growable: Option<String>,
    next_retry: Option<&'a str>,
    key_age: Option<String>,
    next_rotation: String,
    rotation_error: Option<&'a str>,
    other_warnings: Vec<&'a str>,
    hold_resumable: bool,
    resume_url: Option<&'static str>,
    form: SettingsForm,
    initial_password: bool,
    min_password: usize,
}

fn cert_line(c: &crate::kmip_config::CertSummary) -> String {
    format!(
        "{} — valid until {}{}",
        c.subject,
        c.not_after,
        c.days_left
            .map(|d| format!(" ({d} days left)"))
            .unwrap_or_default()
    )
}

/// Storage > Encryption.
pub async fn encryption_page(
    State(state): State<AppState>,
    Extension(session): Extension<Authenticated>,
) -> Html<String> {
    let st = EncryptionStatus::of(&state);
    let vol = st.volume.as_ref();
    let (progress_percent, progress_text) = match &st.progress {
        Some(p) => {
            let mut t = format!(
                "{:.1}% — {} of {}",
                p.percent,
                mib(p.done_bytes),
                mib(p.total_bytes)
            );
            if let Some(r) = p.bytes_per_second {
                t += &format!(", {:.1} MiB/s", r / (1u64 << 20) as f64);
            }
            if let Some(e) = p.eta_seconds {
                t += &format!(", about {e} s left");
            }
            (format!("{:.1}", p.percent), t)
        }
        None => ("0.0".into(), String::new()),
    };
    let last_conversion = vol
        .and_then(|v| v.last_conversion.as_ref())
        .filter(|_| st.progress.is_none())
        .map(|l| {
            format!(
                "{} finished: 100% of {} in {:.1} s ({}).",
                match l.kind.as_str() {
                    "encrypting" => "Encryption",
                    "rekeying" => "Rekey",
                    "decrypting" => "Decryption",
                    _ => "Conversion",
                },
                mib(l.bytes),
                l.seconds,
                l.finished_at
            )
        });
    let rotation = vol.and_then(|v| v.rotation.as_ref());
    let settings = st.settings.as_ref();
    let form = SettingsForm {
        hosts: settings
            .map(|k| {
                k.servers
                    .iter()
                    .map(|s| format!("{}:{}", s.host, s.port))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default(),
        port: settings
            .and_then(|k| k.servers.first())
            .map_or(5696, |s| s.port),
        server_name: settings
            .and_then(|k| k.server_name.clone())
            .unwrap_or_default(),
        username: settings
            .and_then(|k| k.username.clone())
            .unwrap_or_default(),
        ca: settings.and_then(|k| k.ca.as_ref()).map(cert_line),
        client: settings
            .and_then(|k| k.client_certificate.as_ref())
            .map(cert_line),
        passphrase_set: settings.is_some_and(|k| k.passphrase_set),
        password_set: settings.is_some_and(|k| k.password_set),
    };
    let state_name = st.state.as_str();
    let resume_url = match state_name {
        _ if st.last_error.is_none() => None,
        "encrypting" => Some("/api/encryption/encrypt"),
        "rekeying" => Some("/api/encryption/rekey"),
        "decrypting" => Some("/api/encryption/decrypt"),
        _ => None,
    };
    let page = EncryptionPage {
        title: "Storage > Encryption",
        csrf: Some(&session.csrf),
        session_csrf: &session.csrf,
        state: state_name,
        pending: st.pending.map_or("", |p| p.as_str()),
        progress_percent,
        progress_text,
        last_conversion,
        alerts: vol
            .map(|v| v.alerts.iter().map(String::as_str).collect())
            .unwrap_or_default(),
        space: vol.and_then(|v| v.space).map(space_text),
        growable: vol
            .and_then(|v| v.space)
            .filter(|sp| sp.growable > 0 && matches!(state_name, "plain" | "encrypted"))
            .map(|sp| mib(sp.growable)),
        next_retry: vol.and_then(|v| v.next_retry_at.as_deref()),
        key_age: rotation.and_then(|r| r.key_age_seconds).map(|s| {
            format!(
                "{}{}",
                age_text(s),
                rotation
                    .and_then(|r| r.key_created.as_deref())
                    .map(|c| format!(" (created {c})"))
                    .unwrap_or_default()
            )
        }),
        next_rotation: match rotation {
            Some(r) => match (&r.next_rotation_at, r.interval_seconds) {
                (Some(n), Some(i)) => format!("{n} (every {})", age_text(i)),
                _ => "never: scheduled rotation is off".into(),
            },
            None => "—".into(),
        },
        rotation_error: rotation.and_then(|r| r.last_error.as_deref()),
        other_warnings: st
            .warnings
            .iter()
            .map(String::as_str)
            .filter(|w| *w != EMBEDDED_KMS_WARNING)
            .collect(),
        hold_resumable: state_name == "locked"
            && vol.and_then(|v| v.hold.as_ref()).is_some_and(|h| h.resume),
        resume_url,
        form,
        initial_password: state.admin().is_initial(),
        min_password: crate::auth::MIN_PASSWORD_LEN,
        st: &st,
    };
    render(&page)
}

/// A duration for a person: days, hours, minutes or seconds.
fn age_text(secs: u64) -> String {
    match secs {
        s if s >= 2 * 86_400 => format!("{} days", s / 86_400),
        s if s >= 2 * 3600 => format!("{} hours", s / 3600),
        s if s >= 120 => format!("{} minutes", s / 60),
        s => format!("{s} s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::SpaceView;

    #[test]
    fn the_space_line_shows_the_file_system_free_space_of_an_image() {
        let sp = SpaceView {
            capacity: 1 << 30,
            used: 3 << 20,
            reserve: 16 << 20,
            filesystem_free: Some(48 << 20),
            growable: 0,
        };
        assert_eq!(
            space_text(sp),
            "3.0 MiB used of 1024.0 MiB; 48.0 MiB free on the file system under it"
        );
        let dev = SpaceView {
            filesystem_free: None,
            ..sp
        };
        assert_eq!(space_text(dev), "3.0 MiB used of 1024.0 MiB");
    }
}

//! "Save and Test Changes": every configured KMIP server, step by step — TCP connect, TLS
//! handshake, certificate checks, negotiated KMIP version, and a full life cycle on a
//! throw-away key (Create, Activate, Get, Get Attributes, Revoke, Destroy).
//!
//! Blocking (the KMIP client is synchronous): run it on a blocking thread.

use std::time::Duration;

use atrest_kmip::client::{Client, ClientError, ServerAddr, Timeouts};
use atrest_kmip::message::RevocationReasonCode;
use serde::{Deserialize, Serialize};

use crate::kmip_config::{CertSummary, EXPIRY_WARNING_DAYS, KmipSettings};

/// Outcome of one step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StepStatus {
    /// Passed.
    Ok,
    /// Passed, with something to act on soon (a certificate expiring).
    Warning,
    /// Failed: `detail` says why and what to do.
    Failed,
    /// Not tried because an earlier step failed.
    Skipped,
}

impl StepStatus {
    /// The name in the API (and the page's CSS class).
    pub fn as_str(self) -> &'static str {
        match self {
            StepStatus::Ok => "ok",
            StepStatus::Warning => "warning",
            StepStatus::Failed => "failed",
            StepStatus::Skipped => "skipped",
        }
    }

    /// What the page shows.
    pub fn label(self) -> &'static str {
        match self {
            StepStatus::Ok => "OK",
            StepStatus::Warning => "Warning",
            StepStatus::Failed => "Failed",
            StepStatus::Skipped => "Skipped",
        }
    }
}

/// One step of the test on one server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    /// Machine name: "tcp", "tls", "certificates", "kmip-version", "create", "activate",
    /// "get", "get-attributes", "revoke", "destroy".
    pub name: String,
    /// What the page shows.
    pub title: String,
    /// How the step ended.
    pub status: StepStatus,
    /// What happened, or what failed and what to do next.
    pub detail: String,
    /// The failure's class (see `ClientError::class`), when it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
}

/// The test of one server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerReport {
    /// The server tested (`host:port`).
    pub server: String,
    /// It passed every step.
    pub ok: bool,
    /// The steps in the order they ran (or would have).
    pub steps: Vec<Step>,
}

/// The whole test.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestReport {
    /// Every server passed every step.
    pub ok: bool,
    /// RFC 3339.
    pub tested_at: String,
    /// The fingerprint of the settings tested.
    pub fingerprint: String,
    /// One sentence: passed, or the first failure.
    pub summary: String,
    /// The test of each server, in the settings' order.
    pub servers: Vec<ServerReport>,
}

impl TestReport {
    /// The first failed step and its server.
    pub fn first_failure(&self) -> Option<(&str, &Step)> {
        self.servers.iter().find_map(|s| {
            s.steps
                .iter()
                .find(|st| st.status == StepStatus::Failed)
                .map(|st| (s.server.as_str(), st))
        })
    }
}

const STEPS: [(&str, &str); 10] = [
    ("tcp", "TCP connect"),
    ("tls", "TLS handshake"),
    ("certificates", "Certificates (chain, name, expiry)"),
    ("kmip-version", "KMIP version"),
    ("create", "Create a test key"),
    ("activate", "Activate"),
    ("get", "Get"),
    ("get-attributes", "Get Attributes"),
    ("revoke", "Revoke"),
    ("destroy", "Destroy"),
];

struct Steps(Vec<Step>);

impl Steps {
    fn new() -> Self {
        Steps(
            STEPS
                .iter()
                .map(|(n, t)| Step {
                    name: (*n).into(),
                    title: (*t).into(),
                    status: StepStatus::Skipped,
                    detail: "not tried: an earlier step failed".into(),
                    class: None,
                })
                .collect(),
        )
    }
    fn set(&mut self, name: &str, status: StepStatus, detail: impl Into<String>) {
        if let Some(s) = self.0.iter_mut().find(|s| s.name == name) {
            s.status = status;
            s.detail = detail.into();
            s.class = None;
        }
    }
    fn fail(&mut self, name: &str, e: &ClientError) {
        if let Some(s) = self.0.iter_mut().find(|s| s.name == name) {
            s.status = StepStatus::Failed;
            s.detail = e.to_string();
            s.class = Some(e.class().to_owned());
        }
    }
}

fn tcp_connect(server: &ServerAddr, timeout: Duration) -> Result<String, ClientError> {
    let (_, addr) =
        atrest_kmip::client::tcp_connect(server, timeout, std::time::Instant::now() + timeout)?;
    Ok(format!("connected to {server} ({addr})"))
}

fn cert_line(what: &str, days: Option<i32>, not_after: &str) -> (bool, String) {
    match days {
        Some(d) if d < 0 => (true, format!("the {what} expired on {not_after}; renew it")),
        Some(d) if d < EXPIRY_WARNING_DAYS => (
            true,
            format!("the {what} expires in {d} days ({not_after}); renew it soon"),
        ),
        Some(d) => (
            false,
            format!("{what} valid until {not_after} ({d} days left)"),
        ),
        None => (false, format!("{what} valid until {not_after}")),
    }
}

/// Tests one server.
pub fn test_server(
    settings: &KmipSettings,
    server: &ServerAddr,
    timeouts: Timeouts,
    ca: Option<&CertSummary>,
) -> ServerReport {
    let mut steps = Steps::new();
    let report = |steps: Steps| {
        let ok = steps
            .0
            .iter()
            .all(|s| matches!(s.status, StepStatus::Ok | StepStatus::Warning));
        ServerReport {
            server: server.to_string(),
            ok,
            steps: steps.0,
        }
    };
    match tcp_connect(server, timeouts.connect) {
        Ok(d) => steps.set("tcp", StepStatus::Ok, d),
        Err(e) => {
            steps.fail("tcp", &e);
            return report(steps);
        }
    }
    let mut client = match Client::new(settings.client_config_for(server, timeouts)) {
        Ok(c) => c,
        Err(e) => {
            steps.fail("tls", &e);
            return report(steps);
        }
    };
    let info = match client.connect() {
        Ok(i) => i,
        Err(e) => {
            let class = e.class();
            if class.starts_with("tls") || class == "closed" || class == "timeout" || class == "tcp"
            {
                steps.fail("tls", &e);
            } else {
                steps.set("tls", StepStatus::Ok, "TLS handshake completed");
                steps.set(
                    "certificates",
                    StepStatus::Ok,
                    "the server certificate chains to the configured CA and is valid for the \
                     server's name",
                );
                steps.fail("kmip-version", &e);
            }
            return report(steps);
        }
    };
    steps.set(
        "tls",
        StepStatus::Ok,
        format!("{}, cipher {}", info.tls_version, info.cipher),
    );
    crate::metrics::note_server_certificate(&server.to_string(), info.server_days_left);
    let mut warn = false;
    let mut lines = vec![format!(
        "server certificate `{}` chains to the configured CA and matches the server's name",
        info.server_subject
    )];
    for (what, days, not_after) in [
        (
            "server certificate",
            info.server_days_left,
            info.server_not_after.as_str(),
        ),
        (
            "client certificate",
            info.client_days_left,
            info.client_not_after.as_str(),
        ),
    ] {
        let (w, l) = cert_line(what, days, not_after);
        warn |= w;
        lines.push(l);
    }
    if let Some(ca) = ca {
        let (w, l) = cert_line("CA certificate", ca.days_left, &ca.not_after);
        warn |= w;
        lines.push(l);
    }
    steps.set(
        "certificates",
        if warn {
            StepStatus::Warning
        } else {
            StepStatus::Ok
        },
        lines.join("; "),
    );
    steps.set(
        "kmip-version",
        StepStatus::Ok,
        format!("KMIP {} negotiated", info.protocol_version),
    );
    let name = format!("atrest-connection-test-{}", crate::auth::random_hex(6));
    let uid = match client.create_aes_key(256, Some(&name)) {
        Ok(u) => u,
        Err(e) => {
            steps.fail("create", &e);
            return report(steps);
        }
    };
    steps.set(
        "create",
        StepStatus::Ok,
        format!("created the 256-bit AES test key {uid}"),
    );
    // From here on, a failure still tries to remove the test key.
    let cleanup = |client: &mut Client, steps: &mut Steps, from: &str| {
        let revoked = client
            .revoke(
                &uid,
                RevocationReasonCode::CESSATION_OF_OPERATION,
                Some("atrest connection test"),
            )
            .is_ok();
        let destroyed = client.destroy(&uid).is_ok();
        if !(revoked && destroyed)
            && let Some(s) = steps.0.iter_mut().find(|s| s.name == from)
        {
            s.detail.push_str(&format!(
                " (the test key {uid} may be left on the server; delete it there)"
            ));
        }
    };
    if let Err(e) = client.activate(&uid) {
        steps.fail("activate", &e);
        cleanup(&mut client, &mut steps, "activate");
        return report(steps);
    }
    steps.set("activate", StepStatus::Ok, format!("key {uid} is Active"));
    match client.get_key(&uid) {
        Ok(kb) if kb.material.len() == 32 => {
            steps.set(
                "get",
                StepStatus::Ok,
                "got 256 bits of key material (not kept)",
            );
        }
        Ok(kb) => {
            steps.set(
                "get",
                StepStatus::Failed,
                format!(
                    "the server returned {} bits of key material for a 256-bit key; check the \
                     server's key format settings (raw or transparent symmetric keys)",
                    kb.material.len() * 8
                ),
            );
            cleanup(&mut client, &mut steps, "get");
            return report(steps);
        }
        Err(e) => {
            steps.fail("get", &e);
            cleanup(&mut client, &mut steps, "get");
            return report(steps);
        }
    }
    match client.get_attributes(&uid, &["State", "Cryptographic Length"]) {
        Ok(a) => {
            let state = a
                .state()
                .map(|s| format!(", state {s}"))
                .unwrap_or_default();
            steps.set(
                "get-attributes",
                StepStatus::Ok,
                format!("read {} attributes of key {uid}{state}", a.0.len()),
            );
        }
        Err(e) => {
            steps.fail("get-attributes", &e);
            cleanup(&mut client, &mut steps, "get-attributes");
            return report(steps);
        }
    }
    if let Err(e) = client.revoke(
        &uid,
        RevocationReasonCode::CESSATION_OF_OPERATION,
        Some("atrest connection test"),
    ) {
        steps.fail("revoke", &e);
        let _ = client.destroy(&uid);
        return report(steps);
    }
    steps.set("revoke", StepStatus::Ok, format!("revoked key {uid}"));
    match client.destroy(&uid) {
        Ok(()) => steps.set("destroy", StepStatus::Ok, format!("destroyed key {uid}")),
        Err(e) => steps.fail("destroy", &e),
    }
    client.disconnect();
    report(steps)
}

/// Tests every configured server.
pub fn run(settings: &KmipSettings, timeouts: Timeouts) -> TestReport {
    let ca = settings.ca_summary();
    let servers: Vec<ServerReport> = settings
        .servers
        .iter()
        .map(|s| test_server(settings, s, timeouts, ca.as_ref()))
        .collect();
    let ok = !servers.is_empty() && servers.iter().all(|s| s.ok);
    let mut report = TestReport {
        ok,
        tested_at: crate::now_rfc3339(),
        fingerprint: settings.fingerprint(),
        summary: String::new(),
        servers,
    };
    report.summary = match report.first_failure() {
        None if ok => {
            let warned = report
                .servers
                .iter()
                .flat_map(|s| &s.steps)
                .any(|s| s.status == StepStatus::Warning);
            if warned {
                "every KMIP server passed every step, with warnings: see the certificates".into()
            } else {
                "every KMIP server passed every step".into()
            }
        }
        None => "no KMIP server was tested".into(),
        Some((server, step)) => format!("{server}: {} failed: {}", step.title, step.detail),
    };
    report
}

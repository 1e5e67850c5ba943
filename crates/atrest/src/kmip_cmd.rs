//! `atrest kmip …`: a KMIP client for administrators and scripts.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use atrest_kmip::client::Client;
use atrest_kmip::message::{Attributes, ObjectType, RevocationReasonCode, State};
use atrest_kmip::ttlv::Value;
use clap::{Args, Subcommand};
use serde_json::json;

use crate::kmip_flags::KmipFlags;

#[derive(Debug, Args)]
pub struct KmipArgs {
    #[command(flatten)]
    settings: KmipFlags,
    /// Machine-readable output (JSON on stdout).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: KmipCommand,
}

impl KmipArgs {
    /// Whether the command receives key material (Get).
    pub fn holds_keys(&self) -> bool {
        matches!(self.command, KmipCommand::Get { .. })
    }
}

#[derive(Debug, Subcommand)]
enum KmipCommand {
    /// Connect, negotiate the version (Discover Versions) and Query the server; exit 0 only if
    /// all of it works.
    Test,
    /// Query the server: supported operations, object types, vendor information.
    Query,
    /// Create an AES key and activate it; prints its Unique Identifier.
    Create {
        /// Key length in bits: 256 is the material of XTS-AES-128 (512 for XTS-AES-256, where
        /// the server allows it).
        #[arg(long, default_value_t = 256)]
        length: i32,
        /// A Name attribute for the key.
        #[arg(long)]
        name: Option<String>,
        /// Leave the key Pre-Active.
        #[arg(long)]
        no_activate: bool,
    },
    /// Get a key: prints its length; the material only with --hex or --out.
    Get {
        /// The key's Unique Identifier.
        id: String,
        /// Print the key material as hex on stdout.
        #[arg(long, conflicts_with = "out")]
        hex: bool,
        /// Write the raw key material to FILE (created with mode 0600).
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Show a key's attributes (state, algorithm, length, dates, names).
    Attributes {
        /// The key's Unique Identifier.
        id: String,
    },
    /// Find keys, by name and/or state.
    Locate {
        /// Only keys with this Name.
        #[arg(long)]
        name: Option<String>,
        /// Only keys in this state: pre-active, active, deactivated, compromised, destroyed.
        #[arg(long)]
        state: Option<String>,
    },
    /// Activate a Pre-Active key.
    Activate {
        /// The key's Unique Identifier.
        id: String,
    },
    /// Revoke a key (reason: cessation of operation, or --compromised).
    Revoke {
        /// The key's Unique Identifier.
        id: String,
        /// Revoke with reason Key Compromise.
        #[arg(long)]
        compromised: bool,
    },
    /// Revoke a key if it is Active, then Destroy it.
    Destroy {
        /// The key's Unique Identifier.
        id: String,
    },
}

fn parse_state(s: &str) -> anyhow::Result<State> {
    Ok(
        match s.to_ascii_lowercase().replace(['-', '_', ' '], "").as_str() {
            "preactive" => State::PRE_ACTIVE,
            "active" => State::ACTIVE,
            "deactivated" => State::DEACTIVATED,
            "compromised" => State::COMPROMISED,
            "destroyed" => State::DESTROYED,
            _ => anyhow::bail!(
                "unknown state `{s}`; use pre-active, active, deactivated, compromised or destroyed"
            ),
        },
    )
}

fn print(json_mode: bool, value: serde_json::Value, text: impl FnOnce() -> String) {
    if json_mode {
        println!("{value}");
    } else {
        println!("{}", text());
    }
}

fn value_json(v: &Value) -> serde_json::Value {
    match v {
        Value::Integer(i) => json!(i),
        Value::LongInteger(i) => json!(i),
        Value::Enumeration(e) => json!(e),
        Value::Boolean(b) => json!(b),
        Value::TextString(s) => json!(s),
        Value::DateTime(t) => json!(format_time(*t)),
        Value::Interval(i) => json!(i),
        Value::DateTimeExtended(t) => json!(t),
        Value::Structure(c) => serde_json::Value::Object(
            c.iter()
                .map(|i| (i.tag.to_string(), value_json(&i.value)))
                .collect(),
        ),
        // Never print byte strings: they may be key material.
        Value::ByteString(b) => json!(format!("<{} bytes>", b.len())),
        Value::BigInteger(b) => json!(format!("<{} bytes>", b.len())),
    }
}

fn format_time(t: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|d| {
            d.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| t.to_string())
}

fn attribute_text(name: &str, v: &Value) -> String {
    let enum_name = match (name, v) {
        (n, Value::Enumeration(e)) => atrest_kmip::enum_name(n, *e).map(str::to_owned),
        _ => None,
    };
    match (enum_name, v) {
        (Some(e), _) => e,
        (None, Value::DateTime(t)) => format_time(*t),
        (None, other) => match value_json(other) {
            serde_json::Value::String(s) => s,
            j => j.to_string(),
        },
    }
}

pub fn run(args: KmipArgs) -> anyhow::Result<()> {
    let config = args.settings.to_client_config()?;
    let mut client = Client::new(config)?;
    let j = args.json;
    match args.command {
        KmipCommand::Test | KmipCommand::Query => {
            let info = client.connect()?;
            // Negotiation already asked; a pinned version skipped it, so ask now.
            let versions = if info.server_versions.is_empty() {
                client.discover_versions().unwrap_or_default()
            } else {
                info.server_versions.clone()
            };
            let q = client.query()?;
            let test = matches!(args.command, KmipCommand::Test);
            let ops: Vec<String> = q.operations.iter().map(|o| o.to_string()).collect();
            let objs: Vec<String> = q.object_types.iter().map(|o| o.to_string()).collect();
            let value = json!({
                "ok": true,
                "server": info.server.to_string(),
                "tls_version": info.tls_version,
                "cipher": info.cipher,
                "server_certificate": {"subject": info.server_subject, "not_after": info.server_not_after, "days_left": info.server_days_left},
                "client_certificate": {"not_after": info.client_not_after, "days_left": info.client_days_left},
                "kmip_version": info.protocol_version.to_string(),
                "server_versions": versions.iter().map(|v| v.to_string()).collect::<Vec<_>>(),
                "vendor": q.vendor_identification,
                "operations": ops,
                "object_types": objs,
            });
            print(j, value, || {
                let mut s = String::new();
                if test {
                    s.push_str(&format!("OK: {} answers KMIP\n", info.server));
                }
                s.push_str(&format!(
                    "server:           {}\nTLS:              {} {}\nserver cert:      {} (expires {}{})\nKMIP version:     {} (server supports {})\nvendor:           {}\noperations:       {}\nobject types:     {}",
                    info.server,
                    info.tls_version,
                    info.cipher,
                    info.server_subject,
                    info.server_not_after,
                    info.server_days_left.map(|d| format!(", {d} days left")).unwrap_or_default(),
                    info.protocol_version,
                    if versions.is_empty() { "-".to_string() } else { versions.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(", ") },
                    q.vendor_identification.as_deref().unwrap_or("-"),
                    ops.join(", "),
                    objs.join(", "),
                ));
                s
            });
        }
        KmipCommand::Create {
            length,
            name,
            no_activate,
        } => {
            let uid = client.create_aes_key(length, name.as_deref())?;
            if !no_activate {
                client
                    .activate(&uid)
                    .with_context(|| format!("key {uid} was created but not activated"))?;
            }
            print(
                j,
                json!({"unique_identifier": uid, "length": length, "active": !no_activate}),
                || uid.clone(),
            );
        }
        KmipCommand::Get { id, hex, out } => {
            let kb = client.get_key(&id)?;
            let bits = kb.material.len() * 8;
            if let Some(path) = &out {
                write_secret_file(path, &kb.material)?;
            }
            if hex {
                let h = zeroize::Zeroizing::new(hex::encode(&*kb.material));
                if j {
                    println!(
                        "{}",
                        json!({"unique_identifier": id, "length": bits, "hex": h.as_str()})
                    );
                } else {
                    println!("{}", h.as_str());
                }
            } else {
                print(
                    j,
                    json!({"unique_identifier": id, "length": bits, "algorithm": kb.algorithm.map(|a| a.to_string()), "out": out}),
                    || {
                        format!(
                            "{id}: {bits}-bit {} key",
                            kb.algorithm.map(|a| a.to_string()).unwrap_or_default()
                        )
                    },
                );
            }
        }
        KmipCommand::Attributes { id } => {
            let attrs = client.get_attributes(&id, &[])?;
            let value = serde_json::Value::Object(
                attrs
                    .0
                    .iter()
                    .map(|a| (a.name.clone(), json!(attribute_text(&a.name, &a.value))))
                    .collect(),
            );
            print(j, value, || {
                attrs
                    .0
                    .iter()
                    .map(|a| {
                        format!(
                            "{:28}{}",
                            format!("{}:", a.name),
                            attribute_text(&a.name, &a.value)
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
        KmipCommand::Locate { name, state } => {
            let mut attrs = Attributes::new().with(
                "Object Type",
                Value::Enumeration(ObjectType::SYMMETRIC_KEY.0),
            );
            if let Some(n) = &name {
                attrs.push("Name", Attributes::name_value(n));
            }
            if let Some(s) = &state {
                attrs.push("State", Value::Enumeration(parse_state(s)?.0));
            }
            let ids = client.locate(attrs, None)?;
            print(j, json!({"unique_identifiers": ids}), || ids.join("\n"));
        }
        KmipCommand::Activate { id } => {
            client.activate(&id)?;
            print(
                j,
                json!({"unique_identifier": id, "state": "Active"}),
                || format!("{id}: activated"),
            );
        }
        KmipCommand::Revoke { id, compromised } => {
            let code = if compromised {
                RevocationReasonCode::KEY_COMPROMISE
            } else {
                RevocationReasonCode::CESSATION_OF_OPERATION
            };
            client.revoke(&id, code, None)?;
            print(j, json!({"unique_identifier": id, "revoked": true}), || {
                format!("{id}: revoked")
            });
        }
        KmipCommand::Destroy { id } => {
            let state = client
                .get_attributes(&id, &["State"])
                .ok()
                .and_then(|a| a.state());
            match state {
                Some(State::ACTIVE) => client
                    .revoke(&id, RevocationReasonCode::CESSATION_OF_OPERATION, None)
                    .with_context(|| format!("cannot revoke {id} before destroying it"))?,
                // State unknown: revoke in case it is Active; Destroy says what is wrong.
                None => {
                    let _ = client.revoke(&id, RevocationReasonCode::CESSATION_OF_OPERATION, None);
                }
                Some(_) => {}
            }
            client.destroy(&id)?;
            print(
                j,
                json!({"unique_identifier": id, "destroyed": true}),
                || format!("{id}: revoked and destroyed"),
            );
        }
    }
    client.disconnect();
    Ok(())
}

fn write_secret_file(path: &std::path::Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write the key to {}", path.display()))?;
    use std::os::unix::fs::PermissionsExt;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot make {} private (mode 0600)", path.display()))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .with_context(|| format!("cannot write the key to {}", path.display()))
}

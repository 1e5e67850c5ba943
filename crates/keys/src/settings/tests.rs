use std::time::Duration;

use atrest_kmip::client::{Identity, Timeouts};
use zeroize::Zeroizing;

use super::*;

const CERT_AND_KEY: &[u8] =
    b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n";
const CERT_ONLY: &[u8] = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
const PKCS12: &[u8] = &[0x30, 0x82, 0x01, 0x00, 0x02, 0x01, 0x03];

/// A directory with a CA, identities, secrets, an env file and a TOML file.
fn fixture() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let w = |name: &str, b: &[u8]| std::fs::write(d.path().join(name), b).unwrap();
    w(
        "ca.pem",
        b"-----BEGIN CERTIFICATE-----\nCA\n-----END CERTIFICATE-----\n",
    );
    w(
        "other-ca.pem",
        b"-----BEGIN CERTIFICATE-----\nOTHER\n-----END CERTIFICATE-----\n",
    );
    w("both.pem", CERT_AND_KEY);
    w("cert.pem", CERT_ONLY);
    w(
        "key.pem",
        b"-----BEGIN PRIVATE KEY-----\nK\n-----END PRIVATE KEY-----\n",
    );
    w("client.p12", PKCS12);
    w("pass", b"file-passphrase\n");
    w("password", b"file-password\r\n");
    let p = |name: &str| d.path().join(name).display().to_string();
    w(
        "client.env",
        format!(
            "export KMIP_HOST=127.0.0.1\nexport KMIP_PORT=15999\nexport KMIP_SERVER_NAME=localhost\n\
             export KMIP_CA='{}'\nexport KMIP_CLIENT_CERT='{}'\nexport KMIP_CLIENT_KEY='{}'\n\
             export KMIP_CLIENT_P12='{}'\nexport KMIP_CLIENT_P12_PASSPHRASE='env-file-passphrase'\n\
             export KMIP_USERNAME=appliance\nexport KMIP_PASSWORD='env-file-password'\n",
            p("ca.pem"),
            p("cert.pem"),
            p("key.pem"),
            p("client.p12")
        )
        .as_bytes(),
    );
    w(
        "kmip.toml",
        b"servers = [\"toml.example:6000\", \"toml2.example\"]\nca = \"other-ca.pem\"\n\
          username = \"toml-user\"\npassword_file = \"password\"\ntimeout = 5\n",
    );
    d
}

fn value(s: &str) -> Option<Secret> {
    Some(Secret::Value(Zeroizing::new(s.to_owned())))
}

fn expose(s: &Option<Zeroizing<String>>) -> Option<&str> {
    s.as_ref().map(|s| s.as_str())
}

#[test]
fn an_env_file_alone_gives_everything_with_its_pkcs12_identity() {
    let d = fixture();
    let s = Sources::env_file(&d.path().join("client.env"))
        .resolve()
        .unwrap();
    assert_eq!(s.servers, vec![parse_server("127.0.0.1:15999", 1).unwrap()]);
    assert_eq!(s.server_name.as_deref(), Some("localhost"));
    assert!(s.is_pkcs12());
    assert_eq!(s.client_cert, PKCS12);
    assert!(s.client_key.is_none());
    assert_eq!(expose(&s.passphrase), Some("env-file-passphrase"));
    assert_eq!(s.username.as_deref(), Some("appliance"));
    assert_eq!(expose(&s.password), Some("env-file-password"));
    assert_eq!(s.timeouts, Timeouts::default());
    assert!(matches!(s.identity(), Identity::Pkcs12 { .. }));
    let c = s.client_config();
    assert_eq!(c.password.unwrap().expose(), "env-file-password");
}

#[test]
fn an_env_file_without_pkcs12_gives_the_pem_pair() {
    let d = fixture();
    let env = d.path().join("pem.env");
    std::fs::write(
        &env,
        format!(
            "export KMIP_HOST=::1\nexport KMIP_PORT=7000\nexport KMIP_CA={}\n\
             export KMIP_CLIENT_CERT={}\nexport KMIP_CLIENT_KEY={}\nexport KMIP_PASSWORD=\n",
            d.path().join("ca.pem").display(),
            d.path().join("cert.pem").display(),
            d.path().join("key.pem").display()
        ),
    )
    .unwrap();
    let s = Sources::env_file(&env).resolve().unwrap();
    assert_eq!(s.servers[0].host, "::1");
    assert_eq!(s.servers[0].port, 7000);
    assert!(!s.is_pkcs12());
    assert!(s.client_key.is_some());
    assert!(s.passphrase.is_none());
    // An empty value is no value.
    assert!(s.password.is_none());
    assert!(matches!(
        s.identity(),
        Identity::Pem {
            passphrase: None,
            ..
        }
    ));
}

/// Flags over the TOML file over the env file over the environment over the fallback
/// servers, setting by setting.
#[test]
fn precedence_is_flags_then_toml_then_env_file_then_environment_then_fallback() {
    let d = fixture();
    let flags = Layer {
        client_cert: Some(d.path().join("both.pem")),
        passphrase: Some(Secret::File(d.path().join("pass"))),
        ..Layer::default()
    };
    let sources = Sources {
        flags: Some(flags),
        config_file: Some(d.path().join("kmip.toml")),
        env_file: Some(d.path().join("client.env")),
        environment: false,
        fallback_servers: vec!["header.example".into()],
    };
    let merged = sources.layer().unwrap().or(Layer {
        password: value("environment-password"),
        ..Layer::default()
    });
    let s = sources.resolve_layer(merged).unwrap();
    // TOML over env file and fallback; its relative paths are relative to it.
    assert_eq!(s.servers.len(), 2);
    assert_eq!(s.servers[0].to_string(), "toml.example:6000");
    assert_eq!(s.servers[1].to_string(), "toml2.example:5696");
    assert!(s.ca_pem.windows(5).any(|w| w == b"OTHER"));
    assert_eq!(s.username.as_deref(), Some("toml-user"));
    assert_eq!(expose(&s.password), Some("file-password"));
    assert_eq!(s.timeouts, Timeouts::uniform(Duration::from_secs(5)));
    // Flags over everything: the PEM file with its key inside, the passphrase file.
    assert!(!s.is_pkcs12());
    assert_eq!(s.client_cert, CERT_AND_KEY);
    assert_eq!(expose(&s.passphrase), Some("file-passphrase"));
    // The env file gives what nothing above it gives.
    assert_eq!(s.server_name.as_deref(), Some("localhost"));
    // The env file names a PKCS#12 identity, so no key file: the flags' PEM holds its key.
    assert!(s.client_key.is_none());

    // Without the TOML file: the env file's server wins over the fallback.
    let s = Sources {
        config_file: None,
        ..sources.clone()
    }
    .resolve()
    .unwrap();
    assert_eq!(s.servers[0].to_string(), "127.0.0.1:15999");
    // Without any server: the fallback.
    let s = Sources {
        flags: Some(Layer {
            ca: Some(d.path().join("ca.pem")),
            client_cert: Some(d.path().join("both.pem")),
            ..Layer::default()
        }),
        config_file: None,
        env_file: None,
        ..sources.clone()
    }
    .resolve()
    .unwrap();
    assert_eq!(s.servers[0].to_string(), "header.example:5696");
    // The environment's secrets come below every file.
    let l = Layer::default()
        .or(Layer {
            password: value("environment"),
            ..Layer::default()
        })
        .or(Layer {
            password: value("lower"),
            ..Layer::default()
        });
    assert!(matches!(l.password, Some(Secret::Value(v)) if v.as_str() == "environment"));
}

#[test]
fn what_is_missing_is_named_with_the_ways_to_give_it() {
    let d = fixture();
    let cli = Sources {
        flags: Some(Layer::default()),
        environment: true,
        ..Sources::default()
    };
    let e = cli.resolve().unwrap_err().to_string();
    assert!(
        e.starts_with("no KMIP server given; use --server HOST[:PORT]"),
        "{e}"
    );
    assert!(e.contains("`servers` in --config FILE"), "{e}");
    assert!(e.contains("KMIP_HOST in --env-file FILE"), "{e}");
    let e = Sources {
        fallback_servers: vec!["h".into()],
        ..cli.clone()
    }
    .resolve()
    .unwrap_err()
    .to_string();
    assert!(e.starts_with("no CA certificate given"), "{e}");
    assert!(e.contains("--ca FILE"), "{e}");
    let e = Sources {
        flags: Some(Layer {
            servers: vec!["h".into()],
            ca: Some(d.path().join("ca.pem")),
            client_cert: Some(d.path().join("cert.pem")),
            ..Layer::default()
        }),
        ..cli.clone()
    }
    .resolve()
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("has no private key in it; use --client-key FILE"),
        "{e}"
    );

    // An env file alone: only its own variable is named.
    let env = d.path().join("partial.env");
    std::fs::write(&env, "export KMIP_HOST=h\nexport KMIP_PASSWORD=hunter2\n").unwrap();
    let e = Sources::env_file(&env).resolve().unwrap_err().to_string();
    assert!(e.starts_with("no CA certificate given"), "{e}");
    assert!(
        e.ends_with(&format!("; set KMIP_CA in {}", env.display())),
        "{e}"
    );
    assert!(!e.contains("hunter2") && !e.contains("--"), "{e}");
}

#[test]
fn errors_and_debug_never_show_secrets() {
    let d = fixture();
    let env = d.path().join("client.env");
    let f = EnvFile::read(&env).unwrap();
    let dbg = format!("{f:?} {:?}", f.layer());
    assert!(!dbg.contains("env-file-password"), "{dbg}");
    assert!(!dbg.contains("env-file-passphrase"), "{dbg}");
    let s = Sources::env_file(&env).resolve().unwrap();
    let dbg = format!("{s:?}");
    assert!(!dbg.contains("env-file-pass"), "{dbg}");
    // A secret written where the TOML file has no such setting: named, not shown.
    let toml = d.path().join("bad.toml");
    std::fs::write(&toml, "servers = [\"h\"]\npassword = \"hunter2\"\n").unwrap();
    let e = Layer::from_toml_file(&toml).unwrap_err().to_string();
    assert!(e.contains("(line 2)") && e.contains("`password`"), "{e}");
    assert!(!e.contains("hunter2"), "{e}");
    assert_eq!(e.lines().count(), 1, "{e}");
}

#[test]
fn bad_values_are_refused_with_what_to_do() {
    let d = fixture();
    let base = Layer {
        servers: vec!["h".into()],
        ca: Some(d.path().join("ca.pem")),
        client_cert: Some(d.path().join("both.pem")),
        ..Layer::default()
    };
    let cli = |l: Layer| {
        Sources {
            flags: Some(l),
            ..Sources::default()
        }
        .resolve()
    };
    let e = cli(Layer {
        timeout: Some(0.0),
        ..base.clone()
    })
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("out of range; give seconds between 0 and 3600"),
        "{e}"
    );
    let e = cli(Layer {
        kmip_version: Some("9.9".into()),
        ..base.clone()
    })
    .unwrap_err();
    assert!(!e.to_string().is_empty());
    let e = cli(Layer {
        servers: vec!["bad host".into()],
        ..base.clone()
    })
    .unwrap_err()
    .to_string();
    assert!(e.contains("not a host name or IP address"), "{e}");
    let e = cli(Layer {
        ca: Some(d.path().join("missing.pem")),
        ..base.clone()
    })
    .unwrap_err()
    .to_string();
    assert!(e.starts_with("cannot read the CA certificate"), "{e}");
    assert!(e.contains("check the path"), "{e}");
    let s = cli(Layer {
        kmip_version: Some("1.2".into()),
        timeout: Some(2.5),
        ..base
    })
    .unwrap();
    assert!(s.version.is_some());
    assert_eq!(s.timeouts, Timeouts::uniform(Duration::from_millis(2500)));
}

#[test]
fn server_entries() {
    let a = parse_server("kmip.example", 5697).unwrap();
    assert_eq!((a.host.as_str(), a.port), ("kmip.example", 5697));
    let b = parse_server("kmip.example:6000", 5697).unwrap();
    assert_eq!(b.port, 6000);
    let c = parse_server("[::1]:7000", 5696).unwrap();
    assert_eq!((c.host.as_str(), c.port), ("::1", 7000));
    let d = parse_server("::1", 5800).unwrap();
    assert_eq!(d.port, 5800);
    assert!(parse_server("bad host", 5696).is_err());
    assert!(parse_server("h:0", 5696).is_err());
}

//! `--config FILE` for the servers (`atrest serve`, `atrest kms serve`): every option of the
//! command line may be written in a TOML file, under its flag's name with underscores
//! (`--data-dir` is `data_dir`). Flags and their environment variables override the file.
//!
//! The file is turned into the flags it stands for and parsed by the same parser as the command
//! line, so a value means the same and is checked the same wherever it is written. Paths in the
//! file (options whose value is a FILE, DIR or PATH) are relative to the file, as in `atrest
//! kmip --config`. Secrets are never options: they are read from the files the options name.

use std::ffi::OsString;
use std::path::Path;

use anyhow::{Context, bail};
use clap::ArgMatches;
use clap::parser::ValueSource;

/// Largest settings file read: 1 MiB.
const MAX_FILE: u64 = 1 << 20;

/// Reads `path` and returns the flags it stands for, leaving out every option given on the
/// command line or by its environment variable (`given`).
pub fn file_args(
    cmd: &clap::Command,
    given: &ArgMatches,
    path: &Path,
) -> anyhow::Result<Vec<OsString>> {
    let meta = std::fs::metadata(path)
        .with_context(|| format!("cannot read the settings file {}", path.display()))?;
    if meta.len() > MAX_FILE {
        bail!(
            "the settings file {} is {} bytes, larger than the {MAX_FILE} allowed; give the right \
             file",
            path.display(),
            meta.len()
        );
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the settings file {} as UTF-8", path.display()))?;
    let table: toml::Table = toml::from_str(&text).map_err(|e| {
        // One line: the message and where, not the multi-line excerpt.
        let line = e
            .span()
            .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
        anyhow::anyhow!(
            "the settings file {} is not valid TOML{}: {}; correct it",
            path.display(),
            line.map(|l| format!(" (line {l})")).unwrap_or_default(),
            e.message().trim()
        )
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    to_args(cmd, given, &table, base)
        .with_context(|| format!("in the settings file {}", path.display()))
}

/// The TOML key of an option: its long flag with underscores.
pub fn key_of(arg: &clap::Arg) -> Option<String> {
    let long = arg.get_long()?;
    (long != "config" && long != "help" && long != "version").then(|| long.replace('-', "_"))
}

fn is_path(arg: &clap::Arg) -> bool {
    arg.get_value_names().is_some_and(|n| {
        n.iter()
            .any(|n| ["FILE", "DIR", "PATH"].contains(&n.as_str()))
    })
}

fn to_args(
    cmd: &clap::Command,
    given: &ArgMatches,
    table: &toml::Table,
    base: &Path,
) -> anyhow::Result<Vec<OsString>> {
    let mut out = Vec::new();
    for (key, value) in table {
        let Some(arg) = cmd
            .get_arguments()
            .find(|a| key_of(a).as_deref() == Some(key.as_str()))
        else {
            let known: Vec<String> = cmd.get_arguments().filter_map(key_of).collect();
            bail!(
                "`{key}` is not an option of `{}`; use one of: {}",
                cmd.get_name(),
                known.join(", ")
            );
        };
        if matches!(
            given.value_source(arg.get_id().as_str()),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        ) {
            continue;
        }
        let long = format!("--{}", arg.get_long().unwrap_or_default());
        let flag = !arg.get_action().takes_values();
        let values: Vec<&toml::Value> = match value {
            toml::Value::Array(a) => a.iter().collect(),
            v => vec![v],
        };
        for v in values {
            let text = match v {
                toml::Value::Boolean(b) if flag => {
                    if *b {
                        out.push(OsString::from(&long));
                    }
                    continue;
                }
                _ if flag => bail!("`{key}` is true or false"),
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Float(f) => f.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                _ => bail!("`{key}` takes a string or a number"),
            };
            let mut a = OsString::from(format!("{long}="));
            if is_path(arg) && Path::new(&text).is_relative() {
                a.push(base.join(&text));
            } else {
                a.push(text);
            }
            out.push(a);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, FromArgMatches, Parser};

    fn packaging(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../packaging")
            .join(name)
    }

    /// The file with every commented `# key = value` line made active.
    fn uncommented(text: &str) -> String {
        text.lines()
            .map(|l| match l.strip_prefix("# ") {
                Some(rest) if rest.contains(" = ") && !rest.starts_with(' ') => rest,
                _ => l,
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The shipped file parses, every option it shows (commented or not) is accepted by the
    /// command's own parser, and every option of the command is shown in it.
    fn check_default_file(file: &str, argv: &[&str]) {
        let path = packaging(file);
        let text = std::fs::read_to_string(&path).unwrap();
        let mut cmd = crate::Cli::command();
        let matches = cmd.clone().try_get_matches_from(argv).unwrap();
        let (mut sub, mut sub_m) = (&mut cmd, &matches);
        for name in &argv[1..] {
            sub = sub.find_subcommand_mut(name).unwrap();
            sub_m = sub_m.subcommand_matches(name).unwrap();
        }
        let sub = sub.clone();
        let base = path.parent().unwrap();
        // As shipped.
        let table: toml::Table = toml::from_str(&text).unwrap();
        let extra = to_args(&sub, sub_m, &table, base).unwrap();
        let mut all: Vec<OsString> = argv.iter().map(OsString::from).collect();
        all.extend(extra);
        crate::Cli::try_parse_from(&all).unwrap();
        // With every option it documents.
        let full: toml::Table = toml::from_str(&uncommented(&text)).unwrap();
        let extra = to_args(&sub, sub_m, &full, base).unwrap();
        let mut all: Vec<OsString> = argv.iter().map(OsString::from).collect();
        all.extend(extra);
        let m = crate::Cli::command().try_get_matches_from(&all).unwrap();
        crate::Cli::from_arg_matches(&m).unwrap();
        let shipped: toml::Table = toml::from_str(&text).unwrap();
        for a in sub.get_arguments() {
            let Some(k) = key_of(a) else { continue };
            assert!(full.contains_key(&k), "{file} does not show `{k}`");
            // A commented line shows the default.
            let default = a.get_default_values().first().map(|d| d.to_string_lossy());
            if let (false, Some(d)) = (shipped.contains_key(&k), default) {
                let shown = match &full[&k] {
                    toml::Value::String(s) => s.clone(),
                    v => v.to_string(),
                };
                let same = match (shown.parse::<f64>(), d.parse::<f64>()) {
                    (Ok(x), Ok(y)) => x == y,
                    _ => shown == d,
                };
                assert!(same, "{file}: `{k}` shows {shown}, the default is {d}");
            }
        }
    }

    #[test]
    fn the_shipped_appliance_file_parses_and_shows_every_option() {
        check_default_file("atrest.toml", &["atrest", "serve"]);
    }

    #[test]
    fn the_shipped_kms_file_parses_and_shows_every_option() {
        check_default_file("atrest-kms.toml", &["atrest", "kms", "serve"]);
    }

    fn serve_cmd() -> clap::Command {
        crate::Cli::command()
            .find_subcommand("serve")
            .unwrap()
            .clone()
    }

    fn args(toml_text: &str, argv: &[&str]) -> anyhow::Result<Vec<String>> {
        let m = crate::Cli::command().try_get_matches_from(argv).unwrap();
        let table: toml::Table = toml::from_str(toml_text).unwrap();
        Ok(to_args(
            &serve_cmd(),
            m.subcommand_matches("serve").unwrap(),
            &table,
            Path::new("/etc/atrest"),
        )?
        .into_iter()
        .map(|s| s.into_string().unwrap())
        .collect())
    }

    #[test]
    fn flags_override_the_file_and_paths_are_relative_to_it() {
        let a = args(
            "data_dir = \"state\"\nlisten = \"0.0.0.0:1\"\nembedded_kms = true\nno_volume = false\n\
             key_bits = 512\nkmip_timeout = 2.5",
            &["atrest", "serve", "--listen", "127.0.0.1:0"],
        )
        .unwrap();
        assert!(
            a.contains(&"--data-dir=/etc/atrest/state".to_string()),
            "{a:?}"
        );
        assert!(a.contains(&"--embedded-kms".to_string()));
        assert!(a.contains(&"--key-bits=512".to_string()));
        assert!(a.contains(&"--kmip-timeout=2.5".to_string()));
        assert!(!a.iter().any(|s| s.starts_with("--listen")));
        assert!(!a.iter().any(|s| s.starts_with("--no-volume")));
    }

    #[test]
    fn unknown_and_mistyped_options_are_refused_with_the_known_ones() {
        let e = args("data_dri = \"x\"", &["atrest", "serve"]).unwrap_err();
        assert!(e.to_string().contains("`data_dri` is not an option"), "{e}");
        assert!(e.to_string().contains("data_dir"), "{e}");
        let e = args("embedded_kms = \"yes\"", &["atrest", "serve"]).unwrap_err();
        assert!(e.to_string().contains("true or false"), "{e}");
        let e = args("config = \"other.toml\"", &["atrest", "serve"]).unwrap_err();
        assert!(e.to_string().contains("not an option"), "{e}");
    }
}

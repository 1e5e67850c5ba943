//! The Debian package: `cargo deb` builds atrest_<version>_amd64.deb from the binary the tests
//! use (no release build in CI: the binary is put where `cargo deb --no-build` looks for it),
//! its files are listed, both systemd units pass `systemd-analyze verify` against the unpacked
//! package, and their `systemd-analyze security` exposure stays as low as docs/operations.md
//! reports. Needs cargo-deb, dpkg-deb and systemd-analyze (scripts/test installs cargo-deb).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use atrest_testkit::process::{has, run};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

const UNITS: [&str; 2] = ["atrest.service", "atrest-kms.service"];

/// Directives every unit must keep (docs/operations.md, "Units").
const HARDENING: [&str; 16] = [
    "User=atrest",
    "NoNewPrivileges=yes",
    "ProtectSystem=strict",
    "ProtectHome=yes",
    "PrivateTmp=yes",
    "PrivateDevices=yes",
    "LimitCORE=0",
    "AmbientCapabilities=CAP_IPC_LOCK",
    "CapabilityBoundingSet=CAP_IPC_LOCK",
    "SystemCallFilter=@system-service",
    "SystemCallFilter=~@privileged",
    "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
    "MemoryDenyWriteExecute=yes",
    "StateDirectoryMode=0700",
    "UMask=0077",
    "ProtectKernelTunables=yes",
];

#[test]
fn the_debian_package_builds_with_verified_hardened_units() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let tools = atrest_testkit::available(
        Command::new(&cargo)
            .args(["deb", "--version"])
            .output()
            .is_ok_and(|o| o.status.success()),
        "cargo-deb",
        "cargo install --locked cargo-deb",
    ) && atrest_testkit::available(
        has("dpkg-deb", "--version"),
        "dpkg-deb",
        "apt-get install dpkg",
    ) && atrest_testkit::available(
        has("systemd-analyze", "--version"),
        "systemd-analyze",
        "apt-get install systemd",
    );
    if !tools {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    // The test binary where `cargo deb --no-build` takes the release binary from.
    let target = tmp.path().join("target");
    std::fs::create_dir_all(target.join("release")).unwrap();
    std::fs::copy(env!("CARGO_BIN_EXE_atrest"), target.join("release/atrest")).unwrap();
    let out_dir = tmp.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    run(Command::new(&cargo)
        .args([
            "deb",
            "-p",
            "atrest",
            "--no-build",
            "--fast",
            "--locked",
            "-o",
        ])
        .arg(&out_dir)
        .env("CARGO_TARGET_DIR", &target)
        .current_dir(workspace()));
    let deb = out_dir.join(format!("atrest_{}_amd64.deb", env!("CARGO_PKG_VERSION")));
    assert!(
        deb.is_file(),
        "{:?}",
        std::fs::read_dir(&out_dir).unwrap().collect::<Vec<_>>()
    );

    let list = String::from_utf8(run(Command::new("dpkg-deb").arg("-c").arg(&deb)).stdout).unwrap();
    for f in [
        "./usr/bin/atrest",
        "./usr/lib/systemd/system/atrest.service",
        "./usr/lib/systemd/system/atrest-kms.service",
        "./etc/atrest/atrest.toml",
        "./etc/atrest/atrest-kms.toml",
        "./usr/share/doc/atrest/operations.md",
    ] {
        assert!(
            list.lines().any(|l| l.ends_with(&format!(" {f}"))),
            "{f} is not in the package:\n{list}"
        );
    }
    assert!(
        list.lines()
            .any(|l| l.starts_with("-rwxr-xr-x") && l.ends_with(" ./usr/bin/atrest"))
    );

    // Control: the user, the state directory, the settings kept as conffiles.
    let control = tmp.path().join("control");
    run(Command::new("dpkg-deb").arg("-e").arg(&deb).arg(&control));
    let postinst = std::fs::read_to_string(control.join("postinst")).unwrap();
    assert!(postinst.contains("adduser --system"), "{postinst}");
    assert!(postinst.contains("install -d -m 0700 -o atrest -g atrest /var/lib/atrest"));
    assert!(postinst.contains("deb-systemd-helper enable atrest.service"));
    let conffiles = std::fs::read_to_string(control.join("conffiles")).unwrap();
    assert!(
        conffiles.contains("/etc/atrest/atrest.toml")
            && conffiles.contains("/etc/atrest/atrest-kms.toml")
    );

    // The unpacked package, with the host's own units (targets the services refer to).
    let root = tmp.path().join("root");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root));
    // The packaged (stripped) binary runs.
    run(Command::new(root.join("usr/bin/atrest")).arg("--version"));
    let units = root.join("usr/lib/systemd/system");
    for entry in std::fs::read_dir("/usr/lib/systemd/system").unwrap() {
        let entry = entry.unwrap();
        let to = units.join(entry.file_name());
        if entry.file_type().unwrap().is_file() && !to.exists() {
            std::fs::copy(entry.path(), to).unwrap();
        }
    }
    let paths: Vec<PathBuf> = UNITS.iter().map(|u| units.join(u)).collect();
    let out = run(Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={}", root.display()))
        .args(&paths));
    // A directive systemd does not understand is only a warning: none is allowed.
    let warnings = String::from_utf8_lossy(&out.stderr);
    assert!(
        warnings.trim().is_empty(),
        "systemd-analyze verify: {warnings}"
    );
    for (unit, path) in UNITS.iter().zip(&paths) {
        let text = std::fs::read_to_string(path).unwrap();
        for d in HARDENING {
            assert!(text.lines().any(|l| l == d), "{unit} lacks {d}");
        }
        let out = run(Command::new("systemd-analyze")
            .args(["security", "--offline=true", "--no-pager"])
            .arg(format!("--root={}", root.display()))
            .arg(path));
        let report = String::from_utf8_lossy(&out.stdout);
        let exposure: f64 = report
            .lines()
            .find_map(|l| l.split_once(&format!("exposure level for {unit}: ")))
            .and_then(|(_, r)| r.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no exposure level for {unit}:\n{report}"));
        println!("{unit}: exposure {exposure}");
        assert!(
            exposure <= 2.0,
            "{unit}: exposure {exposure} (docs say 1.5):\n{report}"
        );
    }
}

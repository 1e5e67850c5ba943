//! `atrest kmip …`: a KMIP client for administrators and scripts.

use clap::Args;

#[derive(Debug, Args)]
pub struct KmipArgs {}

pub fn run(_args: KmipArgs) -> anyhow::Result<()> {
    anyhow::bail!("`atrest kmip` is not available yet")
}

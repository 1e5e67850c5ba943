//! `atrest kms …`: the bundled KMIP server.

use clap::Args;

#[derive(Debug, Args)]
pub struct KmsArgs {}

pub fn run(_args: KmsArgs) -> anyhow::Result<()> {
    anyhow::bail!("`atrest kms` is not available yet")
}

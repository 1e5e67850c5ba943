//! `atrest volume …`: the volume, offline.

use clap::Args;

#[derive(Debug, Args)]
pub struct VolumeArgs {}

pub fn run(_args: VolumeArgs) -> anyhow::Result<()> {
    anyhow::bail!("`atrest volume` is not available yet")
}

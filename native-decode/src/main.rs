//! `baton-engine`: serve a model with an OpenAI-compatible API.

use clap::Parser;

fn main() -> anyhow::Result<()> {
    baton_native::cli::run(baton_native::cli::Args::parse())
}

//! `baton-engine`: serve a model with an OpenAI-compatible API, or `baton-engine profile`: measure its step time.

use clap::Parser;

fn main() -> anyhow::Result<()> {
    let mut argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    // `profile` takes the serve flags too, so it is parsed on its own rather than as a clap subcommand of a
    // command whose --model is required.
    if argv.get(1).is_some_and(|a| a == "profile") {
        argv.remove(1);
        return baton_native::profile::run(baton_native::profile::ProfileArgs::parse_from(argv));
    }
    baton_native::cli::run(baton_native::cli::Args::parse_from(argv))
}

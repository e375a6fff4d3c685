//! # muster
//!
//! The `muster` command: thin wiring from flags to the library crates.
//!
//! # Layout
//! - `cli`: the clap command tree.
//! - `certs`: `muster certs …`, the certificate tool over `muster-pki`.
//! - `files`: writing a set of files all-or-nothing, keys with mode 0600, no silent overwrite.

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a command-line tool talks on stdout and stderr"
)]

mod certs;
mod cli;
mod files;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let result = match cli.command {
        cli::Command::Certs(cmd) => certs::run(cmd, cli.output),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the context chain joined, most general first.
            let chain: Vec<String> = e.chain().map(ToString::to_string).collect();
            eprintln!("error: {}", chain.join(": "));
            ExitCode::FAILURE
        }
    }
}

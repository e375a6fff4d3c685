//! # muster
//!
//! The `muster` command: thin wiring from flags to the library crates.
//!
//! # Layout
//! - `cli`: the clap command tree.
//! - `certs`: `muster certs …`, the certificate tool over `muster-pki`.
//! - `files`: writing a set of files all-or-nothing, keys with mode 0600, no silent overwrite.
//! - `serve`: `serve`, `info`, `config default` (wiring to `muster-server`).
//! - `api`: the REST client (connection string → SAS per request, data-dir trust root).
//! - `dps`: `muster dps …` management commands.
//! - `hub`: `muster hub …` device identities and twins.
//! - `device`: `muster device simulate`, the lab's device (over `muster-device`).
//! - `hints`: the likely fix printed after an error.

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a command-line tool talks on stdout and stderr"
)]

/// `println!` that ends the process quietly, as a Unix tool killed by SIGPIPE would (exit code
/// 141), when whoever reads its output has gone away (`muster … | head -1`), instead of
/// panicking.
macro_rules! out {
    () => {
        $crate::write_out(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::write_out(format_args!($($arg)*))
    };
}

mod api;
mod certs;
mod cli;
mod device;
mod dps;
mod files;
mod hints;
mod hub;
mod routing;
mod serve;

use std::process::ExitCode;

use clap::Parser;

/// Write one line to stdout; see `out!`.
pub(crate) fn write_out(args: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    if writeln!(stdout, "{args}")
        .and_then(|()| stdout.flush())
        .is_err()
    {
        std::process::exit(141);
    }
}

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let result = match cli.command {
        cli::Command::Certs { output, command } => certs::run(command, output.output),
        cli::Command::Serve(args) => serve::serve(&args),
        cli::Command::Info {
            server,
            output,
            json,
        } => serve::info(&server.data_dir, json || output.output == cli::Output::Json),
        cli::Command::Portal {
            server,
            command: cli::PortalCommand::ResetAdminPassword,
        } => serve::reset_admin_password(&server.data_dir),
        cli::Command::Cluster {
            server,
            output,
            command: cli::ClusterCommand::Status { bus },
        } => serve::cluster_status(&server.data_dir, &bus, output.output),
        cli::Command::Config(cli::ConfigCommand::Default) => {
            serve::config_default();
            Ok(())
        }
        cli::Command::Dps {
            api,
            output,
            command,
        } => dps::run(&api, command, output.output),
        cli::Command::Hub {
            api,
            output,
            command,
        } => hub::run(&api, command, output.output),
        cli::Command::Device { output, command } => device::run(command, output.output),
        cli::Command::Bench { output, command } => device::bench(command, output.output),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the context chain joined, most general first, each cause once, then
            // the likely fix where one is known.
            match hints::fix(&e) {
                Some(fix) => eprintln!("error: {} — {fix}", muster_types::report(&*e)),
                None => eprintln!("error: {}", muster_types::report(&*e)),
            }
            ExitCode::FAILURE
        }
    }
}

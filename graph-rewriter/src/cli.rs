//! Command-line conventions shared by the lookat tools. Exit status: 0 success, 1 error, 2 nothing
//! to rewrite (lookat-rewrite only), 64 a usage error (sysexits' EX_USAGE; clap's default 2 would
//! read as "nothing to rewrite").

use std::process::ExitCode;

pub const EXIT_ERROR: u8 = 1;
pub const EXIT_NOTHING_TO_REWRITE: u8 = 2;
pub const EXIT_USAGE: u8 = 64;

/// Parses the command line; `--help` and `--version` print and exit 0, bad usage prints clap's
/// message and exits [`EXIT_USAGE`].
fn parse<T: clap::Parser>() -> Result<T, ExitCode> {
    T::try_parse().map_err(|e| {
        let _ = e.print();
        if e.use_stderr() {
            ExitCode::from(EXIT_USAGE)
        } else {
            ExitCode::SUCCESS
        }
    })
}

/// The whole `main` of a tool: parse the command line, run `body`, print `name: error` on failure
/// and exit with the matching status ([`EXIT_NOTHING_TO_REWRITE`] for a rewrite refusal).
pub fn main<T: clap::Parser>(name: &str, body: impl FnOnce(T) -> anyhow::Result<()>) -> ExitCode {
    let cli = match parse::<T>() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    match body(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e:#}");
            let refusal = e.downcast_ref::<crate::Refusal>().is_some();
            ExitCode::from(if refusal {
                EXIT_NOTHING_TO_REWRITE
            } else {
                EXIT_ERROR
            })
        }
    }
}

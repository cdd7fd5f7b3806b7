use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = kiln::cli::Cli::parse();
    match kiln::cli::run(cli) {
        Ok(code) => code,
        Err(err) => {
            kiln::cli::report_error(&err);
            kiln::cli::interrupted_exit_code().map_or(ExitCode::FAILURE, ExitCode::from)
        }
    }
}

//! The `raftcron` binary: parse the command line, set up logging, run.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = raftcron::cli::Cli::parse();
    // The per-run supervisor is plain threads and `waitpid`: no runtime, no logging.
    if matches!(cli.command, raftcron::cli::Cmd::RunShim) {
        return std::process::ExitCode::from(raftcron::worker::shim::run().clamp(0, 255) as u8);
    }
    raftcron::cli::init_logging(&cli);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(raftcron::cli::run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", format!("{e:#}").replace('\n', " "));
            std::process::ExitCode::from(raftcron::cli::exit_code(&e))
        }
    }
}

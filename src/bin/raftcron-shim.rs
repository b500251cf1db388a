//! `raftcron-shim run-shim`: the run supervisor ([`raftcron::worker::shim`]) as a binary
//! of its own. `raftcron run-shim` does the same, but every run starts one of these, and
//! the full binary costs ~6 ms of CPU to start (mostly the dynamic loader resolving the
//! C++ symbols of librocksdb and libstdc++, and their static initializers), where this one
//! links neither: a burst of runs spent half the machine's CPU starting shims. The agent
//! uses this binary when it sits beside its own executable, belongs to the same owner,
//! is writable by no one else, and speaks the same protocol (`--protocol`); otherwise it
//! runs `raftcron run-shim` (see `worker::default_shim`).

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["run-shim"] => std::process::ExitCode::from(raftcron::worker::shim::run().clamp(0, 255) as u8),
        ["--protocol"] => {
            println!("{}", raftcron::worker::shim::PROTOCOL);
            std::process::ExitCode::SUCCESS
        }
        _ => {
            eprintln!("usage: raftcron-shim run-shim | --protocol (started by a raftcron worker, one per run)");
            std::process::ExitCode::from(2)
        }
    }
}

//! The anchor for the runs benchmark: how many `/bin/sh -c true` this machine forks, execs
//! and reaps per second from `THREADS` threads, with nothing else of raftcron running. A
//! run of a `true` shell task costs at least that (and a supervising `run-shim` process,
//! its cgroup and four commits more), so `bench/bench.py` prints its runs per second beside
//! this number. `cargo bench --bench spawn` prints one line. Bounded: `TIME`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const THREADS: usize = 16;
const TIME: Duration = Duration::from_secs(3);

fn main() {
    let started = Instant::now();
    let done = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..THREADS {
            s.spawn(|| {
                while started.elapsed() < TIME {
                    let status = std::process::Command::new("/bin/sh").args(["-c", "true"]).status();
                    if status.is_ok_and(|s| s.success()) {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    let rate = done.into_inner() as f64 / started.elapsed().as_secs_f64();
    println!("fork/exec anchor: {rate:.0} /s (/bin/sh -c true from {THREADS} threads, nothing else running)");
}

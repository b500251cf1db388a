//! The task list calls of `GET /api/tasks` and `/api/system/status` on one node's store
//! at N tasks, without HTTP or Raft: what the storage layer costs each call. The tasks are
//! the scale bench's and `raftcron debug generate`'s (`job-teamNN-<8 digits>`, every
//! 100th paused, created through `apply`: every index and counter is the one a cluster
//! keeps). Each call runs 200 times; the table gives p50 and p99 in ms.
//!
//! `cargo bench --bench lists [-- 100000 1000000]`

use std::time::Instant;

use raftcron::model::TaskStatus;
use raftcron::storage::{open_db, Store};

mod support;

use support::percentile;

fn time(label: &str, mut call: impl FnMut() -> usize) {
    let mut ms: Vec<f64> = (0..200)
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(call());
            t.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    ms.sort_by(f64::total_cmp);
    println!("| {label} | {:.3} | {:.3} |", percentile(&ms, 0.5), percentile(&ms, 0.99));
}

fn main() {
    let sizes: Vec<u64> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    for n in if sizes.is_empty() { vec![100_000] } else { sizes } {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::new(open_db(dir.path()).expect("open"));
        let t = Instant::now();
        raftcron::cli::generate_state(&store, n, 0).expect("generate");
        println!("\n{n} tasks, loaded in {:.1} s\n", t.elapsed().as_secs_f64());
        println!("| call ({n} tasks) | p50 ms | p99 ms |");
        println!("|---|---|---|");
        let size = 100;
        time("first page", || store.task_page(0, size).expect("page").0.len());
        time("deep page (middle)", || store.task_page(n / 2, size).expect("page").0.len());
        time("last page", || store.task_page(n - size, size).expect("page").0.len());
        time("status=paused, deep", || {
            store.tasks_with_status(TaskStatus::Paused, n / 200, size).expect("page").0.len()
        });
        time("search 1% (team42-)", || store.search_tasks("team42-", None, 0, size).expect("search").items.len());
        time("search 1%, deep", || store.search_tasks("team42-", None, n / 200, size).expect("search").items.len());
        time("search 1 match", || {
            store.search_tasks(&format!("{:08}", n.min(4242)), None, 0, size).expect("search").items.len()
        });
        time("search 1 trigram (m42)", || store.search_tasks("m42", None, 0, size).expect("search").items.len());
        time("search 1 char", || store.search_tasks("j", None, 0, size).expect("search").items.len());
        time("status counters", || store.task_count().expect("counters") as usize);
    }
}

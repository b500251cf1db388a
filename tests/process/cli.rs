//! The `raftcron task|run|worker|cluster` client against a 3-node cluster of real
//! processes: each command's happy path and a bad input, `--json` parsed back, the exit
//! codes the module docs of `cli/client.rs` promise, `trigger --wait` returning the run's
//! outcome, and a context from the client config file.

use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;

use crate::fixture::{spawn_worker, Cluster, KEY};

struct Cli {
    server: String,
    envs: Vec<(String, String)>,
}

impl Cli {
    fn run(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_raftcron"));
        cmd.env_clear().env("RAFTCRON_SERVER", &self.server).env("RAFTCRON_API_KEY", KEY);
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        cmd.args(args).output().expect("raftcron runs")
    }

    /// Runs `args`, asserts the exit code, and returns stdout.
    fn expect(&self, code: i32, args: &[&str]) -> String {
        let out = self.run(args);
        assert_eq!(out.status.code(), Some(code), "raftcron {}: {}", args.join(" "), text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.push("--json");
        let out = self.expect(0, &all);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("raftcron {}: not JSON ({e}): {out}", args.join(" ")))
    }

    /// Runs `args` expecting exit `code` and one line on stderr that holds `needle`.
    fn refused(&self, code: i32, args: &[&str], needle: &str) {
        let out = self.run(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "raftcron {}: {}", args.join(" "), text(&out));
        assert!(err.contains(needle), "raftcron {}: stderr lacks {needle:?}: {err}", args.join(" "));
        if code == 1 || code == 3 {
            assert_eq!(err.trim_end().lines().count(), 1, "an API error is one line: {err}");
        }
    }
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_drives_tasks_runs_and_workers_with_exit_codes_scripts_can_rely_on() {
    let c = Cluster::start(3);
    c.wait_healthy(Duration::from_secs(20)).await;
    // Killed when the test ends, passed or not.
    struct Reaped(std::process::Child);
    impl Drop for Reaped {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _worker = Reaped(spawn_worker(&c, 0, "cli-w1"));
    // Through a follower or the leader alike: node 2 (writes are forwarded).
    let cli = Cli { server: format!("http://{}", c.nodes[1].http), envs: Vec::new() };
    let dir = tempfile::tempdir().unwrap();

    // create: YAML from a file, flags, and a refused one.
    let yaml = dir.path().join("task.yaml");
    std::fs::write(
        &yaml,
        "name: cli-nightly\nexecutor: shell\ncommand: echo hello from cli\nschedule: \"0 3 * * *\"\n",
    )
    .unwrap();
    let created = cli.json(&["task", "create", "-f", yaml.to_str().unwrap()]);
    let id = created["id"].as_u64().expect("an id").to_string();
    assert_eq!(created["schedule"], "0 3 * * *");
    let failing = cli.json(&["task", "create", "--name", "cli-fails", "--command", "echo no; exit 3"]);
    let failing_id = failing["id"].as_u64().unwrap().to_string();
    cli.refused(1, &["task", "create", "--name", "bad", "--command", "true", "--schedule", "61 * * * *"], "schedule");
    cli.refused(1, &["task", "create", "--name", "cli-nightly", "--command", "true"], "409");
    cli.refused(2, &["task", "create", "-f", dir.path().join("missing.json").to_str().unwrap()], "missing.json");
    cli.refused(2, &["task", "create", "--bogus-flag"], "--bogus-flag");

    // list and get: tables for people, JSON for scripts.
    let table = cli.expect(0, &["task", "list"]);
    assert!(table.starts_with("ID") && table.contains("cli-nightly") && table.contains("0 3 * * *"), "{table}");
    let wide = cli.expect(0, &["task", "list", "-o", "wide"]);
    assert!(wide.lines().next().unwrap().contains("EXECUTOR"), "{wide}");
    let page = cli.json(&["task", "list", "--search", "nightly"]);
    assert_eq!(page["total"], 1, "{page}");
    assert_eq!(page["items"][0]["name"], "cli-nightly");
    cli.refused(1, &["task", "list", "--status", "sleepy"], "status");
    let got = cli.json(&["task", "get", &id]);
    assert_eq!(got["name"], "cli-nightly");
    let version = got["version"].as_u64().unwrap();
    cli.refused(1, &["task", "get", "999999"], "not found");
    cli.refused(2, &["task", "get", "../workers"], "task id");

    // update with compare-and-set, pause and resume.
    let stale = (version + 7).to_string();
    cli.refused(1, &["task", "update", &id, "--set", "retry_count=2", "--if-match", &stale], "412");
    let updated = cli.json(&["task", "update", &id, "--set", "retry_count=2", "--if-match", &version.to_string()]);
    assert_eq!(updated["retry_count"], 2);
    assert_eq!(updated["version"], version + 1);
    cli.refused(1, &["task", "update", &id, "--set", "retry_count=\"many\""], "retry_count");
    cli.refused(2, &["task", "update", &id], "nothing to change");
    assert_eq!(cli.json(&["task", "pause", &id])["status"], "paused");
    assert_eq!(cli.json(&["task", "list", "--status", "paused"])["total"], 1);
    assert_eq!(cli.json(&["task", "resume", &id])["status"], "active");

    // trigger --wait: the run's outcome is the exit code, its output is printed.
    let out = cli.expect(0, &["task", "trigger", &id, "--wait", "--timeout", "60"]);
    assert!(out.contains("hello from cli"), "{out}");
    let failed = cli.run(&["task", "trigger", &failing_id, "--wait", "--timeout", "60"]);
    assert_eq!(failed.status.code(), Some(4), "{}", text(&failed));
    assert!(text(&failed).contains("failed") && text(&failed).contains("code 3"), "{}", text(&failed));
    let run = cli.json(&["task", "trigger", &id, "--wait", "--timeout", "60"]);
    assert_eq!(run["status"], "succeeded", "{run}");
    let run_id = run["id"].as_u64().unwrap().to_string();

    // runs of a task, and one run.
    let runs = cli.json(&["task", "runs", &id]);
    let manual = runs["items"].as_array().unwrap().iter().filter(|r| r["trigger"] == "manual").count();
    assert_eq!(manual, 2, "{runs}");
    let runs_table = cli.expect(0, &["task", "runs", &id]);
    assert!(runs_table.contains("succeeded") && runs_table.contains("manual"), "{runs_table}");
    assert_eq!(cli.json(&["run", "get", &run_id])["task_id"].to_string(), id);
    let logs = cli.expect(0, &["run", "logs", &run_id]);
    assert_eq!(logs.trim(), "hello from cli");
    cli.refused(1, &["run", "cancel", &run_id], "409");
    cli.refused(1, &["run", "get", "424242"], "not found");
    // Every other command's bad input: an unknown id, a value out of range, a bad flag.
    for (args, needle) in [
        (&["task", "pause", "999999"][..], "not found"),
        (&["task", "resume", "999999"], "not found"),
        (&["task", "trigger", "999999"], "not found"),
        (&["task", "runs", "999999"], "not found"),
        (&["run", "logs", "424242"], "not found"),
        (&["run", "cancel", "424242"], "not found"),
        (&["task", "list", "--size", "500"], "size"),
    ] {
        cli.refused(1, args, needle);
    }
    cli.refused(2, &["worker", "list", "-o", "yaml"], "yaml");
    cli.refused(2, &["task", "trigger", &id, "--timeout", "soon"], "soon");

    // workers: list, get, update (a usage error when nothing is asked).
    let workers = cli.json(&["worker", "list"]);
    assert!(workers.as_array().unwrap().iter().any(|w| w["id"] == "cli-w1"), "{workers}");
    assert!(cli.expect(0, &["worker", "list"]).contains("cli-w1"));
    assert_eq!(cli.json(&["worker", "get", "cli-w1"])["id"], "cli-w1");
    let capped = cli.json(&["worker", "update", "cli-w1", "--tags", "gpu", "--enabled", "false"]);
    assert_eq!(capped["enabled"], false, "{capped}");
    cli.refused(2, &["worker", "update", "cli-w1"], "nothing to change");
    // The agent's flags do not mix with the client's subcommands (its --server would be lost).
    cli.refused(2, &["worker", "--server", "http://127.0.0.1:1", "list"], "cannot be used with");
    cli.refused(2, &["task", "list", "--server", "127.0.0.1:8080"], "not an http");
    cli.refused(2, &["task", "delete", ".."], "task id");
    cli.refused(1, &["worker", "get", "no-such-worker"], "not found");

    // cluster status, credentials, reachability.
    let status = cli.expect(0, &["cluster", "status"]);
    assert!(status.contains("leader") && status.lines().count() >= 5, "{status}");
    let bad_key = Cli { server: cli.server.clone(), envs: vec![("RAFTCRON_API_KEY".into(), "wrong".into())] };
    bad_key.refused(1, &["task", "list"], "401");
    let nobody = Cli { server: format!("http://127.0.0.1:{}", crate::fixture::free_port()), envs: Vec::new() };
    nobody.refused(3, &["task", "list"], "cannot be reached");

    // A context names the server and a key file; flags and variables still win.
    let key_file = dir.path().join("key");
    std::fs::write(&key_file, format!("{KEY}\n")).unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "current_context = \"third\"\n[contexts.third]\nserver = \"http://{}\"\napi_key_file = {:?}\n\
             [contexts.nowhere]\nserver = \"http://127.0.0.1:1\"\n",
            c.nodes[2].http, key_file
        ),
    )
    .unwrap();
    let mut from_context = Command::new(env!("CARGO_BIN_EXE_raftcron"));
    from_context.env_clear().env("RAFTCRON_CLIENT_CONFIG", &config).args(["task", "get", &id, "--json"]);
    let out = from_context.output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_raftcron"));
    cmd.env_clear().env("RAFTCRON_CLIENT_CONFIG", &config).args(["task", "list", "--context", "nowhere"]);
    assert_eq!(cmd.output().unwrap().status.code(), Some(3), "the named context's server is used");
    // A context's key goes to the context's server only.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_raftcron"));
    cmd.env_clear().env("RAFTCRON_CLIENT_CONFIG", &config).args(["task", "list", "--server", "http://127.0.0.1:1"]);
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("give --api-key"), "{}", text(&out));
    // Also when the environment holds a key of its own: the named context's key stays home.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_raftcron"));
    cmd.env_clear().env("RAFTCRON_CLIENT_CONFIG", &config).env("RAFTCRON_API_KEY", "ambient-key").args([
        "task",
        "list",
        "--context",
        "third",
        "--server",
        "http://127.0.0.1:1",
    ]);
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    // A named context is used whole: the environment's server does not mix into it.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_raftcron"));
    cmd.env_clear().env("RAFTCRON_CLIENT_CONFIG", &config).env("RAFTCRON_SERVER", "http://127.0.0.1:1").args([
        "task",
        "get",
        &id,
        "--context",
        "third",
    ]);
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_raftcron"));
    cmd.env_clear().env("RAFTCRON_CLIENT_CONFIG", &config).args(["task", "list", "--context", "gone"]);
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("third") && text(&out).contains("nowhere"), "names the contexts: {}", text(&out));

    // delete, then it is gone.
    cli.refused(1, &["task", "delete", &id, "--if-match", &stale], "412");
    cli.expect(0, &["task", "delete", &id]);
    cli.refused(1, &["task", "get", &id], "not found");

    // completion scripts for the three shells.
    for shell in ["bash", "zsh", "fish"] {
        let script = cli.expect(0, &["completion", shell]);
        assert!(script.contains("raftcron") && script.contains("trigger"), "{shell}: {script}");
    }
}

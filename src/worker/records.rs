//! What the agent keeps on disk in its state dir, so that a crash and restart of the agent
//! never leaves a job running unsupervised or a finished run unreported:
//!
//! - `runs/<run>-<attempt>.json`: a [`RunRecord`] for every run whose shim it started,
//!   written before the run is reported started and removed once it ended. An agent that
//!   starts finds the records its previous incarnation left and kills what they name
//!   before it registers (registering gives those runs up).
//! - `reports/<run>-<attempt>.json`: a run's final report until the cluster accepted or
//!   refused it, retried across outages and restarts.
//!
//! Files are written to a temporary name and renamed, so a record is either whole or
//! absent. Reports are also synced (file and directory) before they count as kept: they
//! must outlive a power cut. Run records are not: they name processes of this boot of the
//! kernel, which a power cut ends with every process they could name (a record from an
//! earlier boot is ignored), and what an agent crash leaves in the page cache the next
//! agent reads. Syncing them cost four fsyncs per run on the path to its start. (What
//! this gives up: a write error the kernel reports only at writeback goes unseen, and a
//! record a power cut left empty is dropped; either way the run is re-queued when the
//! agent's lease times out rather than at its next registration — later, never twice.)
//! The directories are private to the agent's user (mode 0700).

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::shim::{kill_cgroup, process_start_time, session_members};

/// One supervised run, as the agent recorded it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub run_id: u64,
    pub attempt: u32,
    pub shim_pid: u32,
    pub shim_start_time: u64,
    pub cgroup: Option<PathBuf>,
    /// The job's pid (its process group id) and start time, once it started.
    pub job: Option<(u32, u64)>,
    /// The kernel's boot id when the record was written: after a reboot nothing it names
    /// can be alive, and its pids and start times mean other processes.
    #[serde(default)]
    pub boot_id: Option<String>,
}

/// This boot of the kernel (`/proc/sys/kernel/random/boot_id`).
pub fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok().map(|s| s.trim().to_string())
}

/// A final report waiting to be accepted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingReport {
    pub run_id: u64,
    pub attempt: u32,
    pub body: Value,
}

/// The agent's state dir; `None` keeps nothing (in-process tests that do not need it).
#[derive(Debug, Clone)]
pub struct Records {
    dir: Option<PathBuf>,
}

impl Records {
    pub fn open(dir: Option<&Path>) -> io::Result<Records> {
        if let Some(dir) = dir {
            for sub in ["runs", "reports"] {
                let d = dir.join(sub);
                std::fs::create_dir_all(&d)
                    .map_err(|e| io::Error::new(e.kind(), format!("cannot create {}: {e}", d.display())))?;
            }
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        }
        Ok(Records { dir: dir.map(Path::to_path_buf) })
    }

    fn path(&self, kind: &str, run_id: u64, attempt: u32) -> Option<PathBuf> {
        self.dir.as_ref().map(|d| d.join(kind).join(format!("{run_id}-{attempt}.json")))
    }

    pub fn put_run(&self, record: &RunRecord) -> io::Result<()> {
        match self.path("runs", record.run_id, record.attempt) {
            Some(p) => write_atomic(&p, &serde_json::to_vec(record)?, false),
            None => Ok(()),
        }
    }

    pub fn remove_run(&self, run_id: u64, attempt: u32) {
        if let Some(p) = self.path("runs", run_id, attempt) {
            let _ = std::fs::remove_file(p);
        }
    }

    pub fn put_report(&self, report: &PendingReport) -> io::Result<()> {
        match self.path("reports", report.run_id, report.attempt) {
            Some(p) => write_atomic(&p, &serde_json::to_vec(report)?, true),
            None => Ok(()),
        }
    }

    pub fn remove_report(&self, run_id: u64, attempt: u32) {
        if let Some(p) = self.path("reports", run_id, attempt) {
            let _ = std::fs::remove_file(p);
        }
    }

    pub fn pending_reports(&self) -> Vec<PendingReport> {
        self.read_all("reports")
    }

    /// Kills everything the run records of a previous incarnation name, removes the
    /// records, and returns the runs they were for.
    pub fn kill_survivors(&self) -> Vec<(u64, u32)> {
        let mut killed = Vec::new();
        for record in self.read_all::<RunRecord>("runs") {
            kill_recorded(&record);
            tracing::warn!(run_id = record.run_id, attempt = record.attempt, "killed a run left by a previous agent");
            self.remove_run(record.run_id, record.attempt);
            killed.push((record.run_id, record.attempt));
        }
        killed
    }

    fn read_all<T: for<'de> Deserialize<'de>>(&self, kind: &str) -> Vec<T> {
        let Some(dir) = &self.dir else { return Vec::new() };
        let mut out = Vec::new();
        let Ok(entries) = std::fs::read_dir(dir.join(kind)) else { return out };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            match std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
            {
                Ok(v) => out.push(v),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "unreadable agent record; removing it");
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        out
    }
}

/// Kills what one record names, checking start times so a reused pid is never hit.
pub(crate) fn kill_recorded(record: &RunRecord) {
    if record.boot_id.as_ref().is_some_and(|b| boot_id().as_ref() != Some(b)) {
        // Written before a reboot: everything it names died with that boot.
        return;
    }
    if let Some(cg) = &record.cgroup {
        kill_cgroup(cg);
    }
    let shim_now = process_start_time(record.shim_pid);
    let shim_alive = shim_now == Some(record.shim_start_time);
    if shim_alive {
        let _ = kill(Pid::from_raw(record.shim_pid as i32), Signal::SIGKILL);
    }
    // The shim's session (its pid is the session id): the job and whatever it started,
    // unless they left the session — found even when the shim died before it told the
    // job's pid. The session is the shim's while the shim lives, or while no process has
    // its pid (the kernel does not hand out a pid that still names a session); a live
    // process with that pid and another start time means the session id is someone
    // else's now.
    if record.shim_start_time > 0 && (shim_alive || shim_now.is_none()) {
        for pid in session_members(record.shim_pid, record.shim_start_time) {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
    }
    if let Some((pgid, start)) = record.job {
        // The group is ours while its leader is our job, or while the leader is gone (the
        // kernel does not reuse a pid that still names a process group). A leader with
        // another start time means the pid was reused after our group emptied.
        match process_start_time(pgid) {
            Some(t) if t != start => {}
            _ => {
                let _ = killpg(Pid::from_raw(pgid as i32), Signal::SIGKILL);
            }
        }
    }
    // The kill is asynchronous; give the kernel a moment before the caller registers.
    std::thread::sleep(Duration::from_millis(20));
}

/// Writes `bytes` to `path` whole or not at all; with `durable`, also across a power cut.
fn write_atomic(path: &Path, bytes: &[u8], durable: bool) -> io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    if durable {
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let (true, Some(parent)) = (durable, path.parent()) {
        std::fs::File::open(parent)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression test (review of the agent): a record from before a reboot named pids
    /// and start times of that boot, which now belong to other processes; it kills nothing.
    #[test]
    fn a_record_from_another_boot_kills_nothing() {
        use std::os::unix::process::CommandExt;
        let mut bystander = std::process::Command::new("sleep").arg("30").process_group(0).spawn().unwrap();
        let pid = bystander.id();
        let record = RunRecord {
            run_id: 1,
            attempt: 1,
            shim_pid: pid,
            shim_start_time: process_start_time(pid).unwrap(),
            cgroup: None,
            job: Some((pid, process_start_time(pid).unwrap())),
            boot_id: Some("a-boot-long-ago".into()),
        };
        kill_recorded(&record);
        assert!(bystander.try_wait().unwrap().is_none(), "a process of this boot was killed by an old record");
        bystander.kill().unwrap();
        bystander.wait().unwrap();
    }

    /// Regression test (review of the agent): a shim that died before it reported the
    /// job's pid left the job running when there was no cgroup to kill: the record named
    /// the shim only. The shim leads a session, and everything in it is killed.
    #[test]
    fn a_record_without_the_job_kills_the_shims_whole_session() {
        // `setsid sh` stands in for a shim: a session leader whose child is the job.
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("job");
        let script = format!("sleep 30 & echo $! > {}; wait", pidfile.display());
        let mut shim = std::process::Command::new("setsid").args(["sh", "-c", &script]).spawn().unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let job: u32 = loop {
            if let Some(pid) = std::fs::read_to_string(&pidfile).ok().and_then(|s| s.trim().parse().ok()) {
                break pid;
            }
            assert!(std::time::Instant::now() < deadline, "the job never started");
            std::thread::sleep(Duration::from_millis(10));
        };
        let record = RunRecord {
            run_id: 1,
            attempt: 1,
            shim_pid: shim.id(),
            shim_start_time: process_start_time(shim.id()).unwrap(),
            cgroup: None,
            job: None,
            boot_id: boot_id(),
        };
        kill_recorded(&record);
        shim.wait().unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        // The job is not our child: once killed it is gone (or a zombie of init's).
        while std::fs::read_to_string(format!("/proc/{job}/stat")).is_ok_and(|s| !s.contains(") Z")) {
            assert!(std::time::Instant::now() < deadline, "the job outlived its shim's record");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn records_survive_a_reopen_and_a_survivor_is_killed() {
        let dir = tempfile::tempdir().unwrap();
        let records = Records::open(Some(dir.path())).unwrap();
        use std::os::unix::process::CommandExt;
        let mut child = std::process::Command::new("sleep").arg("30").process_group(0).spawn().unwrap();
        let pid = child.id();
        let record = RunRecord {
            run_id: 7,
            attempt: 2,
            shim_pid: u32::MAX - 1,
            shim_start_time: 1,
            cgroup: None,
            job: Some((pid, process_start_time(pid).unwrap())),
            boot_id: boot_id(),
        };
        records.put_run(&record).unwrap();
        records
            .put_report(&PendingReport { run_id: 7, attempt: 2, body: serde_json::json!({"status": "succeeded"}) })
            .unwrap();

        let reopened = Records::open(Some(dir.path())).unwrap();
        assert_eq!(reopened.pending_reports().len(), 1);
        assert_eq!(reopened.kill_survivors(), vec![(7, 2)]);
        let status = child.wait().unwrap();
        assert!(!status.success(), "killed: {status}");
        assert!(reopened.kill_survivors().is_empty(), "the record is gone once handled");
        reopened.remove_report(7, 2);
        assert!(reopened.pending_reports().is_empty());
    }
}

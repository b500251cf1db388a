//! Nemeses: seeded, scheduled faults, each proven to have taken effect, then healed, then
//! timed until the cluster takes writes again.
//!
//! Families (see the README for the full table): `kill`, `kill-majority`, `kill-all`
//! (SIGKILL, restart at heal); `power`, `power-majority`, `power-all` (SIGKILL and drop
//! every unsynced byte through [`crate::lossyfs`]); `pause` (SIGSTOP); `partition`
//! (iptables inside the node namespaces: isolate the leader, halves, a bridge, one-way,
//! a majorities ring with 5+ nodes); `clock` (libfaketime offsets, bumped or strobed);
//! `flaky` (30% inbound loss); `delay` (inbound RPC and HTTP through a delaying proxy,
//! [`crate::proxy`]); `leader` (pause, delay or isolate the leader from its followers,
//! never from clients); `membership` (add the spare, remove a voter, sometimes wiping
//! it); `membership-partition` (the same while a partition is in place); `bridge-hold`
//! (5+ nodes: the old leader reaches only a bridge node, which also sees a connected
//! majority — openraft#2080's topology — held long, and writes must succeed during it);
//! `worker-kill` (SIGKILL an agent, restart at heal); `worker-pause` (SIGSTOP an agent, its
//! jobs left running); `worker-freeze` (SIGSTOP everything in a worker's namespace:
//! agent, shims, jobs); `worker-partition` (cut a worker off from every node);
//! `worker-leader` (the leader isolated from its peers with one worker that reaches only
//! it, the other workers cut off from it); `all` (a partition, a crash, a bad link and a
//! clock fault at once, plus a worker fault when workers run).
//!
//! Every fault records evidence that it took effect (packets its rules dropped, a
//! process seen stopped, a clock seen skewed through the node's HTTP `Date`, the bytes a
//! power cut dropped); a part that did not take effect is recorded as missed, and the
//! run fails (coverage). Every heal is followed by write probes until one succeeds: the
//! recovery time, bounded by a deadline.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::Rng;

use crate::history::{NemesisEvent, Recorder};
use crate::net::{in_ns, in_ns_output, node_ip, Node};
use crate::worker::Worker;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    Kill,
    KillMajority,
    KillAll,
    Power,
    PowerMajority,
    PowerAll,
    Pause,
    Partition,
    Clock,
    Flaky,
    Delay,
    Leader,
    Membership,
    MembershipPartition,
    BridgeHold,
    WorkerKill,
    WorkerPause,
    WorkerFreeze,
    WorkerPartition,
    WorkerLeader,
    All,
}

const FAMILIES: [(&str, Family); 21] = [
    ("kill", Family::Kill),
    ("kill-majority", Family::KillMajority),
    ("kill-all", Family::KillAll),
    ("power", Family::Power),
    ("power-majority", Family::PowerMajority),
    ("power-all", Family::PowerAll),
    ("pause", Family::Pause),
    ("partition", Family::Partition),
    ("clock", Family::Clock),
    ("flaky", Family::Flaky),
    ("delay", Family::Delay),
    ("leader", Family::Leader),
    ("membership", Family::Membership),
    ("membership-partition", Family::MembershipPartition),
    ("bridge-hold", Family::BridgeHold),
    ("worker-kill", Family::WorkerKill),
    ("worker-pause", Family::WorkerPause),
    ("worker-freeze", Family::WorkerFreeze),
    ("worker-partition", Family::WorkerPartition),
    ("worker-leader", Family::WorkerLeader),
    ("all", Family::All),
];

impl Family {
    pub fn parse(s: &str) -> anyhow::Result<Vec<Family>> {
        s.split(',')
            .map(|f| {
                FAMILIES.iter().find(|(name, _)| *name == f.trim()).map(|(_, fam)| *fam).ok_or_else(|| {
                    anyhow::anyhow!(
                        "unknown nemesis {f:?}; expected one of {}",
                        FAMILIES.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
                    )
                })
            })
            .collect()
    }

    pub fn name(self) -> &'static str {
        FAMILIES.iter().find(|(_, f)| *f == self).map(|(n, _)| *n).expect("every family is listed")
    }

    /// Power faults need every node's data dir on lossyfs.
    pub fn needs_lossyfs(self) -> bool {
        matches!(self, Family::Power | Family::PowerMajority | Family::PowerAll)
    }

    /// Worker faults need workers (the `runs` workload starts them).
    pub fn needs_workers(self) -> bool {
        matches!(
            self,
            Family::WorkerKill
                | Family::WorkerPause
                | Family::WorkerFreeze
                | Family::WorkerPartition
                | Family::WorkerLeader
        )
    }

    /// The smallest cluster the family makes sense on.
    pub fn min_nodes(self) -> u64 {
        if self == Family::BridgeHold {
            5
        } else {
            3
        }
    }
}

/// The leader as most nodes report it, if any.
pub async fn find_leader(nodes: &[Node]) -> Option<u64> {
    let http = reqwest::Client::builder().timeout(Duration::from_millis(800)).build().ok()?;
    let mut votes = std::collections::BTreeMap::<u64, usize>::new();
    for n in nodes.iter().filter(|n| n.child.is_some() && !n.paused) {
        let Ok(r) = http.get(format!("http://{}/api/health", n.http())).send().await else { continue };
        let Ok(v) = r.json::<serde_json::Value>().await else { continue };
        if let Some(l) = v["data"]["raft"]["leader_id"].as_u64() {
            *votes.entry(l).or_default() += 1;
        }
    }
    votes.into_iter().max_by_key(|(_, c)| *c).map(|(l, _)| l)
}

/// Timing of the fault cycle.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// How long each fault is held.
    pub fault: Duration,
    /// The calm after each recovery.
    pub calm: Duration,
    /// How long `bridge-hold` is held.
    pub bridge_hold: Duration,
    /// After a heal, writes must succeed within this.
    pub recovery: Duration,
}

/// What is currently broken, so heal knows what to undo.
#[derive(Default)]
struct Damage {
    /// Killed or powered off: restarted at heal.
    killed: Vec<u64>,
    paused: Vec<u64>,
    firewalled: BTreeSet<u64>,
    skewed: Vec<u64>,
    /// A voter removed by the membership nemesis, to add back (and the spare to remove).
    removed: Option<u64>,
    /// Nodes whose inbound traffic goes through a delay proxy, and the proxies.
    delayed: Vec<(u64, std::process::Child)>,
    /// Workers (by index) killed, or paused or frozen.
    workers_killed: Vec<usize>,
    workers_paused: Vec<usize>,
}

/// What the current fault did, for its record.
#[derive(Default)]
struct Effect {
    evidence: Vec<String>,
    missed: Vec<String>,
    /// Voters that are down (killed, paused, powered off).
    down: BTreeSet<u64>,
    /// Directed cuts `(at, from)`: `at` drops what `from` sends.
    cuts: BTreeSet<(u64, u64)>,
    /// iptables rule tags in place, checked for dropped packets at heal.
    tags: BTreeSet<&'static str>,
    delayed: bool,
    /// A clock fault to hold: the node and whether it strobes.
    clock: Option<(u64, Option<&'static str>)>,
}

/// Tags of the iptables rules each fault part adds (as `-m comment`), so the heal can
/// read how many packets each part dropped.
const TAG_PARTITION: &str = "rcj-partition";
const TAG_FLAKY: &str = "rcj-flaky";
const TAG_WORKER: &str = "rcj-worker";
/// How long a worker fault is held at least.
const WORKER_FAULT_HOLD: Duration = Duration::from_secs(10);

pub struct Nemesis<'a> {
    pub nodes: &'a mut Vec<Node>,
    pub spare: &'a mut Node,
    pub workers: &'a mut Vec<Worker>,
    pub bin: &'a Path,
    pub rng: StdRng,
    pub rec: Recorder,
    pub events: Vec<NemesisEvent>,
    timing: Timing,
    /// Whether the nodes run on lossyfs (power faults possible).
    lossy: bool,
    voters: Vec<u64>,
    damage: Damage,
    effect: Effect,
    probes: u64,
}

impl<'a> Nemesis<'a> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        nodes: &'a mut Vec<Node>,
        spare: &'a mut Node,
        workers: &'a mut Vec<Worker>,
        bin: &'a Path,
        rng: StdRng,
        rec: Recorder,
        timing: Timing,
        lossy: bool,
    ) -> Self {
        let voters = nodes.iter().map(|n| n.id).collect();
        Nemesis {
            nodes,
            spare,
            workers,
            bin,
            rng,
            rec,
            events: Vec::new(),
            timing,
            lossy,
            voters,
            damage: Damage::default(),
            effect: Effect::default(),
            probes: 0,
        }
    }

    fn ids(&self) -> Vec<u64> {
        self.nodes.iter().map(|n| n.id).collect()
    }

    /// Nodes not killed, paused or powered off by the current fault.
    fn up(&self) -> Vec<u64> {
        self.ids().into_iter().filter(|i| !self.effect.down.contains(i)).collect()
    }

    fn node(&mut self, id: u64) -> &mut Node {
        self.nodes.iter_mut().find(|n| n.id == id).expect("known node")
    }

    /// The leader (half the time) or a random node that is still up.
    async fn target(&mut self) -> (u64, &'static str) {
        let up = self.up();
        if self.rng.random_bool(0.5) {
            if let Some(l) = find_leader(self.nodes).await.filter(|l| up.contains(l)) {
                return (l, "leader");
            }
        }
        (*up.choose(&mut self.rng).expect("a node is up"), "random")
    }

    /// The leader, waiting up to 5 s for one; `None` if there is none.
    async fn leader(&mut self) -> Option<u64> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(l) = find_leader(self.nodes).await.filter(|l| self.up().contains(l)) {
                return Some(l);
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn majority(&self) -> usize {
        self.voters.len() / 2 + 1
    }

    /// Runs fault cycles over `families` until `until`.
    pub async fn run(&mut self, families: &[Family], until: Instant) -> anyhow::Result<()> {
        let mut order = families.to_vec();
        tokio::time::sleep(self.timing.calm).await;
        while Instant::now() + self.timing.fault < until {
            order.shuffle(&mut self.rng);
            for family in order.clone() {
                if Instant::now() + self.timing.fault >= until {
                    break;
                }
                self.cycle(family).await?;
                tokio::time::sleep(self.timing.calm).await;
            }
        }
        Ok(())
    }

    /// Each family once, in a seeded order, with the calm before and after each.
    pub async fn run_once(&mut self, families: &[Family]) -> anyhow::Result<()> {
        let mut order = families.to_vec();
        order.shuffle(&mut self.rng);
        tokio::time::sleep(self.timing.calm).await;
        for family in order {
            self.cycle(family).await?;
            tokio::time::sleep(self.timing.calm).await;
        }
        Ok(())
    }

    /// One fault: apply, hold, heal, wait for recovery; recorded in `events`.
    async fn cycle(&mut self, family: Family) -> anyhow::Result<()> {
        let start_ns = self.rec.now_ns();
        self.effect = Effect::default();
        let mut parts = Vec::new();
        let mut hold = self.timing.fault;
        let mut liveness = false;
        match family {
            Family::Kill => {
                let (id, why) = self.target().await;
                parts.push(self.kill(&[id], why));
            }
            Family::KillMajority => {
                let ids = self.pick(self.majority());
                parts.push(self.kill(&ids, "a majority"));
            }
            Family::KillAll => {
                let ids = self.ids();
                parts.push(self.kill(&ids, "all"));
            }
            Family::Power => {
                let (id, why) = self.target().await;
                parts.push(self.power(&[id], why)?);
            }
            Family::PowerMajority => {
                let ids = self.pick(self.majority());
                parts.push(self.power(&ids, "a majority")?);
            }
            Family::PowerAll => {
                let ids = self.ids();
                parts.push(self.power(&ids, "all")?);
            }
            Family::Pause => {
                let (id, why) = self.target().await;
                parts.push(self.pause(id, why).await);
            }
            Family::Partition => parts.push(self.partition().await?),
            Family::Clock => {
                let leader = find_leader(self.nodes).await;
                parts.push(self.clock(leader)?)
            }
            Family::Flaky => parts.push(self.flaky()?),
            Family::Delay => {
                let (id, why) = self.target().await;
                parts.push(self.delay(id, why).await?);
            }
            Family::Leader => match self.leader().await {
                None => self.effect.missed.push("no leader to aim at within 5 s".into()),
                Some(l) => match self.rng.random_range(0..3) {
                    0 => parts.push(self.pause(l, "leader").await),
                    1 => parts.push(self.delay(l, "leader").await?),
                    _ => parts.push(self.isolate(l, "leader")?),
                },
            },
            Family::Membership => parts.push(self.membership().await?),
            Family::MembershipPartition => {
                parts.push(self.partition().await?);
                parts.push(self.membership().await?);
            }
            Family::BridgeHold => {
                parts.push(self.bridge().await?);
                hold = self.timing.bridge_hold;
                liveness = true;
            }
            Family::WorkerKill => parts.push(self.worker_kill()),
            Family::WorkerPause => parts.push(self.worker_pause().await),
            Family::WorkerFreeze => parts.push(self.worker_freeze().await),
            Family::WorkerPartition => {
                let w = self.rng.random_range(0..self.workers.len());
                parts.push(self.worker_cut(w)?);
            }
            Family::WorkerLeader => parts.push(self.worker_leader().await?),
            Family::All => {
                if !self.workers.is_empty() {
                    match self.rng.random_range(0..3) {
                        0 => parts.push(self.worker_kill()),
                        1 => parts.push(self.worker_pause().await),
                        _ => parts.push(self.worker_freeze().await),
                    }
                }
                parts.push(self.partition().await?);
                let (id, why) = self.target().await;
                match self.rng.random_range(0..if self.lossy { 3 } else { 2 }) {
                    0 => parts.push(self.kill(&[id], why)),
                    1 => parts.push(self.pause(id, why).await),
                    _ => parts.push(self.power(&[id], why)?),
                }
                if self.rng.random_bool(0.5) {
                    parts.push(self.flaky()?);
                } else {
                    let (id, why) = self.target().await;
                    parts.push(self.delay(id, why).await?);
                }
                let leader = find_leader(self.nodes).await;
                parts.push(self.clock(leader)?);
            }
        }
        if family.needs_workers() {
            // Past the nodes' worker_timeout_s (6 s): the cluster gives the worker's runs
            // up and runs them elsewhere while the fault lasts, the case fencing is for.
            hold = hold.max(WORKER_FAULT_HOLD);
        }
        let quorum = self.quorum_by_design();
        let liveness_ms = self.hold(hold, liveness, start_ns).await;
        let heal_ns = self.rec.now_ns();
        self.heal().await?;
        let end_ns = self.rec.now_ns();
        let recovery_ms = self.probe_write(self.timing.recovery).await;
        let effect = std::mem::take(&mut self.effect);
        self.events.push(NemesisEvent {
            name: family.name().into(),
            start_ns,
            heal_ns,
            end_ns,
            detail: parts.join("; "),
            evidence: effect.evidence,
            missed: effect.missed,
            quorum,
            recovery_ms,
            liveness,
            liveness_ms,
        });
        Ok(())
    }

    /// `k` distinct random nodes.
    fn pick(&mut self, k: usize) -> Vec<u64> {
        let mut ids = self.ids();
        ids.shuffle(&mut self.rng);
        ids.truncate(k);
        ids.sort_unstable();
        ids
    }

    /// Whether a majority of voters stays up and pairwise connected under the current
    /// fault (lossy or delayed links count as connected).
    fn quorum_by_design(&self) -> bool {
        let up: Vec<u64> = self.voters.iter().copied().filter(|v| !self.effect.down.contains(v)).collect();
        let connected = |a: u64, b: u64| !self.effect.cuts.contains(&(a, b)) && !self.effect.cuts.contains(&(b, a));
        (0u32..1 << up.len()).any(|mask| {
            let set: Vec<u64> = up.iter().enumerate().filter(|(i, _)| mask & (1 << i) != 0).map(|(_, v)| *v).collect();
            set.len() >= self.majority() && set.iter().all(|a| set.iter().all(|b| a == b || connected(*a, *b)))
        })
    }

    /// Holds the fault for `hold`: drives a clock fault, watches for its effect, and for a
    /// liveness fault probes writes until one succeeds. Returns the liveness time.
    async fn hold(&mut self, hold: Duration, liveness: bool, start_ns: u64) -> Option<u64> {
        let end = Instant::now() + hold;
        let mut flip = false;
        let mut skew_seen = false;
        let mut live = None;
        loop {
            if let Some((id, strobe)) = self.effect.clock {
                if strobe.is_some() {
                    let _ = self.node(id).set_clock_offset(if flip { "+30s" } else { "-30s" });
                    flip = !flip;
                }
                if !skew_seen {
                    if let Some(skew) = observed_skew(&self.node(id).http()).await {
                        if skew.abs() >= 20 {
                            skew_seen = true;
                            self.effect.evidence.push(format!("n{id}'s clock was seen {skew:+} s off"));
                        }
                    }
                }
            }
            if liveness && live.is_none() && self.try_write(Duration::from_secs(1)).await {
                live = Some((self.rec.now_ns() - start_ns) / 1_000_000);
            }
            let now = Instant::now();
            if now >= end {
                break;
            }
            tokio::time::sleep((end - now).min(Duration::from_millis(300))).await;
        }
        if let Some((id, _)) = self.effect.clock {
            if !skew_seen {
                self.effect.missed.push(format!("n{id}'s clock was never seen skewed"));
            }
        }
        live
    }

    fn kill(&mut self, ids: &[u64], why: &str) -> String {
        for &id in ids {
            let node = self.node(id);
            if !node.running() {
                self.effect.missed.push(format!("kill: n{id} was not running"));
                continue;
            }
            let pid = node.pid().unwrap_or(0);
            node.kill();
            self.effect.evidence.push(format!("n{id} (pid {pid}) killed"));
            self.damage.killed.push(id);
            self.effect.down.insert(id);
        }
        format!("SIGKILL {} ({why})", list(ids))
    }

    fn power(&mut self, ids: &[u64], why: &str) -> anyhow::Result<String> {
        if !self.lossy {
            anyhow::bail!("power faults need the nodes on lossyfs");
        }
        for &id in ids {
            let node = self.node(id);
            if !node.running() {
                self.effect.missed.push(format!("power: n{id} was not running"));
                continue;
            }
            let dropped = node.power_off()?;
            if !dropped.contains("power off") {
                self.effect.missed.push(format!("power: n{id}'s lossyfs did not report its power-off: {dropped}"));
            } else if dropped.contains("dropped 0 unsynced bytes") {
                self.effect.missed.push(format!("power: n{id} had nothing unsynced: the cut was a plain kill"));
            }
            self.effect.evidence.push(format!("n{id}: {dropped}"));
            self.damage.killed.push(id);
            self.effect.down.insert(id);
        }
        Ok(format!("power off {} ({why})", list(ids)))
    }

    async fn pause(&mut self, id: u64, why: &str) -> String {
        let node = self.node(id);
        if !node.running() {
            self.effect.missed.push(format!("pause: n{id} was not running"));
            return format!("SIGSTOP n{id} ({why}): not running");
        }
        node.pause();
        let pid = node.pid().unwrap_or(0);
        self.damage.paused.push(id);
        self.effect.down.insert(id);
        let deadline = Instant::now() + Duration::from_secs(1);
        loop {
            if crate::net::is_stopped(pid) {
                self.effect.evidence.push(format!("n{id} (pid {pid}) seen stopped"));
                break;
            }
            if Instant::now() > deadline {
                self.effect.missed.push(format!("pause: n{id} (pid {pid}) never seen stopped"));
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        format!("SIGSTOP n{id} ({why})")
    }

    /// Drops, at each `(at, from)`, what `from` sends to `at`.
    fn cut(&mut self, pairs: &[(u64, u64)], tag: &'static str) -> anyhow::Result<()> {
        for &(at, from) in pairs {
            let from_ip = node_ip(from);
            in_ns(at, &["iptables", "-A", "INPUT", "-s", &from_ip, "-m", "comment", "--comment", tag, "-j", "DROP"])?;
            self.damage.firewalled.insert(at);
            self.effect.cuts.insert((at, from));
        }
        self.effect.tags.insert(tag);
        Ok(())
    }

    /// Cuts `id` off from every other node in both directions; clients still reach it.
    fn isolate(&mut self, id: u64, why: &str) -> anyhow::Result<String> {
        let rest: Vec<u64> = self.ids().into_iter().filter(|i| *i != id).collect();
        let mut pairs = both_ways(&[id], &rest);
        pairs.sort_unstable();
        self.cut(&pairs, TAG_PARTITION)?;
        Ok(format!("isolate n{id} ({why}) from its peers"))
    }

    async fn partition(&mut self) -> anyhow::Result<String> {
        let ids = self.ids();
        let mut kinds = vec!["isolate-leader", "halves", "bridge", "one-way"];
        if ids.len() >= 5 {
            kinds.push("majorities-ring");
        }
        let kind = kinds.choose(&mut self.rng).copied().expect("kinds");
        let (pairs, desc): (Vec<(u64, u64)>, String) = match kind {
            "isolate-leader" => {
                let l = find_leader(self.nodes).await.unwrap_or(ids[0]);
                return self.isolate(l, "leader");
            }
            "halves" => {
                let mut shuffled = ids.clone();
                shuffled.shuffle(&mut self.rng);
                let (a, b) = shuffled.split_at(ids.len() / 2);
                (both_ways(a, b), format!("split {a:?} | {b:?}"))
            }
            "bridge" => {
                // One node sees both sides; the sides do not see each other. The bridge
                // is never the leader: followers do not talk to each other, so a cut
                // between the leader's followers alone would drop nothing.
                let leader = find_leader(self.nodes).await;
                let mut shuffled = ids.clone();
                shuffled.shuffle(&mut self.rng);
                if shuffled[0] == leader.unwrap_or(0) {
                    shuffled.swap(0, 1);
                }
                let bridge = shuffled[0];
                let rest = &shuffled[1..];
                let (a, b) = rest.split_at(rest.len() / 2);
                (both_ways(a, b), format!("bridge n{bridge} between {a:?} and {b:?}"))
            }
            "majorities-ring" => {
                // Nodes in a shuffled ring each see only the nodes within `k` places: with
                // 2k + 1 > n / 2, every node sees a majority, and no two see the same one
                // (5 nodes: each sees its two neighbours).
                let mut ring = ids.clone();
                ring.shuffle(&mut self.rng);
                let n = ring.len();
                let k = (n / 2).div_ceil(2);
                let mut p = Vec::new();
                for (i, a) in ring.iter().enumerate() {
                    for (j, b) in ring.iter().enumerate() {
                        let d = (i + n - j) % n;
                        if d.min(n - d) > k {
                            p.push((*a, *b));
                        }
                    }
                }
                (p, format!("majorities ring {ring:?}"))
            }
            _ => {
                // One-way: the leader hears nobody, but everybody hears the leader.
                let l = find_leader(self.nodes).await.unwrap_or(ids[0]);
                let rest: Vec<u64> = ids.iter().copied().filter(|i| *i != l).collect();
                let p = rest.iter().map(|r| (l, *r)).collect();
                (p, format!("one-way: n{l} drops all inbound from peers"))
            }
        };
        self.cut(&pairs, TAG_PARTITION)?;
        Ok(desc)
    }

    /// openraft#2080's topology: the old leader reaches only the bridge; the bridge and
    /// two more nodes form a connected majority; the rest are isolated.
    async fn bridge(&mut self) -> anyhow::Result<String> {
        let ids = self.ids();
        if ids.len() < 5 {
            anyhow::bail!("bridge-hold needs at least 5 nodes, not {}", ids.len());
        }
        let Some(l) = self.leader().await else {
            self.effect.missed.push("bridge-hold: no leader to aim at within 5 s".into());
            return Ok("bridge-hold: no leader".into());
        };
        let mut rest: Vec<u64> = ids.iter().copied().filter(|i| *i != l).collect();
        rest.shuffle(&mut self.rng);
        let (bridge, a, b) = (rest[0], rest[1], rest[2]);
        let isolated = &rest[3..];
        let kept: BTreeSet<(u64, u64)> =
            [(l, bridge), (bridge, a), (bridge, b), (a, b)].into_iter().flat_map(|(x, y)| [(x, y), (y, x)]).collect();
        let pairs: Vec<(u64, u64)> = ids
            .iter()
            .flat_map(|x| ids.iter().map(move |y| (*x, *y)))
            .filter(|(x, y)| x != y && !kept.contains(&(*x, *y)))
            .collect();
        self.cut(&pairs, TAG_PARTITION)?;
        Ok(format!(
            "old leader n{l} sees only bridge n{bridge}; n{bridge}, n{a}, n{b} connected; {isolated:?} isolated"
        ))
    }

    fn flaky(&mut self) -> anyhow::Result<String> {
        let id = *self.up().choose(&mut self.rng).expect("a node is up");
        let rule = ["iptables", "-A", "INPUT", "-m", "statistic", "--mode", "random", "--probability", "0.3"];
        in_ns(id, &[&rule[..], &["-m", "comment", "--comment", TAG_FLAKY, "-j", "DROP"]].concat())?;
        self.damage.firewalled.insert(id);
        self.effect.tags.insert(TAG_FLAKY);
        Ok(format!("drop 30% of inbound at n{id}"))
    }

    /// Delays a node's inbound RPC and HTTP traffic by 50–400 ms (plus up to 50 ms of
    /// jitter) through a proxy in its namespace.
    async fn delay(&mut self, id: u64, why: &str) -> anyhow::Result<String> {
        if self.damage.delayed.iter().any(|(d, _)| *d == id) {
            return Ok(format!("n{id} already delayed"));
        }
        let delay_ms = self.rng.random_range(50..=400u64);
        let ip = node_ip(id);
        let exe = std::env::current_exe()?;
        let proxy = std::process::Command::new("ip")
            .args(["netns", "exec", &crate::net::node_ns(id)])
            .arg(exe)
            .args(["delay-proxy", "--delay-ms", &delay_ms.to_string(), "--jitter-ms", "50"])
            .args(["--map", &format!("{ip}:19080={ip}:9080"), "--map", &format!("{ip}:18080={ip}:8080")])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        self.damage.delayed.push((id, proxy));
        tokio::time::sleep(Duration::from_millis(200)).await;
        // NAT applies to new connections only: redirect those, and reset the established
        // ones (peers' long-lived RPC connections) so they reconnect through the proxy.
        // Redirected packets reach INPUT with the proxy's port, so the reset spares them;
        // the proxy's own upstream connections come in on `lo`.
        let veth = format!("rcjv{id}");
        for (port, to) in [("9080", "19080"), ("8080", "18080")] {
            let redirect = ["-t", "nat", "-A", "PREROUTING", "-p", "tcp", "--dport", port, "-j", "REDIRECT"];
            in_ns(id, &[&["iptables"][..], &redirect, &["--to-ports", to]].concat())?;
            let reset = ["-A", "INPUT", "-i", &veth, "-p", "tcp", "--dport", port, "-j", "REJECT"];
            in_ns(id, &[&["iptables"][..], &reset, &["--reject-with", "tcp-reset"]].concat())?;
        }
        self.damage.firewalled.insert(id);
        self.effect.delayed = true;
        Ok(format!("delay n{id}'s inbound by {delay_ms} ms ({why})"))
    }

    /// Sets up a clock fault on a node that is up; `hold` drives and watches it. The detail
    /// says whether the node led when the fault began (`leader`, if known): a leader whose
    /// clock runs ahead fires early by design, a follower's clock must change nothing (the
    /// schedule checker holds both).
    fn clock(&mut self, leader: Option<u64>) -> anyhow::Result<String> {
        let id = *self.up().choose(&mut self.rng).expect("a node is up");
        self.damage.skewed.push(id);
        let role = if leader == Some(id) { " (leader)" } else { "" };
        if self.rng.random_bool(0.5) {
            let offset = if self.rng.random_bool(0.5) { "+90s" } else { "-60s" };
            self.node(id).set_clock_offset(offset)?;
            self.effect.clock = Some((id, None));
            Ok(format!("clock of n{id}{role} bumped {offset}"))
        } else {
            self.effect.clock = Some((id, Some("strobe")));
            Ok(format!("clock of n{id}{role} strobed between -30s and +30s"))
        }
    }

    /// A membership change through the API (any node that answers), retried for up to
    /// 30 s: it needs a quorum, which every fault it is combined with leaves available.
    /// Done once node `member` is a voter (`voter`) or no member at all (`!voter`) in the
    /// view of a node that knows a leader: an attempt whose answer was lost may have applied,
    /// and its retry is then refused ("already a voter", "not a member").
    async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
        member: u64,
        voter: bool,
    ) -> anyhow::Result<()> {
        use crate::workload::Outcome;
        let client = crate::workload::Client::new(self.nodes.iter().map(Node::http).collect());
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut last = String::new();
        while Instant::now() < deadline {
            for node in &client.nodes {
                // Judged by effect, also after a 2xx: an add answered 202 left a learner that
                // is still catching up, and the same request again promotes it.
                match client.request(method.clone(), node, path, body.clone(), None).await {
                    Outcome::Ok(v) => last = format!("answered {v}"),
                    Outcome::Fail(e) | Outcome::Info(e) => last = e,
                }
                if let Outcome::Ok(view) = client.request(reqwest::Method::GET, node, "/api/cluster", None, None).await
                {
                    let role = view["members"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .find(|m| m["id"] == member)
                        .map(|m| m["membership"].as_str().unwrap_or("").to_string());
                    let done = if voter { role.as_deref() == Some("voter") } else { role.is_none() };
                    if done && !view["leader_id"].is_null() {
                        return Ok(());
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        anyhow::bail!("membership change {method} {path} did not complete in 30 s: {last}")
    }

    fn add_body(node: &Node) -> serde_json::Value {
        serde_json::json!({"id": node.id, "rpc_addr": format!("{}:9080", node_ip(node.id)), "http_addr": node.http()})
    }

    /// Adds the spare first, then removes a random original voter (wiping its disk half
    /// the time), so the voter count never drops below where it started.
    async fn membership(&mut self) -> anyhow::Result<String> {
        let spare = self.spare.id;
        self.admin(reqwest::Method::POST, "/api/cluster/nodes", Some(Self::add_body(self.spare)), spare, true).await?;
        self.voters.push(spare);
        self.effect.evidence.push(format!("n{spare} added as a voter"));
        let victim = *self.ids().choose(&mut self.rng).expect("nodes");
        self.admin(reqwest::Method::DELETE, &format!("/api/cluster/nodes/{victim}"), None, victim, false).await?;
        self.voters.retain(|v| *v != victim);
        self.effect.evidence.push(format!("n{victim} removed"));
        self.damage.removed = Some(victim);
        if self.rng.random_bool(0.5) {
            let bin = self.bin.to_path_buf();
            let node = self.node(victim);
            node.wipe()?;
            node.start(&bin)?;
            return Ok(format!("added spare n{spare}, removed n{victim} and wiped its disk"));
        }
        Ok(format!("added spare n{spare}, removed n{victim}"))
    }

    /// Packets dropped so far by the rules tagged `tag` in `id`'s namespace.
    fn dropped(id: u64, tag: &str, table: &str, chain: &str) -> u64 {
        let listing = in_ns_output(id, &["iptables", "-t", table, "-L", chain, "-v", "-x", "-n"]).unwrap_or_default();
        listing
            .lines()
            .filter(|l| l.contains(tag))
            .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
            .sum()
    }

    /// Undoes everything: firewall rules (after reading what they dropped), clocks,
    /// pauses, kills, membership.
    pub async fn heal(&mut self) -> anyhow::Result<()> {
        let d = std::mem::take(&mut self.damage);
        for tag in std::mem::take(&mut self.effect.tags) {
            let n: u64 = d.firewalled.iter().map(|id| Self::dropped(*id, tag, "filter", "INPUT")).sum();
            if n > 0 {
                self.effect.evidence.push(format!("{tag} rules dropped {n} packets"));
            } else {
                self.effect.missed.push(format!("{tag} rules dropped nothing"));
            }
        }
        if self.effect.delayed {
            let n: u64 = d.delayed.iter().map(|(id, _)| Self::dropped(*id, "REDIRECT", "nat", "PREROUTING")).sum();
            if n > 0 {
                self.effect.evidence.push(format!("{n} connections redirected through the delay proxy"));
            } else {
                self.effect.missed.push("no connection went through the delay proxy".into());
            }
        }
        for id in &d.firewalled {
            in_ns(*id, &["iptables", "-F", "INPUT"])?;
        }
        // New connections go direct again; the proxy's own die with it and reconnect.
        for (id, mut proxy) in d.delayed {
            in_ns(id, &["iptables", "-t", "nat", "-F", "PREROUTING"])?;
            let _ = proxy.kill();
            let _ = proxy.wait();
        }
        for id in d.skewed {
            self.node(id).set_clock_offset("+0s")?;
        }
        for id in d.paused {
            self.node(id).resume();
        }
        for w in d.workers_paused {
            self.workers[w].resume();
        }
        let node_ids = self.ids();
        for w in d.workers_killed {
            let bin = self.bin.to_path_buf();
            self.workers[w].start(&bin, &node_ids)?;
        }
        for id in d.killed {
            let bin = self.bin.to_path_buf();
            self.node(id).start(&bin)?;
        }
        if let Some(victim) = d.removed {
            let body = Self::add_body(self.nodes.iter().find(|n| n.id == victim).expect("known node"));
            self.admin(reqwest::Method::POST, "/api/cluster/nodes", Some(body), victim, true).await?;
            self.voters.push(victim);
            let spare = self.spare.id;
            self.admin(reqwest::Method::DELETE, &format!("/api/cluster/nodes/{spare}"), None, spare, false).await?;
            self.voters.retain(|v| *v != self.spare.id);
            // Back to an empty spare, ready to be added next time.
            let bin = self.bin.to_path_buf();
            self.spare.wipe()?;
            self.spare.start(&bin)?;
        }
        self.voters.sort_unstable();
        Ok(())
    }

    /// A random worker that runs (not already killed, paused or frozen).
    fn some_worker(&mut self) -> Option<usize> {
        let d = &self.damage;
        let up: Vec<usize> = (0..self.workers.len())
            .filter(|w| !d.workers_killed.contains(w) && !d.workers_paused.contains(w))
            .collect();
        up.choose(&mut self.rng).copied()
    }

    fn worker_kill(&mut self) -> String {
        let Some(w) = self.some_worker() else {
            self.effect.missed.push("worker-kill: no running worker".into());
            return "worker-kill: no running worker".into();
        };
        let worker = &mut self.workers[w];
        let (name, pid) = (worker.name(), worker.pid().unwrap_or(0));
        if !worker.running() {
            self.effect.missed.push(format!("worker-kill: {name} was not running"));
        }
        worker.kill();
        self.effect.evidence.push(format!("{name} (pid {pid}) killed"));
        self.damage.workers_killed.push(w);
        format!("SIGKILL worker {name}")
    }

    /// SIGSTOP one agent; its jobs go on under their shims.
    async fn worker_pause(&mut self) -> String {
        let Some(w) = self.some_worker() else {
            self.effect.missed.push("worker-pause: no running worker".into());
            return "worker-pause: no running worker".into();
        };
        let worker = &mut self.workers[w];
        let (name, pid) = (worker.name(), worker.pid().unwrap_or(0));
        worker.pause();
        self.damage.workers_paused.push(w);
        tokio::time::sleep(Duration::from_millis(100)).await;
        if crate::net::is_stopped(pid) {
            self.effect.evidence.push(format!("{name}'s agent (pid {pid}) seen stopped"));
        } else {
            self.effect.missed.push(format!("worker-pause: {name}'s agent (pid {pid}) never seen stopped"));
        }
        format!("SIGSTOP the agent of {name}, its jobs left running")
    }

    /// SIGSTOP everything in the busiest worker's namespace: agent, shims, jobs. Waits up
    /// to 10 s for a worker that runs a job (after a whole-cluster fault the queue may be
    /// empty for a moment).
    async fn worker_freeze(&mut self) -> String {
        let Some(first) = self.some_worker() else {
            self.effect.missed.push("worker-freeze: no running worker".into());
            return "worker-freeze: no running worker".into();
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        let busiest = loop {
            let busiest = (0..self.workers.len())
                .filter(|w| !self.damage.workers_killed.contains(w) && !self.damage.workers_paused.contains(w))
                .max_by_key(|w| crate::net::ns_pids(self.workers[*w].ns_id()).len())
                .unwrap_or(first);
            if crate::net::ns_pids(self.workers[busiest].ns_id()).len() > 1 || Instant::now() > deadline {
                break busiest;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let worker = &mut self.workers[busiest];
        let name = worker.name();
        let stopped = worker.freeze();
        self.damage.workers_paused.push(busiest);
        if stopped > 1 {
            self.effect.evidence.push(format!("{name}: {stopped} processes stopped (agent, shims, jobs)"));
        } else {
            self.effect.missed.push(format!("worker-freeze: {name} ran no job to freeze ({stopped} process stopped)"));
        }
        format!("freeze {name} with its jobs")
    }

    /// Cuts worker `w` off from every node, both ways.
    fn worker_cut(&mut self, w: usize) -> anyhow::Result<String> {
        let ns = self.workers[w].ns_id();
        let ids = self.ids();
        self.cut(&both_ways(&[ns], &ids), TAG_WORKER)?;
        Ok(format!("cut {} off from every node", self.workers[w].name()))
    }

    /// The leader isolated from its peers, with one worker that reaches only it; the
    /// other workers reach only the majority. The old leader must stop renewing that
    /// worker's lease, and the majority may re-run its runs only once the shim killed them.
    async fn worker_leader(&mut self) -> anyhow::Result<String> {
        let Some(l) = self.leader().await else {
            self.effect.missed.push("worker-leader: no leader to aim at within 5 s".into());
            return Ok("worker-leader: no leader".into());
        };
        let isolated = self.isolate(l, "leader")?;
        let w = self.rng.random_range(0..self.workers.len());
        let rest: Vec<u64> = self.ids().into_iter().filter(|i| *i != l).collect();
        let with_leader = self.workers[w].ns_id();
        let others: Vec<u64> = self.workers.iter().map(Worker::ns_id).filter(|ns| *ns != with_leader).collect();
        let mut pairs = both_ways(&[with_leader], &rest);
        pairs.extend(both_ways(&others, &[l]));
        self.cut(&pairs, TAG_WORKER)?;
        Ok(format!("{isolated}; {} reaches only n{l}, the other workers only the rest", self.workers[w].name()))
    }

    /// One write (a task create) through the next node in turn; whether it succeeded.
    async fn try_write(&mut self, timeout: Duration) -> bool {
        self.probes += 1;
        let nodes: Vec<String> = self.nodes.iter().map(Node::http).collect();
        let node = &nodes[self.probes as usize % nodes.len()];
        let Ok(http) = reqwest::Client::builder().timeout(timeout).build() else { return false };
        let body =
            serde_json::json!({"name": format!("probe-{}", self.probes), "executor": "shell", "command": "true"});
        http.post(format!("http://{node}/api/tasks"))
            .bearer_auth(crate::net::API_KEY)
            .json(&body)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    }

    /// Writes until one succeeds; milliseconds it took, `None` past `within`.
    async fn probe_write(&mut self, within: Duration) -> Option<u64> {
        let started = Instant::now();
        while started.elapsed() < within {
            if self.try_write(Duration::from_secs(1)).await {
                return Some(started.elapsed().as_millis() as u64);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        None
    }
}

fn both_ways(a: &[u64], b: &[u64]) -> Vec<(u64, u64)> {
    a.iter().flat_map(|x| b.iter().flat_map(move |y| [(*x, *y), (*y, *x)])).collect()
}

fn list(ids: &[u64]) -> String {
    ids.iter().map(|i| format!("n{i}")).collect::<Vec<_>>().join(", ")
}

/// How far a node's wall clock is off, in seconds, from the `timestamp` of its response
/// envelope (the node's own clock, read as it answers; hyper's `Date` header is cached
/// and lags a clock set back until the cached value expires).
async fn observed_skew(http_addr: &str) -> Option<i64> {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(1)).build().ok()?;
    let resp = client.get(format!("http://{http_addr}/api/health")).send().await.ok()?;
    let body: serde_json::Value = resp.json().await.ok()?;
    let at = chrono::DateTime::parse_from_rfc3339(body["timestamp"].as_str()?).ok()?;
    Some((at.with_timezone(&chrono::Utc) - chrono::Utc::now()).num_seconds())
}

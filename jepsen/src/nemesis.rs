//! Nemeses: seeded, scheduled faults, each followed by a heal.
//!
//! Families: `kill` (SIGKILL + restart: the leader or a random node), `pause`
//! (SIGSTOP/SIGCONT), `partition` (iptables inside the node namespaces: isolate the leader,
//! a random minority/majority split, a bridge, a one-way cut, and with 5 or more nodes a
//! majorities ring), `clock` (libfaketime offset file: bump forwards or backwards, or
//! strobe), `flaky` (iptables `statistic` drops of 30% of a node's inbound packets),
//! `delay` (a node's inbound RPC and HTTP connections redirected through a delaying TCP
//! proxy, [`crate::proxy`]), `membership` (add the spare node, remove a voter —
//! sometimes wiping its disk — then add it back and remove the spare; the cluster never
//! has fewer than its initial number of voters), and `all` (several at once; membership
//! churn is kept out of `all` so that a partition cannot strand a half-done change).

use std::path::Path;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::Rng;

use crate::history::{NemesisEvent, Recorder};
use crate::net::{in_ns, node_ip, Node};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    Kill,
    Pause,
    Partition,
    Clock,
    Flaky,
    Delay,
    Membership,
    All,
}

impl Family {
    pub fn parse(s: &str) -> anyhow::Result<Vec<Family>> {
        s.split(',')
            .map(|f| match f.trim() {
                "kill" => Ok(Family::Kill),
                "pause" => Ok(Family::Pause),
                "partition" => Ok(Family::Partition),
                "clock" => Ok(Family::Clock),
                "flaky" => Ok(Family::Flaky),
                "delay" => Ok(Family::Delay),
                "membership" => Ok(Family::Membership),
                "all" => Ok(Family::All),
                other => anyhow::bail!(
                    "unknown nemesis {other:?}; expected kill, pause, partition, clock, flaky, delay, membership, all"
                ),
            })
            .collect()
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

/// What is currently broken, so heal knows what to undo.
#[derive(Default)]
struct Damage {
    killed: Vec<u64>,
    paused: Vec<u64>,
    firewalled: Vec<u64>,
    skewed: Vec<u64>,
    /// A voter removed by the membership nemesis, to add back (and the spare to remove).
    removed: Option<u64>,
    /// Nodes whose inbound traffic goes through a delay proxy, and the proxies.
    delayed: Vec<(u64, std::process::Child)>,
}

pub struct Nemesis<'a> {
    pub nodes: &'a mut Vec<Node>,
    pub spare: &'a mut Node,
    pub bin: &'a Path,
    pub rng: StdRng,
    pub rec: Recorder,
    pub events: Vec<NemesisEvent>,
    damage: Damage,
}

impl<'a> Nemesis<'a> {
    pub fn new(nodes: &'a mut Vec<Node>, spare: &'a mut Node, bin: &'a Path, rng: StdRng, rec: Recorder) -> Self {
        Nemesis { nodes, spare, bin, rng, rec, events: Vec::new(), damage: Damage::default() }
    }

    fn ids(&self) -> Vec<u64> {
        self.nodes.iter().map(|n| n.id).collect()
    }

    fn node(&mut self, id: u64) -> &mut Node {
        self.nodes.iter_mut().find(|n| n.id == id).expect("known node")
    }

    async fn target(&mut self) -> (u64, &'static str) {
        if self.rng.random_bool(0.5) {
            if let Some(l) = find_leader(self.nodes).await {
                return (l, "leader");
            }
        }
        let ids = self.ids();
        (*ids.choose(&mut self.rng).expect("nodes"), "random")
    }

    /// Runs fault/heal cycles over `families` until `until`.
    pub async fn run(
        &mut self,
        families: &[Family],
        until: Instant,
        fault: Duration,
        calm: Duration,
    ) -> anyhow::Result<()> {
        let mut order = families.to_vec();
        tokio::time::sleep(calm).await;
        while Instant::now() + fault < until {
            order.shuffle(&mut self.rng);
            for family in order.clone() {
                if Instant::now() + fault >= until {
                    break;
                }
                let start = self.rec.now_ns();
                let detail = self.apply(family, fault).await?;
                self.heal().await?;
                self.events.push(NemesisEvent {
                    name: format!("{family:?}").to_lowercase(),
                    start_ns: start,
                    end_ns: self.rec.now_ns(),
                    detail,
                });
                tokio::time::sleep(calm).await;
            }
        }
        Ok(())
    }

    /// Applies one fault and holds it for `hold`.
    async fn apply(&mut self, family: Family, hold: Duration) -> anyhow::Result<String> {
        let detail = match family {
            Family::Kill => self.kill().await?,
            Family::Pause => self.pause().await,
            Family::Partition => self.partition().await?,
            Family::Clock => return self.clock(hold).await,
            Family::Flaky => self.flaky()?,
            Family::Delay => self.delay().await?,
            Family::Membership => self.membership().await?,
            Family::All => {
                let mut parts = vec![self.partition().await?];
                if self.rng.random_bool(0.5) {
                    parts.push(self.kill().await?);
                } else {
                    parts.push(self.pause().await);
                }
                if self.rng.random_bool(0.5) {
                    parts.push(self.flaky()?);
                } else {
                    parts.push(self.delay().await?);
                }
                let clock = self.clock(hold).await?;
                parts.push(clock);
                return Ok(parts.join("; "));
            }
        };
        tokio::time::sleep(hold).await;
        Ok(detail)
    }

    async fn kill(&mut self) -> anyhow::Result<String> {
        let (id, why) = self.target().await;
        self.node(id).kill();
        self.damage.killed.push(id);
        Ok(format!("SIGKILL n{id} ({why})"))
    }

    async fn pause(&mut self) -> String {
        let (id, why) = self.target().await;
        if !self.damage.killed.contains(&id) {
            self.node(id).pause();
            self.damage.paused.push(id);
        }
        format!("SIGSTOP n{id} ({why})")
    }

    fn drop_from(&mut self, at: u64, from: u64) -> anyhow::Result<()> {
        in_ns(at, &["iptables", "-A", "INPUT", "-s", &node_ip(from), "-j", "DROP"])?;
        self.damage.firewalled.push(at);
        Ok(())
    }

    async fn partition(&mut self) -> anyhow::Result<String> {
        let ids = self.ids();
        let mut kinds = vec!["isolate-leader", "halves", "bridge", "one-way"];
        if ids.len() >= 5 {
            kinds.push("majorities-ring");
        }
        let kind = kinds.choose(&mut self.rng).copied().expect("kinds");
        let cut = |a: &[u64], b: &[u64]| -> Vec<(u64, u64)> {
            a.iter().flat_map(|x| b.iter().map(move |y| (*x, *y))).collect()
        };
        let (pairs, desc): (Vec<(u64, u64)>, String) = match kind {
            "isolate-leader" => {
                let l = find_leader(self.nodes).await.unwrap_or(ids[0]);
                let rest: Vec<u64> = ids.iter().copied().filter(|i| *i != l).collect();
                let mut p = cut(&[l], &rest);
                p.extend(cut(&rest, &[l]));
                (p, format!("isolate leader n{l}"))
            }
            "halves" => {
                let mut shuffled = ids.clone();
                shuffled.shuffle(&mut self.rng);
                let (a, b) = shuffled.split_at(ids.len() / 2);
                let mut p = cut(a, b);
                p.extend(cut(b, a));
                (p, format!("split {a:?} | {b:?}"))
            }
            "bridge" => {
                // One node sees both sides; the sides do not see each other.
                let mut shuffled = ids.clone();
                shuffled.shuffle(&mut self.rng);
                let bridge = shuffled[0];
                let rest = &shuffled[1..];
                let (a, b) = rest.split_at(rest.len() / 2);
                let mut p = cut(a, b);
                p.extend(cut(b, a));
                (p, format!("bridge n{bridge} between {a:?} and {b:?}"))
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
                (cut(&[l], &rest), format!("one-way: n{l} drops all inbound from peers"))
            }
        };
        for (at, from) in pairs {
            self.drop_from(at, from)?;
        }
        Ok(desc)
    }

    fn flaky(&mut self) -> anyhow::Result<String> {
        let id = *self.ids().choose(&mut self.rng).expect("nodes");
        in_ns(
            id,
            &["iptables", "-A", "INPUT", "-m", "statistic", "--mode", "random", "--probability", "0.3", "-j", "DROP"],
        )?;
        self.damage.firewalled.push(id);
        Ok(format!("drop 30% of inbound at n{id}"))
    }

    /// Delays a node's inbound RPC and HTTP traffic by 50–400 ms (plus up to 50 ms of
    /// jitter) through a proxy in its namespace.
    async fn delay(&mut self) -> anyhow::Result<String> {
        let (id, why) = self.target().await;
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
        self.damage.firewalled.push(id);
        Ok(format!("delay n{id}'s inbound by {delay_ms} ms ({why})"))
    }

    async fn clock(&mut self, hold: Duration) -> anyhow::Result<String> {
        let id = *self.ids().choose(&mut self.rng).expect("nodes");
        self.damage.skewed.push(id);
        if self.rng.random_bool(0.5) {
            let offset = if self.rng.random_bool(0.5) { "+90s" } else { "-60s" };
            self.node(id).set_clock_offset(offset)?;
            tokio::time::sleep(hold).await;
            Ok(format!("clock of n{id} bumped {offset}"))
        } else {
            let end = Instant::now() + hold;
            let mut flip = false;
            while Instant::now() < end {
                self.node(id).set_clock_offset(if flip { "+30s" } else { "-30s" })?;
                flip = !flip;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            Ok(format!("clock of n{id} strobed between -30s and +30s"))
        }
    }

    /// A membership change through the API (any node that answers), retried for up to
    /// 30 s: it needs a quorum, which every other fault here leaves available.
    async fn admin(&self, method: reqwest::Method, path: &str, body: Option<serde_json::Value>) -> anyhow::Result<()> {
        let client = crate::workload::Client::new(self.nodes.iter().map(Node::http).collect());
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut last = String::new();
        while Instant::now() < deadline {
            for node in &client.nodes {
                match client.request(method.clone(), node, path, body.clone(), None).await {
                    crate::workload::Outcome::Ok(_) => return Ok(()),
                    crate::workload::Outcome::Fail(e) | crate::workload::Outcome::Info(e) => last = e,
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
        self.admin(reqwest::Method::POST, "/api/cluster/nodes", Some(Self::add_body(self.spare))).await?;
        let victim = *self.ids().choose(&mut self.rng).expect("nodes");
        self.admin(reqwest::Method::DELETE, &format!("/api/cluster/nodes/{victim}"), None).await?;
        self.damage.removed = Some(victim);
        if self.rng.random_bool(0.5) {
            let bin = self.bin.to_path_buf();
            let node = self.node(victim);
            node.wipe()?;
            node.start(&bin)?;
            return Ok(format!("added spare n{}, removed n{victim} and wiped its disk", self.spare.id));
        }
        Ok(format!("added spare n{}, removed n{victim}", self.spare.id))
    }

    /// Undoes everything: firewall rules, clocks, pauses, kills, membership.
    pub async fn heal(&mut self) -> anyhow::Result<()> {
        let d = std::mem::take(&mut self.damage);
        for id in d.firewalled {
            in_ns(id, &["iptables", "-F", "INPUT"])?;
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
        for id in d.killed {
            let bin = self.bin.to_path_buf();
            self.node(id).start(&bin)?;
        }
        if let Some(victim) = d.removed {
            let body = Self::add_body(self.nodes.iter().find(|n| n.id == victim).expect("known node"));
            self.admin(reqwest::Method::POST, "/api/cluster/nodes", Some(body)).await?;
            self.admin(reqwest::Method::DELETE, &format!("/api/cluster/nodes/{}", self.spare.id), None).await?;
            // Back to an empty spare, ready to be added next time.
            let bin = self.bin.to_path_buf();
            self.spare.wipe()?;
            self.spare.start(&bin)?;
        }
        Ok(())
    }
}

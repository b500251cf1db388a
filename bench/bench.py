#!/usr/bin/env python3
"""raftcron's side-by-side benchmark: what `scripts/bench.sh` runs.

Measures, in one run on this machine, and writes bench/results/<date>.md with SVG plots:

  writes    wrk POSTs through a follower of a 3-node loopback cluster: raftcron's
            /api/tasks against etcd's JSON gateway /v3/kv/put, ~200-byte values,
            alternating system by system, row by row, for every build given
  failover  SIGKILL of the leader -> first acknowledged write sent after the kill, through
            a survivor and through HAProxy (configured from cluster/haproxy.cfg)
  firing    `cargo bench --bench firing` (many tasks due in the same second)
  runs      3 `raftcron serve` + 2 `raftcron worker` processes: trigger->start one at a
            time, runs/s of a burst, beside the rate at which this machine forks and execs
            /bin/sh alone (`cargo bench --bench spawn`, the current build)
  scale     3 `raftcron serve` processes loaded with N tasks through the API (wrk): each
            node's RSS over the load, write rate empty and full, list/search/status
            latencies, then a 4th node added empty catching up (a snapshot and the log
            after it) while writes go on: its time, its peak RSS, the leader's write p99

A build is a (name, source dir, target dir) triple: `--build after=.:/var/tmp/t` and, for
before/after tables, `--build before=/var/tmp/wt:/var/tmp/t-before` (scripts/bench.sh
--baseline REV makes that worktree). Every loop is bounded in count and time; all traffic
stays on 127.0.0.1. Python's standard library only, except matplotlib for the plots.
"""

import argparse
import base64
import datetime
import http.client
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

KEY = "bench-admin-key-0123456789"
SECRET = "bench-cluster-secret-0123456789"
VALUE_BYTES = 200
ROOT = Path(__file__).resolve().parent.parent


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def free_ports(n):
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def request(addr, method, path, body=None, timeout=5.0, headers=None):
    """(status, parsed JSON or None); (0, None) when the node does not answer."""
    host, port = addr.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        h = {} if path.startswith("/v3/") else {"Authorization": f"Bearer {KEY}"}
        h.update(headers or {})
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            h["Content-Type"] = "application/json"
        conn.request(method, path, body=data, headers=h)
        r = conn.getresponse()
        raw = r.read()
        try:
            return r.status, json.loads(raw)
        except ValueError:
            return r.status, None
    except OSError:
        return 0, None
    finally:
        conn.close()


class Build:
    def __init__(self, spec):
        name, rest = spec.split("=", 1)
        src, target = rest.split(":", 1)
        self.name, self.src, self.target = name, Path(src).resolve(), Path(target)
        self.binary = self.target / "release" / "raftcron"


# ---------------------------------------------------------------- raftcron processes


class Processes:
    """Processes of one cluster and their temp dir: `stop` kills them and removes it."""

    def stop(self):
        for p in self.procs:
            if p and p.poll() is None:
                p.send_signal(signal.SIGKILL)
                p.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


class Raftcron(Processes):
    """A 3-node `raftcron serve` cluster on loopback, data in a temp dir."""

    def __init__(self, build, workdir, n=3, spares=0, log_filter="warn", seed=None):
        """With `seed` (a snapshot file), node 1 is restored from it (`raftcron snapshot
        restore`) and the others start empty: `join_seeded` adds them."""
        self.build, self.dir = build, Path(tempfile.mkdtemp(prefix=f"rc-{build.name}-", dir=workdir))
        self.log_filter = log_filter
        ports = free_ports(2 * (n + spares))
        self.http = [f"127.0.0.1:{p}" for p in ports[:n + spares]]
        self.rpc = [f"127.0.0.1:{p}" for p in ports[n + spares:]]
        peers = ", ".join(f'"{i + 1}={self.rpc[i]}"' for i in range(n))
        self.procs = [None] * (n + spares)
        self.configs = []
        for i in range(n + spares):
            cfg = self.dir / f"node{i + 1}.toml"
            # A spare starts with no peers: it waits, empty, until the cluster adds it.
            cfg.write_text(
                f'[node]\nid = {i + 1}\ndata_dir = "{self.dir}/data{i + 1}"\n'
                f'http_addr = "{self.http[i]}"\nrpc_addr = "{self.rpc[i]}"\n'
                f'[cluster]\npeers = [{peers if i < n else ""}]\nsecret = "{SECRET}"\n'
                # Every run of the runs phase stays readable until it is measured.
                f"[scheduler]\nrun_history_per_task = 10000\n"
            )
            self.configs.append(cfg)
        self.restore_s = None
        if seed:
            t = time.monotonic()
            subprocess.run([str(build.binary), "snapshot", "restore", str(seed), "--data-dir", str(self.dir / "data1"),
                            "--node-id", "1", "--rpc-addr", self.rpc[0], "--http-addr", self.http[0]],
                           check=True, stdout=subprocess.DEVNULL)
            self.restore_s = time.monotonic() - t
        for i in range(n):
            self.start(i)
        self.http, self.spare_http = self.http[:n], self.http[n:]

    def join_seeded(self, limit):
        """Adds nodes 2..n to the restored node 1 (each catches up from its snapshot, the
        adds repeated until each is a voter); the seconds it took."""
        t = time.monotonic()
        for i in range(1, len(self.http)):
            while True:
                status, body = request(self.http[0], "POST", "/api/cluster/nodes",
                                       {"id": i + 1, "rpc_addr": self.rpc[i], "http_addr": self.http[i]}, timeout=60)
                if status == 200:
                    break
                if time.monotonic() - t > limit:
                    raise RuntimeError(f"node {i + 1} did not join within {limit}s: {status} {body}")
                time.sleep(1.0)
        return time.monotonic() - t

    def start(self, i):
        env = dict(os.environ, RAFTCRON_API_KEY=KEY, RUST_LOG=self.log_filter)
        out = open(self.dir / f"node{i + 1}.log", "ab")
        self.procs[i] = subprocess.Popen(
            [str(self.build.binary), "serve", "--config", str(self.configs[i])],
            stdout=out, stderr=subprocess.STDOUT, env=env,
        )

    def kill(self, i):
        self.procs[i].send_signal(signal.SIGKILL)
        self.procs[i].wait()

    def health(self, i):
        status, body = request(self.http[i], "GET", "/api/health", timeout=1.0)
        if status == 0 or not body:
            return None
        raft = (body.get("data") or {}).get("raft") or {}
        return status, raft.get("leader_id"), raft.get("term"), raft.get("applied_index")

    def leader(self, limit=30.0):
        """The leader every running node agrees on, waited for up to `limit` seconds."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            seen = [self.health(i) for i in range(len(self.http)) if self.procs[i].poll() is None]
            if seen and all(h and h[0] == 200 for h in seen) and len({h[1] for h in seen}) == 1:
                return seen[0][1] - 1, seen[0][2]
            time.sleep(0.05)
        raise RuntimeError(f"raftcron ({self.build.name}): no agreed leader within {limit}s; logs in {self.dir}")

    def caught_up(self, limit=30.0):
        """Waits until every node answers healthy and applied within 50 entries of the leader."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            seen = [self.health(i) for i in range(len(self.http))]
            if all(h and h[0] == 200 for h in seen):
                applied = [h[3] or 0 for h in seen]
                if max(applied) - min(applied) <= 50 and len({h[1] for h in seen}) == 1:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"raftcron ({self.build.name}): nodes did not catch up within {limit}s")

    def write_url(self, i):
        return f"http://{self.http[i]}/api/tasks"


class Etcd(Processes):
    """A 3-member etcd cluster on loopback (Debian's etcd-server)."""

    def __init__(self, workdir, n=3):
        self.dir = Path(tempfile.mkdtemp(prefix="etcd-", dir=workdir))
        ports = free_ports(2 * n)
        self.client = [f"127.0.0.1:{p}" for p in ports[:n]]
        peer = [f"http://127.0.0.1:{p}" for p in ports[n:]]
        initial = ",".join(f"e{i + 1}={peer[i]}" for i in range(n))
        self.procs = []
        for i in range(n):
            out = open(self.dir / f"e{i + 1}.log", "ab")
            self.procs.append(subprocess.Popen(
                [etcd_binary(), "--name", f"e{i + 1}", "--data-dir", str(self.dir / f"e{i + 1}"),
                 "--listen-client-urls", f"http://{self.client[i]}", "--advertise-client-urls", f"http://{self.client[i]}",
                 "--listen-peer-urls", peer[i], "--initial-advertise-peer-urls", peer[i],
                 "--initial-cluster", initial, "--initial-cluster-state", "new", "--log-level", "warn"],
                stdout=out, stderr=subprocess.STDOUT,
            ))

    def status(self, i):
        s, body = request(self.client[i], "POST", "/v3/maintenance/status", {}, timeout=1.0)
        if s != 200 or not body:
            return None
        return body["header"]["member_id"], body.get("leader"), int(body["header"].get("raft_term", 0))

    def leader(self, limit=30.0):
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            seen = [self.status(i) for i in range(len(self.client))]
            if all(seen) and len({s[1] for s in seen}) == 1 and seen[0][1] not in (None, "0"):
                lead = next(i for i, s in enumerate(seen) if s[0] == s[1])
                return lead, seen[0][2]
            time.sleep(0.1)
        raise RuntimeError(f"etcd: no agreed leader within {limit}s; logs in {self.dir}")

    def write_url(self, i):
        return f"http://{self.client[i]}/v3/kv/put"


def etcd_binary():
    for c in ("etcd", "/usr/bin/etcd"):
        if shutil.which(c):
            return shutil.which(c)
    raise RuntimeError("etcd is not installed (scripts/bench.sh installs Debian's etcd-server)")


# ---------------------------------------------------------------- writes (wrk)

WRK_SCRIPT = r"""
-- One unique key per request: thread number and counter. An etcd key is sent as base64:
-- any run of [A-Za-z0-9] whose length is a multiple of 4 is valid base64, and distinct
-- runs decode to distinct keys, so the key is written in that form directly.
%(thread_ids)sfunction request()
  counter = counter + 1
  local id = string.format("%(prefix)sT%%03dN%%010d", tid, counter)
  local headers = {["Content-Type"] = "application/json"}
  local body
  if "%(system)s" == "etcd" then
    -- etcd without auth enabled refuses any Authorization header.
    body = '{"key":"' .. id .. '","value":"%(value)s"}'
  else
    headers["Authorization"] = "Bearer %(key)s"
    body = '{"name":"' .. id .. '","executor":"shell","command":"echo %(pad)s"}'
  end
  return wrk.format("POST", nil, headers, body)
end
"""

# Each wrk thread's number (`tid`) and request counter, shared by both scripts.
LUA_THREAD_IDS = """local counter = 0
local threads = 0
function setup(thread)
  thread:set("tid", threads)
  threads = threads + 1
end
"""

UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def parse_wrk(out):
    """wrk's output as a row. `rps` counts only successful (2xx/3xx) answers: wrk's own
    Requests/sec counts every answer, refusals included."""
    pct = {}
    for p, v, u in re.findall(r"^\s+(50|99)(?:\.000)?%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.M):
        pct[p] = float(v) * UNIT_MS[u]
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    refused = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    socket_errors = sum(int(x) for x in m.groups()) if m else 0
    m = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", out)
    total, secs = int(m.group(1)), float(m.group(2)) * UNIT_MS[m.group(3)] / 1000
    return {"rps": (total - refused) / secs, "p50": pct.get("50"), "p99": pct.get("99"),
            "errors": refused + socket_errors, "requests": total}


def wrk_row(system, url, conns, seconds, prefix, workdir):
    script = Path(workdir) / f"{prefix}.lua"
    # Same payload size for both: etcd's value is 200 bytes (base64 in the JSON), the
    # task's command pads its JSON to about as many bytes beyond the other fields.
    value = base64.b64encode(b"v" * VALUE_BYTES).decode()
    pad = "x" * (VALUE_BYTES - 50)
    script.write_text(WRK_SCRIPT % {"pad": pad, "prefix": prefix, "system": system, "key": KEY, "value": value,
                                    "thread_ids": LUA_THREAD_IDS})
    threads = min(conns, 2)
    out = subprocess.run(
        ["wrk", "-t", str(threads), "-c", str(conns), "-d", f"{seconds}s", "--timeout", "10s", "--latency",
         "-s", str(script), url],
        capture_output=True, text=True, timeout=seconds + 60,
    ).stdout
    return parse_wrk(out)


def bench_writes(builds, args, workdir):
    systems = [(f"raftcron ({b.name})", lambda b=b: Raftcron(b, workdir)) for b in builds]
    systems.append(("etcd", lambda: Etcd(workdir)))
    clusters = {}
    try:
        for name, make in systems:
            clusters[name] = make()
        for c in clusters.values():
            c.leader()
        rows = []
        for rnd in range(args.rounds):
            for conns in args.conns:
                for name, c in clusters.items():
                    lead, term0 = c.leader()
                    follower = (lead + 1) % 3
                    prefix = f"R{rnd}C{conns}S{len(rows)}X{int(time.time() * 1000) % 100000}"
                    prefix += "z" * (-(len(prefix) + 15) % 4)  # the etcd key's length: a multiple of 4
                    r = wrk_row("etcd" if name == "etcd" else "raftcron", c.write_url(follower), conns,
                                args.seconds, prefix, workdir)
                    _, term1 = c.leader()
                    r.update(system=name, conns=conns, round=rnd + 1, elections=term1 - term0)
                    log(f"writes: {name:<22} c={conns:<3} {r['rps']:>8.0f} req/s p50 {r['p50']:.2f} ms "
                        f"p99 {r['p99']:.2f} ms errors {r['errors']} terms +{r['elections']}")
                    rows.append(r)
        return rows
    finally:
        for c in clusters.values():
            c.stop()


# ---------------------------------------------------------------- failover


HAPROXY_DEFAULTS = ROOT / "cluster" / "haproxy.cfg"


def haproxy_config(listen, servers):
    """cluster/haproxy.cfg with the compose network's names swapped for loopback ports."""
    text = HAPROXY_DEFAULTS.read_text()
    text = re.sub(r"\nresolvers docker\n(?:[ \t]+.*\n)+", "\n", text)
    text = re.sub(r"\s*init-addr \S+ resolvers docker", "", text)
    text = re.sub(r"\n\s*log stdout format raw local0 info", "", text)
    text = text.replace("bind *:8080", f"bind {listen}")
    text = re.sub(r"\n\s*server raftcron\d.*", "", text)
    text = text.rstrip("\n") + "\n" + "".join(
        f"    server raftcron{i + 1} {s} check\n" for i, s in enumerate(servers)
    )
    return text


class Haproxy:
    def __init__(self, servers, workdir):
        self.addr = f"127.0.0.1:{free_ports(1)[0]}"
        cfg = Path(workdir) / "haproxy.cfg"
        cfg.write_text(haproxy_config(self.addr, servers))
        self.proc = subprocess.Popen(["haproxy", "-f", str(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        if self.proc.poll() is not None:
            raise RuntimeError(f"haproxy did not start with {cfg}")

    def stop(self):
        self.proc.terminate()
        self.proc.wait()


def failover_trial(cluster, through, clients=4, limit=20.0):
    """Kills the leader while `clients` threads write through `through(leader)`; the time
    from the kill to the first acknowledgement of a write sent after it, in ms."""
    lead, _ = cluster.leader()
    target = through(lead)
    stop = threading.Event()
    killed_at = [None]
    first_ack = []
    lock = threading.Lock()
    counter = [0]

    def writer(w):
        while not stop.is_set():
            with lock:
                counter[0] += 1
                n = counter[0]
            sent = time.monotonic()
            status, _ = request(target, "POST", "/api/tasks",
                                {"name": f"fo-{os.getpid()}-{n}-{w}-{time.time_ns()}", "executor": "shell", "command": "true"},
                                timeout=15.0)
            done = time.monotonic()
            with lock:
                if status == 201 and killed_at[0] is not None and sent >= killed_at[0]:
                    first_ack.append(done)
                    stop.set()
            if status != 201:
                time.sleep(0.005)

    threads = [threading.Thread(target=writer, args=(w,), daemon=True) for w in range(clients)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    with lock:
        killed_at[0] = time.monotonic()
    cluster.kill(lead)
    stop.wait(limit)
    stop.set()
    for t in threads:
        t.join(16)
    cluster.start(lead)
    took = (min(first_ack) - killed_at[0]) * 1000 if first_ack else None
    cluster.caught_up()
    return took


def bench_failover(builds, args, workdir):
    out = []
    for b in builds:
        c = Raftcron(b, workdir)
        hp = None
        try:
            c.caught_up()
            hp = Haproxy(c.http, workdir)
            for trial in range(args.failover_trials):
                for path, through in (("survivor", lambda lead: c.http[(lead + 1) % 3]), ("haproxy", lambda lead: hp.addr)):
                    ms = failover_trial(c, through)
                    log(f"failover: {b.name} trial {trial + 1} via {path}: "
                        + (f"{ms:.0f} ms" if ms is not None else "no acknowledged write within 20 s"))
                    out.append({"build": b.name, "path": path, "trial": trial + 1, "ms": ms})
        finally:
            if hp:
                hp.stop()
            c.stop()
    return out


# ---------------------------------------------------------------- cargo benches


def cargo_bench(build, name, bench_args, env_extra):
    env = dict(os.environ, CARGO_TARGET_DIR=str(build.target), **env_extra)
    r = subprocess.run(["cargo", "bench", "--quiet", "--bench", name, "--", *bench_args], cwd=build.src,
                       env=env, capture_output=True, text=True, timeout=1800)
    if r.returncode != 0:
        raise RuntimeError(f"cargo bench --bench {name} ({build.name}) failed:\n{r.stdout}\n{r.stderr[-4000:]}")
    return r.stdout


def bench_firing(builds, args, workdir):
    rows, cdfs = [], {}
    for b in builds:
        samples = Path(workdir) / f"firing-{b.name}.json"
        out = cargo_bench(b, "firing", [str(n) for n in args.firing], {"BENCH_SAMPLES": str(samples)})
        log(out)
        for m in re.finditer(
            r"^\s*(\d+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)ms\s+([\d.]+)ms\s+([\d.]+)\s+(\d+)(?:\s+([\d.]+)ms)?(?:\s+(\d+))?",
            out, re.M,
        ):
            g = m.groups()
            rows.append({"build": b.name, "tasks": int(g[0]), "create_s": float(g[1]), "all_fired_s": float(g[2]),
                         "lag_p50": float(g[3]), "lag_p99": float(g[4]), "cpu_s": float(g[5]),
                         "rss_per_task": int(g[6]), "get_p99": float(g[7]) if g[7] else None,
                         "elections": int(g[8]) if g[8] else None})
        if samples.exists():
            cdfs[b.name] = json.loads(samples.read_text())
    return rows, cdfs


def parse_time(v):
    """An RFC 3339 timestamp from the API (nanoseconds cut to microseconds) as epoch seconds."""
    v = v.replace("Z", "+00:00")
    m = re.match(r"(.*\.\d{6})\d*(\+.*)", v)
    if m:
        v = m.group(1) + m.group(2)
    return datetime.datetime.fromisoformat(v).timestamp()


def wait_final(addr, ids, limit):
    """Each run's record once final (polled on the serving node, `consistency=local`)."""
    out, deadline = [], time.monotonic() + limit
    for rid in ids:
        while time.monotonic() < deadline:
            s, body = request(addr, "GET", f"/api/runs/{rid}?consistency=local")
            run = (body or {}).get("data") or {}
            if s == 200 and run.get("finished_at"):
                out.append(run)
                break
            time.sleep(0.005)
    return out


def runs_once(build, args, workdir):
    """One build: 3 `raftcron serve`, 2 `raftcron worker` processes (one per follower, 8 slots
    each), a `true` shell task; triggers one at a time, then a burst from 16 threads."""
    c = Raftcron(build, workdir)
    workers = []
    try:
        lead, _ = c.leader()
        c.caught_up()
        followers = [i for i in range(3) if i != lead]
        env = dict(os.environ, RAFTCRON_API_KEY=KEY, RUST_LOG="warn")
        for n, f in enumerate(followers):
            state = c.dir / f"worker{n}"
            workers.append(subprocess.Popen(
                [str(build.binary), "worker", "--server", f"http://{c.http[f]}", "--id", f"bench-{n}", "--key", KEY,
                 "--max-tasks", "8", "--state-dir", str(state)],
                stdout=open(c.dir / f"worker{n}.log", "ab"), stderr=subprocess.STDOUT, env=env))
        via = c.http[followers[0]]
        # The burst is spread over 4 tasks: admission caps pending runs per task (1,000 by
        # default), and this measures the workers, not the cap.
        tids = []
        for n in range(4):
            s, task = request(via, "POST", "/api/tasks", {"name": f"noop-{n}", "executor": "shell", "command": "true"})
            tids.append(task["data"]["id"])
        tid = tids[0]
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            s, body = request(via, "GET", "/api/workers")
            items = (body or {}).get("data") or []
            items = items.get("items", []) if isinstance(items, dict) else items
            if sum(1 for w in items if w.get("status") == "online") >= 2:
                break
            time.sleep(0.1)
        seq = []
        for _ in range(args.sequential):
            s, r = request(via, "POST", f"/api/tasks/{tid}/trigger")
            if s in (200, 201, 202):
                seq += wait_final(via, [r["data"]["id"]], 30)
        ids, lock, nxt, refused = [], threading.Lock(), [0], [0]

        def client():
            while True:
                with lock:
                    if nxt[0] >= args.burst:
                        return
                    nxt[0] += 1
                    target = tids[nxt[0] % len(tids)]
                s, r = request(via, "POST", f"/api/tasks/{target}/trigger", timeout=15)
                with lock:
                    if s in (200, 201, 202):
                        ids.append(r["data"]["id"])
                    else:
                        refused[0] += 1
        threads = [threading.Thread(target=client) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        burst = wait_final(via, sorted(ids), 180)
        start = sorted((parse_time(r["started_at"]) - parse_time(r["created_at"])) * 1000 for r in seq if r.get("started_at"))
        ok = [r for r in burst if r.get("status") == "succeeded"]
        span = (max(parse_time(r["finished_at"]) for r in ok) - min(parse_time(r["created_at"]) for r in ok)) if ok else None
        return {
            "build": build.name, "start_p50": percentile(start, 0.5), "start_p99": percentile(start, 0.99),
            "burst": len(burst), "refused": refused[0], "runs_per_s": len(ok) / span if span else None,
            "failed": sum(1 for r in seq + burst if r.get("status") != "succeeded"),
        }
    finally:
        for w in workers:
            w.kill()
            w.wait()
        c.stop()


def percentile(xs, q):
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else None


def bench_runs(builds, args, workdir):
    anchor_out = cargo_bench(builds[-1], "spawn", [], {})
    anchor = float(re.search(r"fork/exec anchor: ([\d.]+) /s", anchor_out).group(1))
    rows = []
    for b in builds:
        row = runs_once(b, args, workdir)
        row["anchor"] = anchor
        log(f"runs: {row}")
        rows.append(row)
    return rows


# ---------------------------------------------------------------- scale

SCALE_WRK = r"""
-- Loads tasks named job-teamNN-<n>: every 100th paused, so searches and status filters
-- have 1% and single-match answers to find. Each thread stops after its share.
%(thread_ids)sfunction init(args)
  quota = tonumber(args[1])
end
function request()
  counter = counter + 1
  local n = tid * quota + counter
  local status = ""
  if n %% 100 == 0 then status = ',"status":"paused"' end
  local body = string.format('{"name":"job-team%%02d-%%08d","executor":"shell","command":"echo %(pad)s"%%s}',
    n %% 100, n, status)
  return wrk.format("POST", nil, {["Content-Type"] = "application/json", ["Authorization"] = "Bearer %(key)s"}, body)
end
function response(status, headers, body)
  if counter >= quota then wrk.thread:stop() end
end
"""


def rss_kib(pid, field="VmRSS"):
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


class RssSampler(threading.Thread):
    """Samples the RSS of the given processes once a second until stopped."""

    def __init__(self, procs):
        super().__init__(daemon=True)
        self.procs, self.samples, self.halt = procs, [], threading.Event()
        self.t0 = time.monotonic()

    def run(self):
        while not self.halt.wait(1.0):
            self.samples.append((time.monotonic() - self.t0, [rss_kib(p.pid) if p and p.poll() is None else None for p in self.procs]))

    def stop(self):
        self.halt.set()
        self.join(5)


def timed_gets(addr, path, count, limit_s):
    """Latencies (ms) of sequential GETs, at most `count` and at most `limit_s` seconds."""
    out, deadline = [], time.monotonic() + limit_s
    for _ in range(count):
        t = time.monotonic()
        status, _ = request(addr, "GET", path, timeout=30)
        if status != 200:
            raise RuntimeError(f"GET {path}: {status}")
        out.append((time.monotonic() - t) * 1000)
        if time.monotonic() > deadline:
            break
    return sorted(out)


def snapshot_log_lines(c):
    """(built, installed) snapshot log lines of every node: bytes and, when logged, ms."""
    built, installed = [], []
    for f in sorted(c.dir.glob("node*.log")):
        for line in f.read_text(errors="replace").splitlines():
            line = re.sub(r"\x1b\[[0-9;]*m", "", line)  # the text log's colours
            m = re.search(r"bytes=(\d+)(?:.*?elapsed_ms=(\d+))?", line)
            if not m:
                continue
            row = {"node": f.stem, "bytes": int(m.group(1)), "ms": int(m.group(2)) if m.group(2) else None}
            if "built snapshot" in line:
                built.append(row)
            elif "installed snapshot" in line:
                installed.append(row)
    return built, installed


def empty_write_row(build, args, workdir):
    """Creates/s through a follower of an empty cluster, and its nodes' RSS before."""
    c = Raftcron(build, workdir)
    try:
        lead, _ = c.leader()
        c.caught_up()
        rss = [rss_kib(p.pid) or 0 for p in c.procs[:3]]
        row = wrk_row("raftcron", c.write_url((lead + 1) % 3), 16, args.scale_row_s, f"E{int(time.time()) % 100000}", workdir)
        return row, rss
    finally:
        c.stop()


def scale_seeded(build, tasks, args, workdir):
    """The scale phase from a generated state: `raftcron debug generate` writes N tasks
    (and runs) as a snapshot file, node 1 is restored from it, nodes 2 and 3 join and
    catch up from node 1's snapshot; then the same measurements as after a load."""
    empty, rss_empty = empty_write_row(build, args, workdir)
    seed = Path(workdir) / f"seed-{build.name}-{tasks}.rcsnap"
    t = time.monotonic()
    out = subprocess.run([str(build.binary), "debug", "generate", "--out", str(seed), "--tasks", str(tasks),
                          "--runs-per-task", str(args.scale_runs_per_task)], check=True, capture_output=True, text=True)
    generate_s = time.monotonic() - t
    log(f"scale {build.name}: {out.stdout.strip()}")
    c = Raftcron(build, workdir, spares=1, log_filter="warn,raftcron::storage=info", seed=seed)
    sampler = None
    try:
        sampler = RssSampler(c.procs[:3])
        sampler.start()
        # Node 1 alone leads; nodes 2 and 3 know no leader until they are added.
        deadline = time.monotonic() + 120
        while (c.health(0) or (None, None))[1] != 1:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the restored node 1 did not lead within 120 s; logs in {c.dir}")
            time.sleep(0.1)
        join_s = c.join_seeded(args.scale_limit_s)
        c.caught_up(args.scale_limit_s)
        log(f"scale {build.name}: generated {tasks} tasks in {generate_s:.1f} s, restored node 1 in {c.restore_s:.1f} s, "
            f"nodes 2 and 3 joined in {join_s:.1f} s ({seed.stat().st_size / 2**20:.0f} MiB snapshot)")
        seed.unlink()
        row = measure_scale(c, build, tasks, args, workdir, sampler, empty, rss_empty)
        row.update({"seeded": True, "generate_s": generate_s, "restore_s": c.restore_s, "seed_join_s": join_s,
                    "runs_per_task": args.scale_runs_per_task, "load_s": None, "load_rps": None})
        return row
    finally:
        if sampler:
            sampler.stop()
        c.stop()


def scale_once(build, tasks, args, workdir):
    c = Raftcron(build, workdir, spares=1, log_filter="warn,raftcron::storage=info")
    sampler = None
    try:
        lead, _ = c.leader()
        c.caught_up()
        follower = (lead + 1) % 3
        via = c.http[follower]
        url = c.write_url(follower)
        empty = wrk_row("raftcron", url, 16, args.scale_row_s, f"E{int(time.time()) % 100000}", workdir)
        script = Path(workdir) / "scale.lua"
        script.write_text(SCALE_WRK % {"pad": "x" * (VALUE_BYTES - 50), "key": KEY, "thread_ids": LUA_THREAD_IDS})
        rss_empty = [rss_kib(p.pid) or 0 for p in c.procs[:3]]
        sampler = RssSampler(c.procs[:3])
        sampler.start()
        _, body = request(via, "GET", "/api/tasks?size=1&consistency=local", timeout=120)
        target = body["data"]["total"] + tasks
        t0 = time.monotonic()
        conns, threads = 16, 2
        # Each thread stops sending after its share (wrk itself runs out its duration, so
        # the load ends when the follower counts every task, or at the time limit).
        wrk = subprocess.Popen(
            ["wrk", "-t", str(threads), "-c", str(conns), "-d", f"{args.scale_limit_s}s", "--timeout", "30s",
             "-s", str(script), url, "--", str(tasks // threads)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        while wrk.poll() is None:
            time.sleep(1.0)
            _, body = request(via, "GET", "/api/tasks?size=1&consistency=local", timeout=120)
            if body and body.get("data") and body["data"]["total"] >= target - tasks // 1000:
                break
        load_s = time.monotonic() - t0
        wrk.kill()
        wrk.wait()
        row = measure_scale(c, build, tasks, args, workdir, sampler, empty, rss_empty)
        row.update({"load_s": load_s, "load_rps": row["loaded"] / load_s if load_s else None})
        return row
    finally:
        if sampler:
            sampler.stop()
        c.stop()


def measure_scale(c, build, tasks, args, workdir, sampler, empty, rss_empty):
    """Everything the scale phase measures once the cluster holds its tasks."""
    lead, _ = c.leader()
    follower = (lead + 1) % 3
    via = c.http[follower]
    url = c.write_url(follower)
    sampler.stop()
    c.caught_up(120)
    rss_loaded = [rss_kib(p.pid) or 0 for p in c.procs[:3]]
    _, body = request(via, "GET", "/api/tasks?size=1", timeout=120)
    loaded = body["data"]["total"]
    full = wrk_row("raftcron", url, 16, args.scale_row_s, f"F{int(time.time()) % 100000}", workdir)
    lat = {}
    n = args.scale_gets
    for name, path in [
        ("status", "/api/system/status"),
        ("first page", "/api/tasks?page=1&size=100"),
        ("deep page", f"/api/tasks?page={max(1, loaded // 200)}&size=100"),
        ("status=paused", "/api/tasks?status=paused&size=100"),
        ("search 1%", "/api/tasks?search=team42-&size=100"),
        ("search 1 match", f"/api/tasks?search={min(loaded, 4242):08d}&size=100"),
        ("search 1 char", "/api/tasks?search=j&size=100"),
    ]:
        ms = timed_gets(via, path, n, args.scale_get_limit_s)
        lat[name] = {"p50": percentile(ms, 0.5), "p99": percentile(ms, 0.99), "n": len(ms)}
        log(f"scale {build.name} {loaded}: {name:<15} p50 {lat[name]['p50']:.2f} ms p99 {lat[name]['p99']:.2f} ms ({len(ms)})")
    # A 4th node, empty, added while writes go on: the leader sends it its snapshot
    # (if the log behind it is purged) and the entries after.
    base = wrk_row("raftcron", url, 16, args.scale_row_s, f"B{int(time.time()) % 100000}", workdir)
    c.start(3)
    spare = c.procs[3]
    up = time.monotonic() + 20
    while request(c.spare_http[0], "GET", "/api/health", timeout=1)[0] == 0 and time.monotonic() < up:
        time.sleep(0.1)
    target = c.health(lead)[3] or 0
    t1 = time.monotonic()
    result = {}

    def add():
        result["add"] = request(c.http[lead], "POST", "/api/cluster/nodes",
                                {"id": 4, "rpc_addr": c.rpc[3], "http_addr": c.spare_http[0]}, timeout=60)
    adder = threading.Thread(target=add)
    adder.start()
    during = {}
    writer = threading.Thread(target=lambda: during.update(
        wrk_row("raftcron", url, 16, args.scale_row_s, f"J{int(time.time()) % 100000}", workdir)))
    writer.start()
    caught = None
    peak_leader = 0
    while time.monotonic() - t1 < args.scale_limit_s:
        peak_leader = max(peak_leader, rss_kib(c.procs[lead].pid) or 0)
        s, h = request(c.spare_http[0], "GET", "/api/health", timeout=2)
        applied = ((h or {}).get("data") or {}).get("raft", {}).get("applied_index") or 0
        if applied >= target:
            caught = time.monotonic() - t1
            break
        time.sleep(0.2)
    writer.join(args.scale_row_s + 60)
    adder.join(60)
    status, body = result.get("add", (None, None))
    log(f"scale {build.name}: adding node 4 answered {status} {(body or {}).get('message', '')}; caught up in {caught} s")
    built, installed = snapshot_log_lines(c)
    peaks = [max((s[1][i] or 0) for s in sampler.samples) if sampler.samples else None for i in range(3)]
    row = {
        "build": build.name, "tasks": tasks, "loaded": loaded,
        "rss_empty_mib": [round(s / 1024) if s is not None else None for s in rss_empty],
        "rss_peak_mib": [round(p / 1024) if p else None for p in peaks],
        "rss_loaded_mib": [round(s / 1024) for s in rss_loaded],
        "rss_series": sampler.samples,
        "write_empty": empty, "write_full": full, "write_before_join": base, "write_during_join": during,
        "latency": lat, "join_s": caught, "join_target": target,
        "joiner_peak_mib": round((rss_kib(spare.pid, "VmHWM") or 0) / 1024),
        "leader_peak_during_join_mib": round(peak_leader / 1024),
        "snapshots_built": len(built), "snapshot_max_mib": round(max((b["bytes"] for b in built), default=0) / 2**20),
        "build_ms_max": max((b["ms"] for b in built if b["ms"] is not None), default=None),
        "installed": installed,
    }
    log(f"scale {build.name}: {json.dumps({k: v for k, v in row.items() if k != 'rss_series'})}")
    return row


def bench_scale(builds, args, workdir):
    rows = []
    for tasks in args.scale:
        for seed in args.scale_seeds:
            for b in builds:
                rows.append(scale_once(b, tasks, args, workdir) if seed == "api" else scale_seeded(b, tasks, args, workdir))
    return rows


# ---------------------------------------------------------------- report


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(v, spec=".0f"):
    return "—" if v is None else format(v, spec)


def report(args, machine, writes, failover, firing_and_cdfs, runs, out_dir, scale=()):
    """Writes <date>.md (tables), <date>.json (every row) and the SVG plots; returns the .md path.
    A build without lag samples (an older bench) has table rows but no CDF line."""
    firing, cdfs = firing_and_cdfs
    date = datetime.date.today().isoformat() + ("-quick" if args.quick else "")
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = plot(writes, failover, cdfs, out_dir, date, scale)
    md = [f"# raftcron benchmarks, {date}", "",
          f"`scripts/bench.sh{' --quick' if args.quick else ''}` on {machine}. Every number below comes from this one run; "
          "how to read them and the physical limits: [bench/README.md](../README.md).", ""]
    if writes:
        md += ["## Writes through a follower (3 nodes, loopback, wrk)", "",
               f"{args.seconds} s per row, {args.rounds} round(s), systems alternating row by row; "
               "medians over rounds. ratio = raftcron / etcd.", "",
               "| system | connections | req/s | p50 ms | p99 ms | ratio req/s | errors | new terms |",
               "|---|---|---|---|---|---|---|---|"]
        systems = list(dict.fromkeys(r["system"] for r in writes))
        for conns in args.conns:
            etcd = median([r["rps"] for r in writes if r["system"] == "etcd" and r["conns"] == conns])
            for s in systems:
                rs = [r for r in writes if r["system"] == s and r["conns"] == conns]
                rps = median([r["rps"] for r in rs])
                ratio = fmt(rps / etcd, ".2f") + "×" if etcd and s != "etcd" else ""
                md.append(f"| {s} | {conns} | {fmt(rps)} | {fmt(median([r['p50'] for r in rs]), '.2f')} | "
                          f"{fmt(median([r['p99'] for r in rs]), '.2f')} | {ratio} | {sum(r['errors'] for r in rs)} | "
                          f"{sum(r['elections'] for r in rs)} |")
        md += ["", f"![throughput]({plots['writes']})", ""]
    if failover:
        md += ["## Failover: leader SIGKILL → first acknowledged write sent after it", "",
               "| build | through | trials | p50 ms | max ms | min ms | none within 20 s |", "|---|---|---|---|---|---|---|"]
        for key in dict.fromkeys((r["build"], r["path"]) for r in failover):
            ms = [r["ms"] for r in failover if (r["build"], r["path"]) == key]
            ok = [m for m in ms if m is not None]
            md.append(f"| {key[0]} | {key[1]} | {len(ms)} | {fmt(median(ok))} | {fmt(max(ok) if ok else None)} | "
                      f"{fmt(min(ok) if ok else None)} | {len(ms) - len(ok)} |")
        md += ["", f"![failover]({plots['failover']})", ""]
    if firing:
        md += ["## Firing: N tasks due in the same second (3 nodes in one process)", "",
               "| build | tasks | all fired s | lag p50 ms | lag p99 ms | CPU s | RSS/task B | GET p99 ms | new terms |",
               "|---|---|---|---|---|---|---|---|---|"]
        for r in firing:
            md.append(f"| {r['build']} | {r['tasks']} | {r['all_fired_s']:.2f} | {r['lag_p50']:.1f} | {r['lag_p99']:.1f} | "
                      f"{r['cpu_s']:.1f} | {r['rss_per_task']} | {fmt(r['get_p99'], '.1f')} | {fmt(r['elections'], 'd')} |")
        if "firing" in plots:
            md += ["", f"![firing lag]({plots['firing']})"]
        md.append("")
    if runs:
        md += ["## Runs: a `true` shell task on 2 worker processes × 8 slots", "",
               f"{args.sequential} triggers one at a time, then a burst of {args.burst} from 16 threads over 4 tasks; "
               "runs/s = succeeded burst runs / (last finished − first created), from the run records.", "",
               "| build | trigger→start p50 ms | p99 ms | burst runs | refused | runs/s | fork+exec /s alone | ratio | not succeeded |",
               "|---|---|---|---|---|---|---|---|---|"]
        for r in runs:
            ratio = r["runs_per_s"] / r["anchor"] if r.get("anchor") and r.get("runs_per_s") else None
            md.append(f"| {r['build']} | {fmt(r.get('start_p50'), '.1f')} | {fmt(r.get('start_p99'), '.1f')} | "
                      f"{fmt(r.get('burst'), 'd')} | {fmt(r.get('refused'), 'd')} | {fmt(r.get('runs_per_s'))} | {fmt(r.get('anchor'))} | "
                      f"{fmt(ratio, '.0%')} | {r.get('failed')} |")
        md.append("")
    if scale:
        md += scale_tables(scale, plots)
    path = out_dir / f"{date}.md"
    path.write_text("\n".join(md) + "\n")
    (out_dir / f"{date}.json").write_text(json.dumps(
        {"writes": writes, "failover": failover, "firing": firing, "runs": runs, "scale": list(scale)}, indent=1))
    return path


def scale_tables(scale, plots):
    md = ["## State at scale: tasks loaded through a follower (3 `serve` processes, wrk, 16 connections)", "",
          "RSS in MiB, the largest of the 3 nodes; writes/s from 16-connection wrk rows of new tasks on the "
          "empty cluster and once loaded.", "",
          "| build | tasks | load s | load writes/s | writes/s empty → loaded | RSS empty | RSS peak | RSS loaded | "
          "RSS/task beyond empty, B | snapshots built | largest MiB | slowest build ms |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in scale:
        empty, end = max(r["rss_empty_mib"] or [0]), max(r["rss_loaded_mib"] or [0])
        per_task = (end - empty) * 2**20 / r["loaded"] if r["loaded"] else None
        # A generated state: its generation and restore in place of the load.
        load = (f"{r['load_s']:.0f} | {fmt(r['load_rps'])}" if not r.get("seeded") else
                f"generated {r['generate_s']:.0f} + restored {r['restore_s']:.0f} + 2 nodes joined {r['seed_join_s']:.0f} | —")
        md.append(f"| {r['build']} | {r['loaded']} | {load} | "
                  f"{fmt(r['write_empty']['rps'])} → {fmt(r['write_full']['rps'])} "
                  f"({fmt(r['write_full']['rps'] / r['write_empty']['rps'], '.2f')}×) | {empty} | "
                  f"{max(p or 0 for p in r['rss_peak_mib'])} | {end} | {fmt(per_task)} | {r['snapshots_built']} | "
                  f"{r['snapshot_max_mib']} | {fmt(r['build_ms_max'], 'd')} |")
    names = list(scale[0]["latency"])
    md += ["", "Reads through a follower (linearizable), sequential: p50 / p99 ms.", "",
           "| build | tasks | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for r in scale:
        md.append(f"| {r['build']} | {r['loaded']} | " + " | ".join(
            f"{fmt(r['latency'][n]['p50'], '.1f')} / {fmt(r['latency'][n]['p99'], '.1f')}" for n in names) + " |")
    md += ["", "A 4th node added empty while 16 connections write: catch-up until it applied what the leader "
           "had applied when it was added; the leader's write p99 in a row before and during.", "",
           "| build | tasks | catch-up s | joiner peak RSS MiB | leader RSS MiB during | write p99 before → during ms | "
           "snapshot installs (MiB, ms) |", "|---|---|---|---|---|---|---|"]
    for r in scale:
        installs = ", ".join(f"{i['bytes'] / 2**20:.0f}" + (f" in {i['ms']}" if i["ms"] is not None else "")
                             for i in r["installed"]) or "none"
        md.append(f"| {r['build']} | {r['loaded']} | {fmt(r['join_s'], '.1f')} | {r['joiner_peak_mib']} | "
                  f"{r['leader_peak_during_join_mib']} | {fmt(r['write_before_join']['p99'], '.1f')} → "
                  f"{fmt((r['write_during_join'] or {}).get('p99'), '.1f')} | {installs} |")
    if "scale" in plots:
        md += ["", f"![RSS during the load]({plots['scale']})"]
    md.append("")
    return md


def plot(writes, failover, firing_cdfs, out_dir, date, scale=()):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = {}
    if writes:
        fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
        for s in dict.fromkeys(r["system"] for r in writes):
            conns = sorted({r["conns"] for r in writes})
            a.plot(conns, [median([r["rps"] for r in writes if r["system"] == s and r["conns"] == c]) for c in conns], "o-", label=s)
            b.plot(conns, [median([r["p99"] for r in writes if r["system"] == s and r["conns"] == c]) for c in conns], "o-", label=s)
        for ax, title in ((a, "writes/s"), (b, "p99 latency, ms")):
            ax.set_xscale("log", base=2)
            ax.set_xlabel("connections")
            ax.set_title(title)
            ax.grid(alpha=0.3)
            ax.legend()
        out["writes"] = save(fig, out_dir, f"{date}-writes.svg")
    if failover:
        fig, ax = plt.subplots(figsize=(7, 3.5))
        keys = list(dict.fromkeys((r["build"], r["path"]) for r in failover))
        for y, key in enumerate(keys):
            ms = [r["ms"] for r in failover if (r["build"], r["path"]) == key and r["ms"] is not None]
            ax.plot(ms, [y] * len(ms), "o", alpha=0.6)
            if ms:
                ax.plot([median(ms)], [y], "k|", markersize=20)
        ax.set_yticks(range(len(keys)), [f"{b} via {p}" for b, p in keys])
        ax.set_xlabel("ms from leader SIGKILL to first acknowledged write (| = median)")
        ax.grid(alpha=0.3)
        out["failover"] = save(fig, out_dir, f"{date}-failover.svg")
    if firing_cdfs:
        fig, ax = plt.subplots(figsize=(7, 3.5))
        for build, rows in firing_cdfs.items():
            for row in rows:
                lags = sorted(row["lags_ms"])
                if lags:
                    ax.plot(lags, [(i + 1) / len(lags) for i in range(len(lags))], label=f"{build}, {row['tasks']} tasks")
        ax.set_xlabel("schedule lag, ms (run created − tick)")
        ax.set_ylabel("fraction of fires")
        ax.grid(alpha=0.3)
        ax.legend()
        out["firing"] = save(fig, out_dir, f"{date}-firing-lag.svg")
    if scale:
        fig, ax = plt.subplots(figsize=(7, 3.5))
        for r in scale:
            xs = [t for t, _ in r["rss_series"]]
            ys = [max(v or 0 for v in vs) / 1024 for _, vs in r["rss_series"]]
            ax.plot(xs, ys, label=f"{r['build']}, {r['loaded']} tasks")
        ax.set_xlabel("seconds into the load")
        ax.set_ylabel("largest node RSS, MiB")
        ax.grid(alpha=0.3)
        ax.legend()
        out["scale"] = save(fig, out_dir, f"{date}-scale-rss.svg")
    return out


def save(fig, out_dir, name):
    fig.tight_layout()
    fig.savefig(out_dir / name, format="svg")
    return name


def machine():
    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return f"{os.cpu_count()} cores ({cpu}), Linux {os.uname().release}"


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--build", action="append", required=True, help="NAME=SRC_DIR:TARGET_DIR (release built)")
    p.add_argument("--quick", action="store_true", help="a few seconds per row: proves the script, not the numbers")
    p.add_argument("--only", default="writes,failover,firing,runs,scale")
    p.add_argument("--scale", default=None, help="task counts of the scale phase, e.g. 100000,1000000")
    p.add_argument("--scale-seed", default=None,
                   help="api and/or snapshot, comma-separated: load the scale phase's tasks through the API (wrk), "
                        "or generate them as a snapshot and restore it (raftcron debug generate + snapshot restore: "
                        "a million tasks in minutes). Default api; --quick runs both")
    p.add_argument("--scale-runs-per-task", type=int, default=None,
                   help="finished runs per generated task (--scale-seed snapshot); default 0, 2 with --quick")
    p.add_argument("--out", default=str(ROOT / "bench" / "results"))
    a = p.parse_args()
    a.conns = [1, 16, 64]
    if a.quick:
        a.seconds, a.rounds, a.failover_trials, a.firing, a.sequential, a.burst = 2, 1, 2, [2000], 20, 300
        a.scale_row_s, a.scale_gets, a.scale_get_limit_s, a.scale_limit_s, scale = 2, 10, 5, 60, "2000"
    else:
        a.seconds, a.rounds, a.failover_trials, a.firing, a.sequential, a.burst = 8, 2, 20, [10000, 100000], 200, 2000
        a.scale_row_s, a.scale_gets, a.scale_get_limit_s, a.scale_limit_s, scale = 8, 100, 30, 900, "100000"
    a.scale = [int(x) for x in (a.scale or scale).split(",")]
    if a.scale_runs_per_task is None:
        a.scale_runs_per_task = 2 if a.quick else 0
    a.scale_seeds = (a.scale_seed or ("api,snapshot" if a.quick else "api")).split(",")
    if not set(a.scale_seeds) <= {"api", "snapshot"}:
        p.error(f"--scale-seed: {a.scale_seed!r} is not api and/or snapshot")
    builds = [Build(s) for s in a.build]
    only = set(a.only.split(","))
    workdir = tempfile.mkdtemp(prefix="raftcron-bench-", dir="/var/tmp")
    started = time.monotonic()
    try:
        writes = bench_writes(builds, a, workdir) if "writes" in only else []
        failover = bench_failover(builds, a, workdir) if "failover" in only else []
        firing, cdfs = bench_firing(builds, a, workdir) if "firing" in only else ([], {})
        runs = bench_runs(builds, a, workdir) if "runs" in only else []
        scale = bench_scale(builds, a, workdir) if "scale" in only else []
        path = report(a, machine(), writes, failover, (firing, cdfs), runs, Path(a.out), scale)
        print(path.read_text())
        log(f"wrote {path} in {time.monotonic() - started:.0f} s")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()

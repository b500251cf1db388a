#!/usr/bin/env python3
"""Validates the Kubernetes manifests without a cluster: every document parses, has the
fields its kind requires, and keeps the properties raftcron depends on (peers resolvable
before readiness, parallel start, a disruption budget, graceful termination, probes,
secrets from a Secret). Exits non-zero naming the first problem."""

import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent


def fail(msg):
    print(f"k8s manifests: {msg}", file=sys.stderr)
    sys.exit(1)


def need(doc, path):
    cur = doc
    for key in path.split("."):
        if not isinstance(cur, dict) or key not in cur:
            fail(f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}: missing {path}")
        cur = cur[key]
    return cur


docs = []
for f in sorted(HERE.glob("*.yaml")):
    for d in yaml.safe_load_all(f.read_text()):
        if d is None:
            continue
        for key in ("apiVersion", "kind", "metadata"):
            if key not in d:
                fail(f"{f.name}: a document has no {key}")
        docs.append(d)

by_kind = {}
for d in docs:
    by_kind.setdefault(d["kind"], []).append(d)

sts = next((d for d in by_kind.get("StatefulSet", []) if d["metadata"]["name"] == "raftcron"), None) or fail(
    "no StatefulSet raftcron"
)
spec = need(sts, "spec")
if spec.get("replicas") != 3:
    fail("the StatefulSet must run 3 replicas")
if spec.get("podManagementPolicy") != "Parallel":
    fail("podManagementPolicy must be Parallel (one pod alone never elects a leader)")
if not need(sts, "spec.volumeClaimTemplates"):
    fail("each node needs a PVC")
pod = need(sts, "spec.template.spec")
if pod.get("terminationGracePeriodSeconds", 30) < 10:
    fail("terminationGracePeriodSeconds too short for the leadership handover")
c = pod["containers"][0]
if "httpGet" not in c.get("readinessProbe", {}) or c["readinessProbe"]["httpGet"]["path"] != "/api/health":
    fail("readiness must check /api/health")
if "httpGet" in c.get("livenessProbe", {}):
    fail("liveness must check the process only, not /api/health (no leader is not a dead process)")
selector = need(sts, "spec.selector.matchLabels")
labels = need(sts, "spec.template.metadata.labels")
if any(labels.get(k) != v for k, v in selector.items()):
    fail("the StatefulSet selector does not match its pod labels")

services = {d["metadata"]["name"]: d for d in by_kind.get("Service", [])}
peers = services.get(spec["serviceName"]) or fail(f"no headless Service {spec['serviceName']}")
if peers["spec"].get("clusterIP") != "None":
    fail("the peers Service must be headless")
if peers["spec"].get("publishNotReadyAddresses") is not True:
    fail("the peers Service must publish not-ready addresses (peers meet before a leader exists)")
if "raftcron" not in services:
    fail("no client Service raftcron")

pdb = by_kind.get("PodDisruptionBudget") or fail("no PodDisruptionBudget")
if pdb[0]["spec"].get("maxUnavailable") != 1:
    fail("the PodDisruptionBudget must allow at most one node down")

cm = by_kind.get("ConfigMap") or fail("no ConfigMap")
toml_text = cm[0]["data"]["raftcron.toml"]
for peer in ("raftcron-0.raftcron-peers", "raftcron-1.raftcron-peers", "raftcron-2.raftcron-peers"):
    if peer not in toml_text:
        fail(f"the config does not list peer {peer}")

env = {e["name"]: e for e in c.get("env", [])}
for secret in ("RAFTCRON_API_KEY", "RAFTCRON_CLUSTER_SECRET"):
    if "secretKeyRef" not in env.get(secret, {}).get("valueFrom", {}):
        fail(f"{secret} must come from a Secret")

if "raftcron-worker-*" not in env.get("RAFTCRON_AUTH_API_KEYS", {}).get("value", ""):
    fail("the nodes must know the worker pool's key (RAFTCRON_AUTH_API_KEYS)")
workers = by_kind.get("Deployment", [])
if not workers:
    fail("no worker Deployment")
for d in workers:
    # Pods are named after their Deployment: the pool key's prefix must match.
    if not d["metadata"]["name"].startswith("raftcron-worker"):
        fail("worker pods must be named raftcron-worker-... (the pool key's prefix)")
    for wc in d["spec"]["template"]["spec"]["containers"]:
        wenv = {e["name"]: e for e in wc.get("env", [])}
        ref = wenv.get("RAFTCRON_WORKER_KEY", {}).get("valueFrom", {}).get("secretKeyRef", {})
        if ref.get("key") != "worker-key":
            fail("workers must hold the worker pool's key, never the admin key")

print(f"k8s manifests: {len(docs)} documents OK ({', '.join(sorted(by_kind))})")

#!/usr/bin/env bash
# Smoke test of the compose cluster, for CI: build the images, bring the cluster up, run
# the seed's curl examples through HAProxy, kill the leader's container and measure how
# long writes through the load balancer fail, restart it and see it catch up, then take
# everything down (volumes too). Bounded in time; cleans up on every exit.
set -euo pipefail
cd "$(dirname "$0")/.."
t0=$SECONDS
random_hex() { head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n'; }
export RAFTCRON_API_KEY="smoke-$(random_hex)"
export RAFTCRON_CLUSTER_SECRET="smoke-secret-$(random_hex)"
export RAFTCRON_WORKER_KEY="smoke-worker-$(random_hex)"
project=raftcron-smoke
compose() {
  if docker compose version >/dev/null 2>&1; then
    docker compose -p "$project" -f docker-compose.yml "$@"
  else
    docker-compose -p "$project" -f docker-compose.yml "$@"
  fi
}
api=http://127.0.0.1:8080
auth=(-H "Authorization: Bearer $RAFTCRON_API_KEY")
json=(-H "Content-Type: application/json")
cleanup() {
  local rc=$?
  if [ $rc -ne 0 ]; then
    echo "--- smoke test failed (exit $rc); container logs:"
    compose --profile monitoring logs --tail=30 2>&1 | tail -150 || true
  fi
  compose --profile monitoring down -v --remove-orphans >/dev/null 2>&1 || true
  exit $rc
}
trap cleanup EXIT

# field FILE PY-EXPR: evaluates PY-EXPR on the JSON document `d` read from FILE.
field() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print($2)" "$1"; }
# wait_for SECONDS DESCRIPTION COMMAND...: retries COMMAND every 0.5 s.
wait_for() {
  local limit=$1 what=$2
  shift 2
  local deadline=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS > deadline)); then
      echo "timed out after ${limit}s waiting for $what"
      return 1
    fi
    sleep 0.5
  done
}

docker/build-images.sh
echo "=== images ready at $((SECONDS - t0))s"
docker image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E '^(raftcron|debian)'

compose up -d
wait_for 120 "a leader behind HAProxy" curl -sf "$api/api/health"
echo "=== cluster healthy at $((SECONDS - t0))s"
uid=$(compose exec -T raftcron1 id -u)
echo "container user id: $uid"
[ "$uid" != "0" ]

tmp=$(mktemp -d)
# The monitoring profile: Prometheus scrapes all three nodes and loads the alert rules.
compose --profile monitoring up -d prometheus
prom=http://127.0.0.1:9090
targets_up() {
  curl -sf "$prom/api/v1/targets" -o "$tmp/targets.json" &&
    [ "$(field "$tmp/targets.json" 'sum(t["health"] == "up" for t in d["data"]["activeTargets"])')" = 3 ]
}
wait_for 90 "Prometheus to scrape the three nodes" targets_up
curl -sf "$prom/api/v1/rules" -o "$tmp/rules.json"
rules=$(field "$tmp/rules.json" 'sum(len(g["rules"]) for g in d["data"]["groups"])')
field "$tmp/rules.json" '[r["name"] for g in d["data"]["groups"] for r in g["rules"]]' | grep -q RaftcronNoLeader
[ "$(grep -c 'alert:' prometheus/alerts.yml)" = "$rules" ]
echo "=== prometheus: 3 targets up, $rules alert rules loaded at $((SECONDS - t0))s"

# The seed's examples.
curl -sf -X POST "$api/api/tasks" "${auth[@]}" "${json[@]}" -o "$tmp/create.json" -d '{
    "name": "database_backup",
    "executor": "shell",
    "command": "echo backing up; date",
    "schedule": "0 2 * * *",
    "priority": "high",
    "retry_count": 2,
    "timeout_seconds": 1800
  }'
task=$(field "$tmp/create.json" 'd["data"]["id"]')
curl -sf "$api/api/tasks" "${auth[@]}" -o "$tmp/list.json"
[ "$(field "$tmp/list.json" 'd["data"]["total"]')" -ge 1 ]
curl -sf "$api/api/tasks/$task" "${auth[@]}" >/dev/null
curl -sf -X PUT "$api/api/tasks/$task" "${auth[@]}" "${json[@]}" -d '{"priority": "critical"}' >/dev/null
curl -sf -X POST "$api/api/tasks/$task/trigger" "${auth[@]}" -o "$tmp/run.json"
run=$(field "$tmp/run.json" 'd["data"]["id"]')
curl -sf "$api/api/tasks/$task/runs" "${auth[@]}" >/dev/null
curl -sf "$api/api/health" >/dev/null
# To a file first: `grep -q` stops reading at the first match, and curl writing into the
# closed pipe fails the pipeline (exit 23) once the metrics outgrow the pipe buffer.
curl -sf "$api/metrics" -o "$tmp/metrics.txt"
grep -q raftcron_raft_term "$tmp/metrics.txt"
curl -sf "$api/api/system/status" "${auth[@]}" >/dev/null
run_succeeded() {
  curl -sf "$api/api/runs/$run" "${auth[@]}" -o "$tmp/r.json" && [ "$(field "$tmp/r.json" 'd["data"]["status"]')" = succeeded ]
}
wait_for 60 "the worker to run the triggered task" run_succeeded
echo "run $run: $(field "$tmp/r.json" 'd["data"]["status"] + " on " + d["data"]["worker_id"] + ": " + d["data"]["output"].strip().splitlines()[0]')"
curl -sf "$api/api/workers" "${auth[@]}" -o "$tmp/workers.json"
echo "workers: $(field "$tmp/workers.json" '[(w["id"], w["status"]) for w in d["data"]]')"
echo "=== seed examples passed at $((SECONDS - t0))s"

# What a job can read of its agent and container: no credential of any kind.
curl -sf -X POST "$api/api/tasks" "${auth[@]}" "${json[@]}" -o "$tmp/probe.json" -d '{
    "name": "isolation-probe", "executor": "shell",
    "command": "exec 2>&1; env; for f in /proc/self/environ /proc/$PPID/environ /proc/1/environ; do echo \"== $f\"; tr \"\\0\" \"\\n\" < $f; done; ls -la /proc/self/fd"
  }'
probe=$(field "$tmp/probe.json" 'd["data"]["id"]')
curl -sf -X POST "$api/api/tasks/$probe/trigger" "${auth[@]}" -o "$tmp/run.json"
run=$(field "$tmp/run.json" 'd["data"]["id"]')
wait_for 60 "the isolation probe to run" run_succeeded
field "$tmp/r.json" 'd["data"]["output"]' > "$tmp/probe.out"
grep -q '== /proc/self/environ' "$tmp/probe.out"
for secret in "$RAFTCRON_API_KEY" "$RAFTCRON_CLUSTER_SECRET" "$RAFTCRON_WORKER_KEY"; do
  if grep -qF "$secret" "$tmp/probe.out"; then
    echo "a job read a credential:"; cat "$tmp/probe.out"; exit 1
  fi
done
echo "isolation probe: $(wc -l < "$tmp/probe.out") lines of job output, no credential"

# Failover through the load balancer.
curl -sf "$api/api/cluster" "${auth[@]}" -o "$tmp/cluster.json"
leader=$(field "$tmp/cluster.json" 'd["data"]["leader_id"]')
container=$(compose ps -q "raftcron$leader")
echo "killing the leader, node $leader ($container)"
kill_ms=$(date +%s%3N)
docker kill "$container" >/dev/null
i=0
until curl -sf --max-time 3 -X POST "$api/api/tasks" "${auth[@]}" "${json[@]}" \
    -d "{\"name\": \"after-failover-$i\", \"executor\": \"shell\", \"command\": \"true\"}" >/dev/null 2>&1; do
  i=$((i + 1))
  if (($(date +%s%3N) - kill_ms > 30000)); then
    echo "no write succeeded through HAProxy within 30 s of killing the leader"
    exit 1
  fi
  sleep 0.1
done
failover_ms=$(($(date +%s%3N) - kill_ms))
echo "FAILOVER: first successful write through HAProxy ${failover_ms} ms after killing the leader ($i failed attempts)"
((failover_ms < 10000))
for n in 1 2 3; do
  curl -sf --max-time 5 -X POST "$api/api/tasks" "${auth[@]}" "${json[@]}" \
    -d "{\"name\": \"during-outage-$n\", \"executor\": \"shell\", \"command\": \"true\"}" >/dev/null
done

docker start "$container" >/dev/null
caught_up() {
  curl -sf "$api/api/cluster?digest=true" "${auth[@]}" -o "$tmp/c.json" &&
    [ "$(field "$tmp/c.json" 'len({(m["status"]["applied_index"], m["status"]["state_digest"]) for m in d["data"]["members"] if m["status"]}) == 1 and all(m["reachable"] for m in d["data"]["members"])')" = True ]
}
wait_for 60 "node $leader to rejoin and catch up" caught_up
echo "node $leader rejoined; all three nodes at applied index $(field "$tmp/c.json" 'd["data"]["members"][0]["status"]["applied_index"]') with one state digest"
echo "=== smoke test passed in $((SECONDS - t0))s"

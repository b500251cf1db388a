//! The shipped Grafana dashboard (`cluster/grafana/raftcron.json`) and Prometheus alert
//! rules (`cluster/prometheus/alerts.yml`) name only metrics a live node serves, and the
//! gauges read from the state at each scrape say what the state holds.

use std::collections::BTreeSet;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::fixture::TestCluster;

/// Every `raftcron_*` name in `text`, as written.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("raftcron_") {
        let start = i + at;
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        if start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_') {
            out.insert(text[start..end].to_string());
        }
        i = end.max(start + 1);
    }
    out
}

/// The series names a node serves, from its `# TYPE` lines: each metric, and a
/// histogram's `_bucket`, `_sum` and `_count` (not the histogram's bare name).
fn served_names(exposition: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in exposition.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else { continue };
        let mut parts = rest.split(' ');
        let (Some(name), Some(kind)) = (parts.next(), parts.next()) else { continue };
        if kind == "histogram" {
            out.extend(["_bucket", "_sum", "_count"].map(|s| format!("{name}{s}")));
        } else {
            out.insert(name.to_string());
        }
    }
    out
}

/// The value of the series of `name` that carries every one of `labels`.
fn gauge(metrics: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    metrics
        .lines()
        .filter(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' ')))
        .find(|l| labels.iter().all(|(k, v)| l.contains(&format!("{k}=\"{v}\""))))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dashboards_and_alerts_name_real_metrics() {
    let c = TestCluster::start(1).await;
    let leader = c.wait_leader(Duration::from_secs(10)).await;
    let id = c.create_task(leader, "scraped").await["id"].as_u64().unwrap();
    let paused = c.post(leader, &format!("/api/tasks/{id}/pause"), json!({})).await;
    assert_eq!(paused.status, StatusCode::OK);
    c.create_task(leader, "active").await;
    assert_eq!(c.post(leader, &format!("/api/tasks/{id}/trigger"), json!({})).await.status, StatusCode::CREATED);
    let metrics = c.http.get(c.url(leader, "/metrics")).send().await.unwrap().text().await.unwrap();
    let served = served_names(&metrics);

    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("cluster/grafana/raftcron.json")).unwrap()).unwrap();
    let mut exprs = String::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {} has no query", panel["title"]);
        for t in targets {
            exprs.push_str(t["expr"].as_str().expect("an expr"));
            exprs.push('\n');
        }
    }
    // The rules' queries only: from each `expr:` to the next key (a folded `>` block
    // continues on the lines below it).
    let rules = std::fs::read_to_string(root.join("cluster/prometheus/alerts.yml")).unwrap();
    let mut alerts = String::new();
    let mut in_expr = false;
    for line in rules.lines() {
        let key = line.trim_start();
        if let Some(expr) = key.strip_prefix("expr:") {
            in_expr = true;
            alerts.push_str(expr);
        } else if in_expr && !key.starts_with("for:") && !key.starts_with("labels:") && !key.starts_with('#') {
            alerts.push_str(key);
        } else {
            in_expr = false;
        }
        alerts.push('\n');
    }
    assert!(alerts.contains("raftcron_raft_is_leader"), "no queries read from the rules: {alerts}");
    for (file, text) in [("dashboard", exprs.as_str()), ("alerts", alerts.as_str())] {
        let named = metric_names(text);
        assert!(named.len() >= 8, "{file} names too few metrics: {named:?}");
        let missing: Vec<_> = named.difference(&served).collect();
        assert!(missing.is_empty(), "the {file} names metrics no node serves: {missing:?}");
    }

    // The state's gauges, read at the scrape.
    let node = leader.to_string();
    let n = ("node", node.as_str());
    assert_eq!(gauge(&metrics, "raftcron_tasks", &[n, ("status", "paused")]), Some(1.0), "{metrics}");
    assert_eq!(gauge(&metrics, "raftcron_tasks", &[n, ("status", "active")]), Some(1.0));
    assert_eq!(gauge(&metrics, "raftcron_runs", &[n, ("status", "pending")]), Some(1.0));
    assert_eq!(gauge(&metrics, "raftcron_workers", &[n, ("liveness", "online")]), Some(0.0));
    let rss = gauge(&metrics, "raftcron_resident_memory_bytes", &[n]).unwrap();
    assert!(rss > 1e6, "resident memory {rss}");
    assert!(gauge(&metrics, "raftcron_data_dir_bytes", &[n]).unwrap() > 1e5);
    assert_eq!(gauge(&metrics, "raftcron_raft_leader_out_of_touch", &[n]), Some(0.0));
    assert!(gauge(&metrics, "raftcron_disk_available_bytes", &[n]).unwrap() > 0.0);
    c.shutdown().await;
}

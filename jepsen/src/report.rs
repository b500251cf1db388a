//! The per-run page (`<run>/index.html`: verdict, anomalies with the operations
//! involved, the fault table with evidence and recovery, throughput and latency over
//! time with fault windows shaded) and the index page over all runs in the store. Plain
//! SVG and HTML, written by hand: a few rectangles, lines and labels need no plotting
//! library.

use std::fmt::Write as _;
use std::path::Path;

use crate::history::{Event, Kind, NemesisEvent};

const W: f64 = 1100.0;
const H: f64 = 420.0;
const LEFT: f64 = 60.0;
const BOTTOM: f64 = 40.0;
const TOP: f64 = 30.0;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// Shaded fault windows (start to heal) with their names, for both plots.
fn fault_windows(s: &mut String, nemesis: &[NemesisEvent], x: impl Fn(f64) -> f64) {
    let palette = ["#fbb4ae", "#b3cde3", "#ccebc5", "#decbe4", "#fed9a6", "#e5d8bd"];
    for (i, n) in nemesis.iter().enumerate() {
        let heal = if n.heal_ns > 0 { n.heal_ns } else { n.end_ns };
        let (x0, x1) = (x(n.start_ns as f64 / 1e9), x(heal as f64 / 1e9));
        let color = palette[i % palette.len()];
        let _ = write!(
            s,
            r#"<rect x="{x0:.1}" y="{TOP}" width="{:.1}" height="{:.1}" fill="{color}" opacity="0.6"><title>{}</title></rect><text x="{:.1}" y="{:.1}">{}</text>"#,
            (x1 - x0).max(1.0),
            H - TOP - BOTTOM,
            esc(&n.detail),
            x0 + 2.0,
            TOP - 6.0 - (i % 2) as f64 * 10.0 + 10.0,
            esc(&n.name)
        );
    }
}

fn time_axis(s: &mut String, t_max: f64, x: impl Fn(f64) -> f64) {
    let step = (t_max / 10.0).ceil().max(1.0);
    let mut t = 0.0;
    while t <= t_max {
        let _ = write!(s, r#"<text x="{:.1}" y="{:.1}">{t}s</text>"#, x(t) - 6.0, H - BOTTOM + 16.0);
        t += step;
    }
}

/// Operations completed per second, by outcome, over time (client operations only),
/// fault windows shaded: availability at a glance.
pub fn throughput_svg(history: &[Event], nemesis: &[NemesisEvent]) -> String {
    let client = |e: &&Event| e.kind != Kind::Invoke && e.process < crate::workload::FINAL_PROCESS;
    let t_max = history.iter().filter(client).map(|e| e.time_ns as f64 / 1e9).fold(1.0, f64::max).ceil();
    let buckets = t_max as usize + 1;
    let mut counts = [vec![0u64; buckets], vec![0u64; buckets], vec![0u64; buckets]];
    for e in history.iter().filter(client) {
        let series = match e.kind {
            Kind::Ok => 0,
            Kind::Fail => 1,
            _ => 2,
        };
        counts[series][(e.time_ns / 1_000_000_000) as usize] += 1;
    }
    let peak = counts.iter().flatten().copied().max().unwrap_or(1).max(1) as f64;
    let x = |t: f64| LEFT + (W - LEFT - 20.0) * t / t_max;
    let y = |n: f64| TOP + (H - TOP - BOTTOM) * (1.0 - n / peak);
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="11"><rect width="{W}" height="{H}" fill="white"/>"#
    );
    fault_windows(&mut s, nemesis, x);
    for frac in [0.0, 0.25, 0.5, 0.75, 1.0] {
        let yy = y(peak * frac);
        let _ = write!(
            s,
            r##"<line x1="{LEFT}" x2="{:.1}" y1="{yy:.1}" y2="{yy:.1}" stroke="#ddd"/><text x="4" y="{:.1}">{:.0}/s</text>"##,
            W - 20.0,
            yy + 4.0,
            peak * frac
        );
    }
    time_axis(&mut s, t_max, x);
    for (series, color) in counts.iter().zip(["#1b9e77", "#d95f02", "#7570b3"]) {
        let points: Vec<String> =
            series.iter().enumerate().map(|(t, n)| format!("{:.1},{:.1}", x(t as f64 + 0.5), y(*n as f64))).collect();
        let _ =
            write!(s, r#"<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{}"/>"#, points.join(" "));
    }
    let _ = write!(
        s,
        r##"<text x="{LEFT}" y="{:.1}"><tspan fill="#1b9e77">— ok</tspan>  <tspan fill="#d95f02">— fail</tspan>  <tspan fill="#7570b3">— info (unknown)</tspan>  — operations completed per second; shaded: fault in place</text></svg>"##,
        H - 8.0
    );
    s
}

/// Latency of every completed operation against its start time (log scale), colored by
/// outcome, over shaded nemesis intervals.
pub fn latency_svg(history: &[Event], nemesis: &[NemesisEvent]) -> String {
    let mut open = std::collections::BTreeMap::new();
    let mut points = Vec::new();
    for e in history {
        match e.kind {
            Kind::Invoke => {
                open.insert(e.process, e.time_ns);
            }
            k => {
                if let Some(start) = open.remove(&e.process) {
                    points.push((start as f64 / 1e9, ((e.time_ns - start) as f64 / 1e6).max(0.1), k));
                }
            }
        }
    }
    let t_max = points.iter().map(|p| p.0).chain(nemesis.iter().map(|n| n.end_ns as f64 / 1e9)).fold(1.0, f64::max);
    let (lo, hi) = (0.1f64.log10(), 10_000f64.log10());
    let x = |t: f64| LEFT + (W - LEFT - 20.0) * t / t_max;
    let y = |ms: f64| TOP + (H - TOP - BOTTOM) * (1.0 - (ms.clamp(0.1, 10_000.0).log10() - lo) / (hi - lo));
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="11">"#
    );
    let _ = write!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    fault_windows(&mut s, nemesis, x);
    for ms in [1.0, 10.0, 100.0, 1000.0, 10_000.0] {
        let yy = y(ms);
        let _ = write!(
            s,
            r##"<line x1="{LEFT}" x2="{:.1}" y1="{yy:.1}" y2="{yy:.1}" stroke="#ddd"/><text x="4" y="{:.1}">{ms} ms</text>"##,
            W - 20.0,
            yy + 4.0
        );
    }
    time_axis(&mut s, t_max, x);
    for (t, ms, k) in &points {
        let color = match k {
            Kind::Ok => "#1b9e77",
            Kind::Fail => "#d95f02",
            _ => "#7570b3",
        };
        let _ = write!(s, r#"<circle cx="{:.1}" cy="{:.1}" r="1.6" fill="{color}" opacity="0.7"/>"#, x(*t), y(*ms));
    }
    let _ = write!(
        s,
        r##"<text x="{LEFT}" y="{:.1}"><tspan fill="#1b9e77">● ok</tspan>  <tspan fill="#d95f02">● fail</tspan>  <tspan fill="#7570b3">● info (unknown)</tspan>  — latency (log) over time; shaded: nemesis active</text></svg>"##,
        H - 8.0
    );
    s
}

/// Writes the run's page and its two plots.
pub fn write_run(
    dir: &Path,
    history: &[Event],
    nemesis: &[NemesisEvent],
    results: &serde_json::Value,
) -> anyhow::Result<()> {
    std::fs::write(dir.join("latency.svg"), latency_svg(history, nemesis))?;
    std::fs::write(dir.join("throughput.svg"), throughput_svg(history, nemesis))?;
    let valid = results["valid"].as_bool() == Some(true);
    let mut html = format!(
        "<!doctype html><meta charset=utf-8><title>raftcron chaos run</title><style>body{{font-family:sans-serif}}td,th{{padding:3px 8px;border-bottom:1px solid #ddd;vertical-align:top;text-align:left}}pre{{font-size:11px;background:#f6f6f6;padding:6px}}</style>\
         <h1>{}</h1><p>workload {} · nemesis {} · seed {} · {} nodes · {} s · {} ops · lossyfs {} · snapshot every {} entries</p><p>convergence: {}</p>",
        if valid { "VALID" } else { "INVALID" },
        esc(results["workload"].as_str().unwrap_or("")),
        esc(results["nemesis"].as_str().unwrap_or("")),
        results["seed"],
        results["nodes"],
        results["time_limit_s"],
        results["ops"],
        results["lossyfs"],
        results["snapshot_every"],
        esc(results["convergence"].as_str().unwrap_or("")),
    );
    let anomalies = results["verdict"]["anomalies"].as_array().cloned().unwrap_or_default();
    let _ = write!(html, "<h2>Anomalies ({})</h2>", anomalies.len());
    for a in anomalies.iter().take(200) {
        let _ = write!(
            html,
            "<p><b>{}</b>: {}</p>",
            esc(a["checker"].as_str().unwrap_or("")),
            esc(a["message"].as_str().unwrap_or(""))
        );
        if a["ops"].as_array().is_some_and(|o| !o.is_empty()) {
            let _ = write!(html, "<pre>{}</pre>", esc(&serde_json::to_string_pretty(&a["ops"]).unwrap_or_default()));
        }
    }
    html.push_str("<h2>Throughput</h2><img src=\"throughput.svg\"><h2>Faults</h2><table><tr><th>fault</th><th>start</th><th>heal</th><th>quorum by design</th><th>ok/s faulty</th><th>ok/s healed</th><th>recovery</th><th>what was done</th><th>evidence</th><th>missed</th></tr>");
    let phases = results["availability"]["phases"].as_array().cloned().unwrap_or_default();
    for (n, p) in nemesis.iter().zip(phases.iter().chain(std::iter::repeat(&serde_json::Value::Null))) {
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{:.1} s</td><td>{:.1} s</td><td>{}</td><td>{:.1}</td><td>{:.1}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&n.name),
            n.start_ns as f64 / 1e9,
            n.heal_ns as f64 / 1e9,
            n.quorum,
            p["ok_per_s_faulty"].as_f64().unwrap_or(0.0),
            p["ok_per_s_healed"].as_f64().unwrap_or(0.0),
            n.recovery_ms.map_or("<b>none</b>".into(), |ms| format!("{ms} ms")),
            esc(&n.detail),
            esc(&n.evidence.join("; ")),
            esc(&n.missed.join("; ")),
        );
    }
    html.push_str("</table><h2>Latency</h2><img src=\"latency.svg\"><p><a href=\"results.json\">results.json</a> · <a href=\"history.jsonl\">history.jsonl</a> · <a href=\"nemesis.jsonl\">nemesis.jsonl</a></p>");
    std::fs::write(dir.join("index.html"), html)?;
    Ok(())
}

/// Rewrites `index.html` in the store: one row per run with its verdict.
pub fn write_index(store: &Path) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    for entry in std::fs::read_dir(store)? {
        let dir = entry?.path();
        let Ok(text) = std::fs::read_to_string(dir.join("results.json")) else { continue };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else { continue };
        let name = dir.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
        rows.push((name, v));
    }
    rows.sort_by(|a, b| b.0.cmp(&a.0));
    let mut html = String::from(
        "<!doctype html><meta charset=utf-8><title>raftcron chaos runs</title><style>body{font-family:sans-serif}td,th{padding:4px 10px;border-bottom:1px solid #ddd}</style>\
         <h1>raftcron chaos runs</h1><table><tr><th>run</th><th>workload</th><th>nemesis</th><th>seconds</th><th>ops</th><th>anomalies</th><th>verdict</th></tr>",
    );
    for (name, v) in rows {
        let _ = write!(
            html,
            "<tr><td><a href=\"{name}/index.html\">{name}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(v["workload"].as_str().unwrap_or("")),
            esc(v["nemesis"].as_str().unwrap_or("")),
            v["time_limit_s"],
            v["ops"],
            v["verdict"]["anomalies"].as_array().map_or(0, |a| a.len()),
            if v["valid"].as_bool() == Some(true) { "valid" } else { "<b>INVALID</b>" }
        );
    }
    html.push_str("</table>");
    std::fs::write(store.join("index.html"), html)?;
    Ok(())
}

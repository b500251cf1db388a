//! The per-run picture (latency over time, nemesis intervals shaded) and the index page
//! over all runs in the store. Plain SVG and HTML, written by hand: a few rectangles,
//! circles and labels need no plotting library.

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
    let palette = ["#fbb4ae", "#b3cde3", "#ccebc5", "#decbe4", "#fed9a6", "#e5d8bd"];
    for (i, n) in nemesis.iter().enumerate() {
        let (x0, x1) = (x(n.start_ns as f64 / 1e9), x(n.end_ns as f64 / 1e9));
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
    for ms in [1.0, 10.0, 100.0, 1000.0, 10_000.0] {
        let yy = y(ms);
        let _ = write!(
            s,
            r##"<line x1="{LEFT}" x2="{:.1}" y1="{yy:.1}" y2="{yy:.1}" stroke="#ddd"/><text x="4" y="{:.1}">{ms} ms</text>"##,
            W - 20.0,
            yy + 4.0
        );
    }
    let step = (t_max / 10.0).ceil().max(1.0);
    let mut t = 0.0;
    while t <= t_max {
        let _ = write!(s, r#"<text x="{:.1}" y="{:.1}">{t}s</text>"#, x(t) - 6.0, H - BOTTOM + 16.0);
        t += step;
    }
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
            "<tr><td><a href=\"{name}/latency.svg\">{name}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
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

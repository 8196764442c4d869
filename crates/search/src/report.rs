//! Search outputs: every evaluated point and the front as JSON and CSV, and the front as SVG.

use std::fmt::Write as _;
use std::path::Path;

use serde_json::json;

use crate::SearchError;
use crate::evaluator::Evaluated;

fn write(path: &Path, text: &str) -> Result<(), SearchError> {
    // A unique temporary file and a rename: never a half-written output.
    Ok(secateur_runs::write_atomic(path, text.as_bytes())?)
}

/// Writes `evaluations.json`, `front.json`, `points.csv` and `front.svg` into `dir`.
pub fn write_outputs(dir: &Path, names: &[String], all: &[Evaluated], front: &[Evaluated]) -> Result<(), SearchError> {
    std::fs::create_dir_all(dir).map_err(|source| SearchError::Io { path: dir.to_path_buf(), source })?;
    write(&dir.join("evaluations.json"), &serde_json::to_string_pretty(&json!({"objectives": names, "points": all})).expect("JSON"))?;
    write(&dir.join("front.json"), &serde_json::to_string_pretty(&json!({"objectives": names, "front": front})).expect("JSON"))?;
    let mut csv = String::from("on_front");
    for n in names {
        let _ = write!(csv, ",{n}");
    }
    csv += ",config,error\n";
    for e in all {
        let on = front.iter().any(|f| f.x == e.x);
        let _ = write!(csv, "{}", on as u8);
        for k in 0..names.len() {
            let _ = write!(csv, ",{}", e.f.as_ref().map_or(String::new(), |f| f[k].to_string()));
        }
        let cfg: Vec<String> = e.x.iter().map(|v| v.to_string()).collect();
        let _ = writeln!(csv, ",\"{}\",\"{}\"", cfg.join(" "), e.error.clone().unwrap_or_default().replace('"', "'"));
    }
    write(&dir.join("points.csv"), &csv)?;
    write(&dir.join("front.svg"), &svg(names, all, front))
}

/// A scatter plot of the first two objectives: every evaluated point in grey, the front in red
/// joined by a line, axes named by objective.
pub fn svg(names: &[String], all: &[Evaluated], front: &[Evaluated]) -> String {
    let (w, h, pad) = (640.0, 480.0, 70.0);
    let pts: Vec<(f64, f64)> = all.iter().filter_map(|e| e.f.as_ref().map(|f| (f[0], f.get(1).copied().unwrap_or(0.0)))).collect();
    let (mut x0, mut x1, mut y0, mut y1) = (f64::INFINITY, f64::NEG_INFINITY, f64::INFINITY, f64::NEG_INFINITY);
    for &(x, y) in pts.iter().filter(|(x, y)| x.is_finite() && y.is_finite()) {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if !x0.is_finite() {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    let (dx, dy) = ((x1 - x0).max(1e-12), (y1 - y0).max(1e-12));
    let px = |x: f64| pad + (x - x0) / dx * (w - 2.0 * pad);
    let py = |y: f64| h - pad - (y - y0) / dy * (h - 2.0 * pad);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
    let _ = writeln!(s, "<line x1=\"{pad}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>", h - pad, w - pad, h - pad);
    let _ = writeln!(s, "<line x1=\"{pad}\" y1=\"{pad}\" x2=\"{pad}\" y2=\"{}\" stroke=\"black\"/>", h - pad);
    for i in 0..=4 {
        let t = i as f64 / 4.0;
        let (xv, yv) = (x0 + t * dx, y0 + t * dy);
        let _ = writeln!(s, "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{:.4}</text>", px(xv), h - pad + 18.0, xv);
        let _ = writeln!(s, "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{:.4}</text>", pad - 6.0, py(yv) + 4.0, yv);
    }
    let esc = |t: &str| t.replace('&', "&amp;").replace('<', "&lt;");
    let _ =
        writeln!(s, "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>", w / 2.0, h - 20.0, esc(names.first().map_or("f1", |n| n)));
    let _ = writeln!(
        s,
        "<text x=\"20\" y=\"{}\" text-anchor=\"middle\" transform=\"rotate(-90 20 {})\">{}</text>",
        h / 2.0,
        h / 2.0,
        esc(names.get(1).map_or("f2", |n| n))
    );
    for &(x, y) in &pts {
        if x.is_finite() && y.is_finite() {
            let _ = writeln!(s, "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"2.5\" fill=\"#999\"/>", px(x), py(y));
        }
    }
    let mut fp: Vec<(f64, f64)> = front.iter().filter_map(|e| e.f.as_ref().map(|f| (f[0], f.get(1).copied().unwrap_or(0.0)))).collect();
    fp.sort_by(|a, b| a.0.total_cmp(&b.0));
    let line: Vec<String> = fp.iter().map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y))).collect();
    let _ = writeln!(s, "<polyline points=\"{}\" fill=\"none\" stroke=\"#c00\"/>", line.join(" "));
    for &(x, y) in &fp {
        let _ = writeln!(s, "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3.5\" fill=\"#c00\"/>", px(x), py(y));
    }
    s + "</svg>\n"
}

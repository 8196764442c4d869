//! The NAS recipe's summary table and Pareto plot, from the runs' `report.json`.

/// The front (NSGA-II rows) of a `secateur nas` report as (parameters, test accuracy %).
fn front_points(report: &serde_json::Value) -> Vec<(f64, f64)> {
    let mut pts: Vec<(f64, f64)> = report["rows"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["name"].as_str().is_some_and(|n| n.starts_with("nsga2")))
        .filter_map(|r| Some((r["parameters"].as_f64()?, r["test_accuracy"].as_f64()? * 100.0)))
        .collect();
    pts.sort_by(|a, b| a.0.total_cmp(&b.0));
    pts
}

/// One line per run: the front's size, parameter range, and test accuracy at its ends.
pub fn nas_summary(runs: &[(String, serde_json::Value)]) -> String {
    let mut t = String::from(
        "Summary (NAS-paper ablation): the NSGA-II front of each run, test accuracy of its extracted sub-networks.\n\n| Run | Front size | Parameters (min - max) | Accuracy at the smallest | Best accuracy | Mean accuracy |\n|---|---|---|---|---|---|\n",
    );
    for (name, report) in runs {
        let pts = front_points(report);
        if pts.is_empty() {
            continue;
        }
        let best = pts.iter().map(|p| p.1).fold(f64::MIN, f64::max);
        let mean = pts.iter().map(|p| p.1).sum::<f64>() / pts.len() as f64;
        t += &format!(
            "| {name} | {} | {:.0} - {:.0} | {:.1}% | {best:.1}% | {mean:.1}% |\n",
            pts.len(),
            pts[0].0,
            pts[pts.len() - 1].0,
            pts[0].1
        );
    }
    t
}

/// Test accuracy against parameters of every run's front, one coloured series per run.
pub fn pareto_svg(runs: &[(String, serde_json::Value)]) -> String {
    const COLORS: [&str; 8] = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"];
    let series: Vec<(&str, Vec<(f64, f64)>)> = runs.iter().map(|(n, r)| (n.as_str(), front_points(r))).collect();
    let all: Vec<(f64, f64)> = series.iter().flat_map(|s| s.1.iter().copied()).collect();
    let (w, h, m) = (720.0, 440.0, 60.0);
    let (x0, x1) = all.iter().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let (y0, y1) = (0.0, all.iter().map(|p| p.1).fold(1.0, f64::max) * 1.1);
    let span = (x1 - x0).max(1.0);
    let px = |x: f64| m + (x - x0) / span * (w - 2.0 * m - 160.0);
    let py = |y: f64| h - m - (y - y0) / (y1 - y0) * (h - 2.0 * m);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
    svg += &format!(
        "<line x1=\"{m}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/><line x1=\"{m}\" y1=\"{m}\" x2=\"{m}\" y2=\"{}\" stroke=\"black\"/>\n",
        h - m,
        w - m - 160.0,
        h - m,
        h - m
    );
    for k in 0..=4 {
        let (xv, yv) = (x0 + span * k as f64 / 4.0, y0 + (y1 - y0) * k as f64 / 4.0);
        svg += &format!("<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{:.0}k</text>", px(xv), h - m + 16.0, xv / 1000.0);
        svg += &format!("<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{yv:.0}%</text>\n", m - 6.0, py(yv) + 4.0);
    }
    svg += &format!(
        "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">parameters</text><text x=\"14\" y=\"{:.1}\" transform=\"rotate(-90 14 {:.1})\" text-anchor=\"middle\">test accuracy</text>\n",
        (w - 160.0) / 2.0,
        h - 18.0,
        h / 2.0,
        h / 2.0
    );
    for (i, (name, pts)) in series.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        let dashed = if name.ends_with("importance") { " stroke-dasharray=\"4 3\"" } else { "" };
        let path: Vec<String> = pts.iter().map(|p| format!("{:.1},{:.1}", px(p.0), py(p.1))).collect();
        svg += &format!("<polyline points=\"{}\" fill=\"none\" stroke=\"{c}\"{dashed}/>\n", path.join(" "));
        for p in pts {
            svg += &format!("<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{c}\"/>", px(p.0), py(p.1));
        }
        let ly = m + 16.0 * i as f64;
        svg += &format!(
            "\n<line x1=\"{}\" y1=\"{ly}\" x2=\"{}\" y2=\"{ly}\" stroke=\"{c}\"{dashed}/><text x=\"{}\" y=\"{:.1}\">{name}</text>\n",
            w - 150.0,
            w - 130.0,
            w - 125.0,
            ly + 4.0
        );
    }
    svg + "</svg>\n"
}

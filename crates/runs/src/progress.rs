//! Progress that shows on a terminal and in a log file alike.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// Progress of a long phase over `total` units: an indicatif bar when stderr is a terminal,
/// otherwise a plain line (`LABEL: POS/TOTAL UNIT [elapsed, eta] MSG`) every few seconds (every
/// `SECATEUR_PROGRESS_SECS` seconds when set; 10 by default) and one at the end, so a log file
/// or CI shows that work goes on.
pub struct Progress {
    bar: Option<ProgressBar>,
    plain: Option<Mutex<Plain>>,
}

struct Plain {
    label: String,
    unit: String,
    total: u64,
    pos: u64,
    start_pos: u64,
    msg: String,
    started: Instant,
    last: Instant,
    every: Duration,
}

impl Plain {
    fn line(&self) -> String {
        let elapsed = self.started.elapsed().as_secs_f64();
        let done = self.pos.saturating_sub(self.start_pos);
        let eta = if done > 0 { elapsed / done as f64 * self.total.saturating_sub(self.pos) as f64 } else { f64::NAN };
        let eta = if eta.is_finite() { format!(", eta {eta:.0}s") } else { String::new() };
        let msg = if self.msg.is_empty() { String::new() } else { format!(" {}", self.msg) };
        format!("{}: {}/{} {} [{elapsed:.0}s{eta}]{msg}", self.label, self.pos, self.total, self.unit)
    }
}

impl Progress {
    /// Progress of `label` over `total` `unit`s (e.g. "steps"), starting at `start`; nothing is
    /// shown unless `show`.
    pub fn new(label: &str, unit: &str, total: usize, start: usize, show: bool) -> Self {
        if !show {
            return Self { bar: None, plain: None };
        }
        if std::io::stderr().is_terminal() {
            let style = ProgressStyle::with_template(&format!(
                "{label} {{bar:30}} {{pos}}/{{len}} {unit} [{{elapsed_precise}}<{{eta_precise}}] {{msg}}"
            ))
            .unwrap_or_else(|_| ProgressStyle::default_bar());
            let bar = ProgressBar::new(total as u64).with_style(style);
            bar.set_position(start as u64);
            return Self { bar: Some(bar), plain: None };
        }
        let secs = std::env::var("SECATEUR_PROGRESS_SECS")
            .ok()
            .and_then(|s| s.parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s >= 0.0)
            .unwrap_or(10.0);
        let now = Instant::now();
        let plain = Plain {
            label: label.to_string(),
            unit: unit.to_string(),
            total: total as u64,
            pos: start as u64,
            start_pos: start as u64,
            msg: String::new(),
            started: now,
            last: now,
            every: Duration::from_secs_f64(secs),
        };
        Self { bar: None, plain: Some(Mutex::new(plain)) }
    }

    fn with_plain(&self, f: impl FnOnce(&mut Plain)) {
        if let Some(p) = &self.plain
            && let Ok(mut p) = p.lock()
        {
            f(&mut p);
            if p.last.elapsed() >= p.every {
                p.last = Instant::now();
                eprintln!("{}", p.line());
            }
        }
    }

    /// Advances by `n` units.
    pub fn inc(&self, n: u64) {
        if let Some(b) = &self.bar {
            b.inc(n);
        }
        self.with_plain(|p| p.pos += n);
    }

    /// Sets the message shown after the counts (e.g. the loss).
    pub fn set_message(&self, msg: impl Into<String>) {
        let msg = msg.into();
        if let Some(b) = &self.bar {
            b.set_message(msg.clone());
        }
        if let Some(p) = &self.plain
            && let Ok(mut p) = p.lock()
        {
            p.msg = msg;
        }
    }

    /// Ends the phase: the bar is cleared; in plain mode a last line is printed.
    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
        if let Some(p) = &self.plain
            && let Ok(p) = p.lock()
        {
            eprintln!("{}", p.line());
        }
    }
}

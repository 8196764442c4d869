//! Fault injection against the `secateur` binary: clobbering, concurrent writers, kill -9 at
//! random instants followed by `--resume`, a disk that fills up, changed arguments on resume,
//! degenerate data, nonsense settings, hostile files and the messages they get.
//!
//! Random kill instants come from `SECATEUR_FAULT_SEED` (default: the clock; the seed is printed
//! so a failure can be replayed).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use safetensors::tensor::{SafeTensors, TensorView};

mod common;
use common::{fixture, records, secateur, secateur_in};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_secateur"))
}

/// Fails unless the command failed cleanly (no panic) with a message containing `want`.
fn refused(args: &[&str], want: &str) -> String {
    let (ok, _, stderr) = secateur(args);
    assert!(!ok, "{args:?} succeeded; expected an error with {want:?}");
    assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
    assert!(stderr.contains(want), "{args:?}: expected {want:?} in: {stderr}");
    stderr
}

fn seed() -> u64 {
    std::env::var("SECATEUR_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64)
}

/// A small deterministic generator (splitmix64) for kill instants.
struct Rng(u64);
impl Rng {
    fn next_f64(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Every file under `dir` (relative path -> bytes), leaving out what timing or locking makes
/// differ between two runs that computed the same thing.
fn files(dir: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let rel = p.strip_prefix(dir).unwrap().to_string_lossy().to_string();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

/// A report with its timing and location fields removed (they differ between runs).
fn stable(v: &serde_json::Value, root: &Path) -> serde_json::Value {
    match v {
        serde_json::Value::Object(m) => serde_json::Value::Object(
            m.iter()
                .filter(|(k, _)| !(k.ends_with("seconds") || k.contains("latency") || k.ends_with("speedup") || *k == "resumed_from"))
                .map(|(k, v)| (k.clone(), stable(v, root)))
                .collect(),
        ),
        serde_json::Value::Array(a) => serde_json::Value::Array(a.iter().map(|x| stable(x, root)).collect()),
        serde_json::Value::String(s) => serde_json::Value::String(s.replace(&root.display().to_string(), "RUN")),
        other => other.clone(),
    }
}

/// Compares two finished run directories: every weights file bit for bit, and every JSON report
/// without its timing fields.
fn assert_same_run(a: &Path, b: &Path, what: &str) {
    let (fa, fb) = (files(a), files(b));
    // burn's own records (`*.bin`: optimizer state, NAS super-network checkpoints) are left out:
    // they hold per-process random parameter ids and hash-map order, so their bytes differ
    // between any two processes. What they produce is compared: the adapters, the merged and
    // extracted models (the NAS maximal sub-network is the whole super-network) and reports.
    let weights = |f: &std::collections::BTreeMap<String, Vec<u8>>| -> Vec<String> {
        f.keys().filter(|k| k.ends_with(".safetensors")).cloned().collect()
    };
    assert_eq!(weights(&fa), weights(&fb), "{what}: the same weight files");
    for k in weights(&fa) {
        assert!(fa[&k] == fb[&k], "{what}: {k} differs between the interrupted and the uninterrupted run");
    }
    for k in fa.keys().filter(|k| k.ends_with("report.json") || k.ends_with("front.json")) {
        let x: serde_json::Value = serde_json::from_slice(&fa[k]).unwrap();
        let y: serde_json::Value = serde_json::from_slice(&fb[k]).unwrap();
        assert_eq!(stable(&x, a), stable(&y, b), "{what}: {k}");
    }
}

/// Runs `args` (which end with `--out DIR`) with kill -9 at up to `kills` random instants of
/// an uninterrupted run's duration `span`, each followed by `--resume`, until a run finishes.
/// Returns how many kills landed before the end.
fn run_with_kills(args: &[&str], resume: &[&str], span: Duration, kills: usize, rng: &mut Rng) -> usize {
    let mut landed = 0;
    let mut first = true;
    for _ in 0..kills {
        let delay = span.mul_f64(rng.next_f64());
        let mut c = bin();
        c.args(args);
        if !first {
            c.args(resume);
        }
        let mut child = c.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
        let start = Instant::now();
        while start.elapsed() < delay {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let finished = child.try_wait().unwrap();
        if finished.is_none() {
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
            landed += 1;
            first = false;
            continue;
        }
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        return landed;
    }
    let mut full = args.to_vec();
    if !first {
        full.extend(resume);
    }
    let (ok, _, stderr) = secateur(&full);
    assert!(ok, "resume after {landed} kills: {stderr}");
    landed
}

fn timed(args: &[&str]) -> Duration {
    let start = Instant::now();
    let (ok, _, stderr) = secateur(args);
    assert!(ok, "{stderr}");
    start.elapsed()
}

/// The common settings of a small Shears-family run on the llama_gqa fixture.
fn small_run<'a>(model: &'a str, data: &'a str, epochs: &'a str) -> Vec<&'a str> {
    vec![
        "--model",
        model,
        "--dataset",
        data,
        "--epochs",
        epochs,
        "--batch-size",
        "8",
        "--micro-batch-size",
        "4",
        "--ranks",
        "4,2",
        "--test-size",
        "6",
        "--val-size",
        "4",
        "--calibration-samples",
        "4",
        "--max-new-tokens",
        "3",
        "--checkpoint-every",
        "1",
    ]
}

/// A one-epoch Shears run of `model` on 40 records in `tmp`, into `tmp/run`: its arguments and
/// run directory.
fn one_epoch_shears(tmp: &Path, model: &Path) -> (Vec<String>, PathBuf) {
    let data = records(tmp, 40, true);
    let out = tmp.join("run");
    let mut args = vec!["shears".to_string()];
    args.extend(small_run(model.to_str().unwrap(), data.to_str().unwrap(), "1").iter().map(|s| s.to_string()));
    args.extend(["--out".to_string(), out.display().to_string()]);
    (args, out)
}

#[test]
fn kill_9_at_random_instants_then_resume_equals_an_uninterrupted_run() {
    let seed = seed();
    println!("SECATEUR_FAULT_SEED={seed}");
    let mut rng = Rng(seed);
    let tmp = tempfile::tempdir().unwrap();
    let data = records(tmp.path(), 40, true);
    let model = fixture("llama_gqa");
    let (m, d) = (model.to_str().unwrap(), data.to_str().unwrap());
    let cases: Vec<(&str, Vec<&str>)> =
        vec![("shears", vec![]), ("sqft", vec!["--group-size", "16"]), ("nas", vec!["--budget", "4", "--strategy", "sandwich"])];
    let mut total = 0;
    for (command, extra) in cases {
        let run = |name: &str| {
            let out = tmp.path().join(format!("{command}-{name}"));
            let mut a: Vec<String> = vec![command.to_string()];
            a.extend(small_run(m, d, "2").iter().map(|s| s.to_string()));
            a.extend(extra.iter().map(|s| s.to_string()));
            a.extend(["--out".to_string(), out.display().to_string()]);
            (a, out)
        };
        let (clean_args, clean) = run("clean");
        let clean_args: Vec<&str> = clean_args.iter().map(String::as_str).collect();
        let span = timed(&clean_args);
        let (killed_args, killed) = run("killed");
        let killed_args: Vec<&str> = killed_args.iter().map(String::as_str).collect();
        let landed = run_with_kills(&killed_args, &["--resume"], span, 3, &mut rng);
        println!("{command}: {landed} kills landed in a {span:?} run");
        total += landed;
        assert_same_run(&clean, &killed, command);
    }
    // The search of a finished run: killed mid-search, the rerun repeats nothing and ends the same.
    let run = tmp.path().join("shears-clean");
    let r = run.to_str().unwrap();
    fn search(dir: &str) -> Vec<&str> {
        vec!["search", "--run", dir, "--algo", "nsga2", "--budget", "8", "--pop", "4"]
    }
    let copy = tmp.path().join("shears-search");
    copy_dir(&run, &copy);
    let span = timed(&search(r));
    let c = copy.to_str().unwrap().to_string();
    let landed = run_with_kills(&search(&c), &[], span, 3, &mut rng);
    println!("search: {landed} kills landed in a {span:?} run");
    total += landed;
    let front = |d: &Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(d.join("search/nsga2/front.json")).unwrap()).unwrap()
    };
    assert_eq!(front(&run), front(&copy));
    println!("{total} kills in all (seed {seed})");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            copy_dir(&p, &to.join(e.file_name()));
        } else {
            std::fs::copy(&p, to.join(e.file_name())).unwrap();
        }
    }
}

/// A tmpfs mounted for the test (root only), unmounted on drop.
struct Tmpfs(PathBuf);
impl Tmpfs {
    fn mount(at: &Path, bytes: usize) -> Option<Self> {
        std::fs::create_dir_all(at).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(at)
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        ok.then(|| Self(at.to_path_buf()))
    }
}
impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn leftovers(dir: &Path) -> Vec<String> {
    files(dir).into_keys().filter(|k| k.contains(".tmp-") || k.contains(".partial-") || k.contains(".old-")).collect()
}

#[test]
fn a_disk_that_fills_during_checkpoints_fails_cleanly_and_resumes_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let data = records(tmp.path(), 40, true);
    let model = fixture("llama_gqa");
    let (m, d) = (model.to_str().unwrap(), data.to_str().unwrap());
    let clean = tmp.path().join("clean");
    let mut args = vec!["shears"];
    args.extend(small_run(m, d, "2"));
    let (ok, _, stderr) = secateur(&[&args[..], &["--out", clean.to_str().unwrap()]].concat());
    assert!(ok, "{stderr}");
    let size: usize = files(&clean).values().map(Vec::len).sum();
    let Some(fs) = Tmpfs::mount(&tmp.path().join("disk"), 4 * size + (1 << 20)) else {
        println!("skipped: mounting a tmpfs needs root");
        return;
    };
    // Leave room for part of the run: the disk fills during training checkpoints.
    let filler = fs.0.join("filler");
    let free = 4 * size + (1 << 20);
    std::fs::write(&filler, vec![0u8; free - size * 7 / 10]).unwrap();
    let out = fs.0.join("run");
    let o = out.to_str().unwrap();
    let (ok, _, stderr) = secateur(&[&args[..], &["--out", o]].concat());
    assert!(!ok, "the run should not fit");
    assert!(stderr.contains("cannot write") && stderr.contains("No space left"), "{stderr}");
    assert!(!stderr.contains("cannot read"), "a write failure is not reported as a read: {stderr}");
    assert_eq!(leftovers(&out), Vec::<String>::new(), "temporaries removed on the error path");
    std::fs::remove_file(&filler).unwrap();
    let (ok, _, stderr) = secateur(&[&args[..], &["--out", o, "--resume"]].concat());
    assert!(ok, "{stderr}");
    assert_same_run(&clean, &out, "full disk then resume");
}

#[test]
fn runs_never_clobber_and_resume_checks_its_arguments() {
    let tmp = tempfile::tempdir().unwrap();
    let data = records(tmp.path(), 40, true);
    let model = fixture("llama_gqa");
    let (m, d) = (model.to_str().unwrap(), data.to_str().unwrap());
    let run = tmp.path().join("shears");
    let r = run.to_str().unwrap();
    let mut args = vec!["shears"];
    args.extend(small_run(m, d, "1"));
    args.extend(["--out", r]);
    // Two processes on one directory: one holds the lock, the other is refused (it would see a
    // half-made run or the finished one; it never writes into it).
    let a = bin().args(&args).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let b = bin().args(&args).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert!(a.status.success() != b.status.success(), "exactly one of two concurrent runs proceeds");
    let loser = if a.status.success() { &b } else { &a };
    let msg = String::from_utf8_lossy(&loser.stderr);
    assert!(msg.contains("in use by another secateur process") || msg.contains("--resume"), "{msg}");
    // Another command's default directory is its own, and a directory made by another command
    // is refused (issue: sqft rewrote a finished shears run).
    let cwd = tempfile::tempdir().unwrap();
    copy_dir(&run, &cwd.path().join("runs/sqft"));
    copy_dir(&run, &cwd.path().join("runs/nas"));
    for command in ["sqft", "nas"] {
        let (ok, _, stderr) = secateur_in(Some(cwd.path()), &[command, "--epochs", "1"]);
        assert!(!ok && stderr.contains(&format!("runs/{command}")) && stderr.contains("holds a `secateur shears` run"), "{stderr}");
    }
    let mut sqft = vec!["sqft"];
    sqft.extend(small_run(m, d, "1"));
    sqft.extend(["--out", r]);
    refused(&[&sqft[..], &["--resume"]].concat(), "holds a `secateur shears` run");
    // Resume with an argument that changes results is refused, naming it.
    for (flag, value, epochs) in [("--sparsity", "0.3", "1"), ("--seed", "1", "1"), ("--epochs", "2", "2")] {
        let mut changed = vec!["shears"];
        changed.extend(small_run(m, d, epochs));
        changed.extend(["--out", r, "--resume"]);
        if flag != "--epochs" {
            changed.extend([flag, value]);
        }
        let e = refused(&changed, &format!("{flag}: recorded"));
        assert!(e.contains("cannot resume with different arguments"), "{e}");
    }
    // A user's directory is not a run; --force replaces it whole.
    let user = tmp.path().join("mine");
    std::fs::create_dir_all(&user).unwrap();
    std::fs::write(user.join("report.md"), "my notes").unwrap();
    let mut to_user: Vec<&str> = args[..args.len() - 1].to_vec();
    to_user.push(user.to_str().unwrap());
    refused(&to_user, "is not empty and is not a secateur run");
    assert_eq!(std::fs::read_to_string(user.join("report.md")).unwrap(), "my notes");
    // prune/quantize: never into the input, never into another model.
    let model_copy = tmp.path().join("model");
    copy_dir(&model, &model_copy);
    let mc = model_copy.to_str().unwrap();
    let before = files(&model_copy);
    let calib = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../sparsity/tests/fixtures/calibration.json");
    let c = calib.to_str().unwrap();
    refused(&["prune", "--model", mc, "--sparsity", "0.5", "--calibration", c, "--out", mc, "--force"], "is the input model");
    refused(&["quantize", "--model", mc, "--group-size", "16", "--out", mc], "is the input model");
    let other = tmp.path().join("other");
    copy_dir(&fixture("neox_parallel"), &other);
    std::fs::write(other.join("README.md"), "another model").unwrap();
    let o = other.to_str().unwrap();
    refused(&["prune", "--model", mc, "--sparsity", "0.5", "--calibration", c, "--out", o], "--force");
    assert_eq!(files(&model_copy), before, "the source is untouched");
    let (ok, _, stderr) = secateur(&["prune", "--model", mc, "--sparsity", "0.5", "--calibration", c, "--out", o, "--force"]);
    assert!(ok, "{stderr}");
    assert!(!other.join("README.md").exists() && !other.join("reference.safetensors").exists(), "replaced whole, not mixed");
    // The same command may replace its own earlier output (whole).
    let (ok, _, stderr) = secateur(&["prune", "--model", mc, "--sparsity", "0.3", "--calibration", c, "--out", o]);
    assert!(ok, "{stderr}");
    assert_eq!(leftovers(tmp.path()), Vec::<String>::new());
}

#[test]
fn degenerate_data_and_nonsense_settings_are_refused_before_any_work() {
    let tmp = tempfile::tempdir().unwrap();
    let model = fixture("llama_gqa");
    let m = model.to_str().unwrap();
    let out = tmp.path().join("never");
    let o = out.to_str().unwrap();
    let sixty = records(tmp.path(), 60, true);
    let e = refused(
        &["shears", "--model", m, "--dataset", sixty.to_str().unwrap(), "--ranks", "4,2", "--out", o],
        "60 records cannot be split",
    );
    assert!(e.contains("--val-size 6 --test-size 12"), "says how to size them: {e}");
    let no_answer = records(tmp.path(), 40, false);
    refused(
        &[
            "shears",
            "--model",
            m,
            "--dataset",
            no_answer.to_str().unwrap(),
            "--ranks",
            "4,2",
            "--out",
            o,
            "--val-size",
            "4",
            "--test-size",
            "4",
        ],
        "record 1 has no `answer`",
    );
    let data = records(tmp.path(), 40, true);
    let d = data.to_str().unwrap();
    let base = ["--model", m, "--dataset", d, "--val-size", "4", "--test-size", "4", "--out", o];
    let cases: &[(&str, &[&str], &str)] = &[
        ("sqft", &["--ranks", "16,32"], "strictly descending"),
        ("sqft", &["--ranks", "8,8"], "strictly descending"),
        ("sqft", &["--ranks", "1000"], "exceeds the width"),
        ("sqft", &["--lr", "NaN"], "learning rate NaN"),
        ("sqft", &["--lr", "1e30"], "learning rate"),
        ("sqft", &["--lr=-1"], "learning rate"),
        ("sqft", &["--alpha", "NaN"], "--alpha NaN"),
        ("sqft", &["--alpha", "0"], "--alpha 0"),
        ("sqft", &["--cutoff", "0"], "--cutoff 0"),
        ("sqft", &["--cutoff", "1"], "--cutoff 1"),
        ("sqft", &["--batch-size", "0"], "batch size 0"),
        ("sqft", &["--epochs", "0"], "--epochs must be at least 1"),
        ("sqft", &["--targets", ""], "name at least one projection"),
        ("sqft", &["--targets", "q,zz"], "unknown target `zz`"),
        ("sqft", &["--calibration-samples", "100000000"], "exceed"),
        ("sqft", &["--group-size", "1000000"], "--group-size 1000000"),
        ("sqft", &["--bits", "3"], "--bits 3"),
    ];
    for (command, extra, want) in cases {
        // Valid defaults for this small fixture, unless the case sets the flag itself.
        let mut args = vec![*command];
        args.extend(base);
        for (flag, value) in [("--group-size", "16"), ("--ranks", "4,2")] {
            if !extra.contains(&flag) {
                args.extend([flag, value]);
            }
        }
        args.extend(extra.iter());
        let e = refused(&args, want);
        assert!(!e.contains("accuracy") && !e.contains("wanda:"), "{args:?}: refused only after work: {e}");
    }
    let nas_base = ["--model", m, "--dataset", d, "--val-size", "4", "--test-size", "4", "--out", o];
    for (extra, want) in [(["--budget", "0"], "--budget 0"), (["--bins", "0"], "--bins 0"), (["--ranks", "16,32"], "strictly descending")] {
        refused(&[&["nas"][..], &nas_base, &extra].concat(), want);
    }
    // Shears itself goes through the same checks (its ranks default to 32,24,16: too wide here).
    refused(&[&["shears"][..], &nas_base].concat(), "rank 32 exceeds the width of layers.0.self_attn.k (16 x 32)");
    assert!(!out.exists(), "nothing was written by a refused command");
    refused(&["quantize", "--model", m, "--group-size", "-2", "--out", o], "--group-size -2");
    refused(&["quantize", "--model", m, "--group-size", "16", "--method", "gptq", "--out", o], "--method gptq needs --calibration");
    refused(&["quantize", "--model", m, "--group-size", "16", "--method", "rtn", "--act-order", "--out", o], "GPTQ settings");
    refused(&["quantize", "--model", m, "--group-size", "16", "--method", "gptq", "--damp", "0", "--calibration", m, "--out", o], "damp 0");
    refused(
        &["quantize", "--model", m, "--group-size", "16", "--method", "gptq", "--calibration", "/nonexistent.json", "--out", o],
        "/nonexistent.json",
    );
    assert!(!out.exists(), "nothing was written by a refused quantize");
    refused(&["moo-bench", "--problem", "zdt1", "--evals", "0"], "--evals must be at least 1");
    refused(&["moo-bench", "--problem", "zdt1", "--algo", "hill-climb"], "real variables");
    refused(&["moo-bench", "--problem", "zdt1", "--algo", "rnsga2", "--ref-points", "0.5"], "2 finite coordinates");
    let (ok, stdout, _) = secateur(&["moo-bench", "--problem", "zdt1-discrete", "--algo", "hill-climb", "--evals", "50"]);
    assert!(ok && stdout.contains("\"evaluations\""), "hill climbing on choices still runs");
    refused(&["generate", "--model", m, "--prompt", &"the cat ".repeat(400), "--max-new-tokens", "4"], "context window");
    refused(&["generate", "--model", m, "--prompt", "the", "--top-p", "0"], "--top-p 0");
    // A path-like algorithm name is refused by the parser, before anything is created.
    let run = tmp.path().join("run");
    std::fs::create_dir_all(&run).unwrap();
    refused(&["search", "--run", run.to_str().unwrap(), "--algo", "../../x"], "possible values");
    assert_eq!(std::fs::read_dir(&run).unwrap().count(), 0);
    refused(&["search", "--run", run.to_str().unwrap()], "is not a `secateur shears` run directory");
}

#[test]
fn training_that_diverges_stops_with_an_error_naming_the_step() {
    // A final norm and head scaled near f32's maximum overflow the logits to +-inf (finite
    // weights, so loading accepts them): log-softmax gives NaN and the loss is not finite.
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("huge");
    copy_dir(&fixture("llama_gqa"), &model);
    scale_tensor(&model.join("model.safetensors"), "model.norm.weight", 1e30);
    scale_tensor(&model.join("model.safetensors"), "lm_head.weight", 1e30);
    let (args, _) = one_epoch_shears(tmp.path(), &model);
    refused(&args.iter().map(String::as_str).collect::<Vec<_>>(), "training diverged at step 1");
}

/// Rewrites one f32 tensor of a safetensors file multiplied by `factor`.
fn scale_tensor(path: &Path, name: &str, factor: f32) {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut owned: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (n, t) in st.tensors() {
        let mut data = t.data().to_vec();
        if n == name {
            data = data.chunks_exact(4).flat_map(|c| (f32::from_le_bytes(c.try_into().unwrap()) * factor).to_le_bytes()).collect();
        }
        owned.push((n, t.dtype(), t.shape().to_vec(), data));
    }
    let views: Vec<(String, TensorView)> =
        owned.iter().map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap())).collect();
    std::fs::write(path, safetensors::tensor::serialize(views, None).unwrap()).unwrap();
}

#[test]
fn hostile_checkpoints_get_typed_errors_naming_the_field_or_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    let variant = |name: &str| -> PathBuf {
        let d = tmp.path().join(name);
        copy_dir(&fixture("llama_gqa"), &d);
        d
    };
    let edit_config = |d: &Path, f: &dyn Fn(&mut serde_json::Value)| {
        let p = d.join("config.json");
        let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        f(&mut v);
        std::fs::write(p, v.to_string()).unwrap();
    };
    let info = |d: &Path, want: &str| refused(&["info", "--model", d.to_str().unwrap()], want);
    let d = variant("head_dim");
    edit_config(&d, &|v| v["head_dim"] = serde_json::json!(4611686018427387916u64));
    info(&d, "field `head_dim`");
    let d = variant("heads0");
    edit_config(&d, &|v| v["num_attention_heads"] = serde_json::json!(0));
    info(&d, "field `num_attention_heads`");
    // Non-finite weights.
    let d = variant("nan");
    scale_tensor(&d.join("model.safetensors"), "model.layers.0.mlp.up_proj.weight", f32::NAN);
    info(&d, "tensor `model.layers.0.mlp.up_proj.weight` holds a non-finite value");
    // A truncated weights file, and one cut inside its header.
    let d = variant("truncated");
    let bytes = std::fs::read(d.join("model.safetensors")).unwrap();
    std::fs::write(d.join("model.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    info(&d, "truncated");
    std::fs::write(d.join("model.safetensors"), &bytes[..20]).unwrap();
    info(&d, "truncated");
    // An index that lists no shard.
    let d = variant("index");
    std::fs::remove_file(d.join("model.safetensors")).unwrap();
    std::fs::write(d.join("model.safetensors.index.json"), r#"{"weight_map": {}}"#).unwrap();
    info(&d, "lists no tensors");
    // GPTQ configs with impossible bits.
    let q = tmp.path().join("q");
    let (ok, _, stderr) =
        secateur(&["quantize", "--model", fixture("llama_gqa").to_str().unwrap(), "--group-size", "16", "--out", q.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    for bits in [serde_json::json!(0), serde_json::json!(64), serde_json::json!(-4)] {
        edit_config(&q, &|v| v["quantization_config"]["bits"] = bits.clone());
        info(&q, "quantization_config.bits");
    }
    edit_config(&q, &|v| v["quantization_config"]["bits"] = serde_json::json!(4));
    // A quantized checkpoint where a dense one is needed.
    let calib = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../sparsity/tests/fixtures/calibration.json");
    let out = tmp.path().join("pq");
    refused(
        &[
            "prune",
            "--model",
            q.to_str().unwrap(),
            "--sparsity",
            "0.5",
            "--calibration",
            calib.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        "the checkpoint is quantized",
    );
    // A dataset error names its file once.
    let bad = tmp.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"instruction\": 1}\n").unwrap();
    let e = refused(
        &[
            "shears",
            "--model",
            fixture("llama_gqa").to_str().unwrap(),
            "--dataset",
            bad.to_str().unwrap(),
            "--ranks",
            "4,2",
            "--out",
            out.to_str().unwrap(),
        ],
        "line 1",
    );
    assert_eq!(e.matches(bad.to_str().unwrap()).count(), 1, "{e}");
}

#[test]
fn a_truncated_optimizer_state_is_named_on_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let (args, out) = one_epoch_shears(tmp.path(), &fixture("llama_gqa"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, _, stderr) = secateur(&args);
    assert!(ok, "{stderr}");
    let state: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("train-lora/state.json")).unwrap()).unwrap();
    let opt = out.join("train-lora").join(state["dir"].as_str().unwrap()).join("optimizer.bin");
    let bytes = std::fs::read(&opt).unwrap();
    std::fs::write(&opt, &bytes[..bytes.len() / 3]).unwrap();
    let e = refused(&[&args[..], &["--resume"]].concat(), "optimizer.bin: cannot be loaded (the file is truncated)");
    let errors: Vec<&str> = e.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{e}");
    assert!(!errors[0].contains('\\') && !errors[0].contains('"'), "no nested escaped error: {e}");
}

#[test]
fn wanda_uses_a_given_calibration_set_as_it_is() {
    // The Wanda reference's own calibration rows (unequal lengths, none longer than 16 tokens):
    // with --seq-len 16 every row is used once, so the masks are the reference's.
    let tmp = tempfile::tempdir().unwrap();
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../sparsity/tests/fixtures");
    let out = tmp.path().join("p");
    let (ok, stdout, stderr) = secateur(&[
        "prune",
        "--model",
        fixture("llama_gqa").to_str().unwrap(),
        "--sparsity",
        "0.5",
        "--calibration",
        fixtures.join("calibration.json").to_str().unwrap(),
        "--calibration-samples",
        "8",
        "--seq-len",
        "16",
        "--batch-size",
        "3",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("\"calibration_samples\":8"), "{stdout}");
    let ours = std::fs::read(out.join("masks.safetensors")).unwrap();
    let ours = SafeTensors::deserialize(&ours).unwrap();
    let reference = std::fs::read(fixtures.join("wanda_llama_gqa_unstructured_0.5.safetensors")).unwrap();
    let reference = SafeTensors::deserialize(&reference).unwrap();
    let (mut differ, mut total) = (0, 0);
    for (name, t) in ours.tensors() {
        // Site `layers.1.mlp.down` is the module `model.layers.1.mlp.down_proj`.
        let module = format!("model.{name}_proj");
        let r = reference.tensor(&format!("mask.{module}")).unwrap();
        total += t.data().len();
        differ += t.data().iter().zip(r.data()).filter(|(a, b)| a != b).count();
    }
    println!("{differ} of {total} mask entries differ from the reference");
    assert!(total > 0 && differ * 1000 <= total, "{differ} of {total} differ");
}

#[test]
fn logs_show_progress_when_stderr_is_not_a_terminal() {
    let tmp = tempfile::tempdir().unwrap();
    let (args, _) = one_epoch_shears(tmp.path(), &fixture("llama_gqa"));
    let o = bin().args(&args).env("SECATEUR_PROGRESS_SECS", "0").output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(stderr.lines().any(|l| l.starts_with("training: 2/4 steps")), "{stderr}");
    assert!(stderr.lines().any(|l| l.starts_with("pruning: 2/2 blocks")), "{stderr}");
}

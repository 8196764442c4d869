"""Helpers shared by the bench-real workers (no torch here: the llama.cpp worker must not need it)."""


def token_ids(batch, length, vocab, salt):
    """The deterministic token ids every side of `cargo xtask bench-real` uses (also in examples/bench_real.rs)."""
    return [[3 + (b * 7919 + t * 104729 + salt * 31) % (vocab - 3) for t in range(length)] for b in range(batch)]


def reset_peak():
    """Resets this process's peak resident memory (Linux `clear_refs` 5)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_mb():
    """Peak resident memory since the last reset, in MB (`VmHWM`)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")

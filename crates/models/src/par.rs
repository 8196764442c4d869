//! A parallel-for for the decoding kernels, whose calls are short (tens of microseconds) and
//! many (two hundred per token for a 30-block model): a handful of helper threads that spin
//! between calls, so that a call costs no thread wake-up, the way llama.cpp's thread pool works.
//! Handing such calls to rayon from outside its pool parks the caller and wakes a worker every
//! time, which measured ~40 µs per call on this 2-core machine, as much as the kernels' work.
//!
//! Helpers spin for [`SPIN`], then yield to other threads until [`PARK_AFTER`], then sleep
//! until the next call. One job runs at a time: a call made while another thread's job runs
//! (or from inside a job) runs its tasks on the calling thread.

use std::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Pure spinning after a call, waiting for the next.
pub const SPIN: Duration = Duration::from_micros(100);
/// Spinning with `yield_now` until this long after the last call, then sleeping.
pub const PARK_AFTER: Duration = Duration::from_millis(2);

struct Job {
    /// The task function, its lifetime erased (the caller waits until no helper holds it).
    f: *const (dyn Fn(usize) + Sync),
    tasks: usize,
    next: AtomicUsize,
    done: AtomicUsize,
}

struct Pool {
    helpers: usize,
    job: AtomicPtr<Job>,
    generation: AtomicU64,
    /// Helpers between reading `job` and finishing with it.
    active: AtomicUsize,
    busy: Mutex<()>,
    parked: AtomicUsize,
    sleep: Mutex<()>,
    wake: Condvar,
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<&'static Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        let helpers = rayon::current_num_threads().saturating_sub(1);
        let pool: &'static Pool = Box::leak(Box::new(Pool {
            helpers,
            job: AtomicPtr::new(std::ptr::null_mut()),
            generation: AtomicU64::new(0),
            active: AtomicUsize::new(0),
            busy: Mutex::new(()),
            parked: AtomicUsize::new(0),
            sleep: Mutex::new(()),
            wake: Condvar::new(),
        }));
        for h in 0..helpers {
            let spawned = std::thread::Builder::new().name(format!("secateur-kernel-{h}")).spawn(move || helper(pool));
            if spawned.is_err() {
                // Without helpers every call runs on its caller; nothing is lost but speed.
                break;
            }
        }
        pool
    })
}

fn run_tasks(job: &Job) {
    loop {
        let t = job.next.fetch_add(1, SeqCst);
        if t >= job.tasks {
            return;
        }
        // SAFETY: the job's caller keeps `f` alive until `done == tasks` and `active == 0`.
        unsafe { (*job.f)(t) };
        job.done.fetch_add(1, SeqCst);
    }
}

fn helper(pool: &'static Pool) {
    let mut seen = 0u64;
    let mut last = Instant::now();
    let mut spins = 0u32;
    loop {
        let g = pool.generation.load(SeqCst);
        if g != seen {
            seen = g;
            pool.active.fetch_add(1, SeqCst);
            let job = pool.job.load(SeqCst);
            if !job.is_null() {
                // SAFETY: a non-null job stays valid while `active` counts this helper.
                run_tasks(unsafe { &*job });
            }
            pool.active.fetch_sub(1, SeqCst);
            last = Instant::now();
            continue;
        }
        spins = spins.wrapping_add(1);
        if !spins.is_multiple_of(64) {
            std::hint::spin_loop();
            continue;
        }
        let idle = last.elapsed();
        if idle < SPIN {
            std::hint::spin_loop();
        } else if idle < PARK_AFTER {
            std::thread::yield_now();
        } else {
            let guard = pool.sleep.lock().unwrap_or_else(|e| e.into_inner());
            pool.parked.fetch_add(1, SeqCst);
            // Checked under the lock that the caller takes to notify: no wake-up is lost.
            let guard = if pool.generation.load(SeqCst) == seen { pool.wake.wait(guard).unwrap_or_else(|e| e.into_inner()) } else { guard };
            pool.parked.fetch_sub(1, SeqCst);
            drop(guard);
            last = Instant::now();
        }
    }
}

/// Runs `f(0) .. f(tasks - 1)` on the calling thread and the helpers; returns when all ran.
pub fn par_for(tasks: usize, f: &(dyn Fn(usize) + Sync)) {
    let pool = pool();
    let guard = match pool.busy.try_lock() {
        Ok(g) if tasks > 1 && pool.helpers > 0 => g,
        _ => {
            (0..tasks).for_each(f);
            return;
        }
    };
    // SAFETY (lifetime erasure): this function does not return while a helper can reach `f`.
    let f: *const (dyn Fn(usize) + Sync + '_) = f;
    let f: *const (dyn Fn(usize) + Sync) = unsafe { std::mem::transmute(f) };
    let job = Job { f, tasks, next: AtomicUsize::new(0), done: AtomicUsize::new(0) };
    pool.job.store(&job as *const Job as *mut Job, SeqCst);
    pool.generation.fetch_add(1, SeqCst);
    if pool.parked.load(SeqCst) > 0 {
        let _lock = pool.sleep.lock().unwrap_or_else(|e| e.into_inner());
        pool.wake.notify_all();
    }
    run_tasks(&job);
    while job.done.load(SeqCst) < tasks {
        std::hint::spin_loop();
    }
    pool.job.store(std::ptr::null_mut(), SeqCst);
    while pool.active.load(SeqCst) > 0 {
        std::hint::spin_loop();
    }
    drop(guard);
}

/// [`par_for`] over the chunks of `out` of `chunk` elements: `f(index, chunk)`.
pub fn par_chunks_mut<T: Send>(out: &mut [T], chunk: usize, f: &(dyn Fn(usize, &mut [T]) + Sync)) {
    let chunk = chunk.max(1);
    let n = out.len();
    let tasks = n.div_ceil(chunk);
    let base = SendPtr(out.as_mut_ptr());
    par_for(tasks, &|t| {
        let start = t * chunk;
        let len = chunk.min(n - start);
        // SAFETY: tasks cover disjoint ranges of `out`, which outlives the call.
        let part = unsafe { std::slice::from_raw_parts_mut(base.get().add(start), len) };
        f(t, part)
    });
}

struct SendPtr<T>(*mut T);
// SAFETY: used only to hand disjoint sub-slices to the tasks of one `par_for`.
unsafe impl<T: Send> Sync for SendPtr<T> {}
unsafe impl<T: Send> Send for SendPtr<T> {}
impl<T> SendPtr<T> {
    fn get(&self) -> *mut T {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_runs_once_even_from_many_threads() {
        std::thread::scope(|s| {
            for t in 0..4 {
                s.spawn(move || {
                    for round in 0..200 {
                        let n = 1 + (round * 7 + t) % 37;
                        let mut out = vec![0usize; n * 3];
                        par_chunks_mut(&mut out, 3, &|i, c| c.iter_mut().for_each(|v| *v += i + 1));
                        let want: Vec<usize> = (0..n * 3).map(|k| k / 3 + 1).collect();
                        assert_eq!(out, want);
                    }
                });
            }
        });
        // After the helpers went to sleep, a call still completes.
        std::thread::sleep(PARK_AFTER * 3);
        let mut out = vec![0u8; 64];
        par_chunks_mut(&mut out, 8, &|_, c| c.fill(1));
        assert!(out.iter().all(|&v| v == 1));
    }
}

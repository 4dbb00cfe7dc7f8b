//! CPU time over a run: the whole process's (`getrusage`), and the engine's flusher and
//! syncer threads' (`/proc/self/task/*/schedstat`, nanoseconds). On two cores the engine's
//! threads and the writers share the CPUs, so how busy each is explains a throughput figure
//! as much as the disk does (Linux only: elsewhere the report says nothing).

use std::ops::AddAssign;
use std::time::{Duration, Instant};

/// CPU used between two samples.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CpuUse {
    /// Wall time between the samples.
    pub wall: Duration,
    /// The whole process (every thread, including ones that exited meanwhile).
    pub process: Duration,
    /// The engine's threads (engine systems only).
    pub flusher: Option<Duration>,
    pub syncer: Option<Duration>,
}

impl CpuUse {
    /// Cores busy on average: CPU time over wall time.
    pub fn cores(&self, cpu: Duration) -> f64 {
        cpu.as_secs_f64() / self.wall.as_secs_f64().max(1e-9)
    }
}

impl AddAssign for CpuUse {
    /// Sums two runs (the rounds of one system).
    fn add_assign(&mut self, other: CpuUse) {
        let add = |a: Option<Duration>, b: Option<Duration>| match (a, b) {
            (Some(a), Some(b)) => Some(a + b),
            (a, b) => a.or(b),
        };
        self.wall += other.wall;
        self.process += other.process;
        self.flusher = add(self.flusher, other.flusher);
        self.syncer = add(self.syncer, other.syncer);
    }
}

/// One reading of the clocks.
pub struct CpuSample {
    at: Instant,
    process: Duration,
    flusher: Option<Duration>,
    syncer: Option<Duration>,
}

impl CpuSample {
    /// Reads the clocks now; `None` where they cannot be read.
    pub fn now() -> Option<CpuSample> {
        let process = process_cpu()?;
        let (flusher, syncer) = engine_threads();
        Some(CpuSample {
            at: Instant::now(),
            process,
            flusher,
            syncer,
        })
    }

    /// What was used from `self` to `end`. Take `end` before the engine closes: its threads'
    /// clocks go with them. A thread missing from the first sample had only just started
    /// (a new thread takes its name a moment after the engine opens): it counts from zero.
    pub fn until(&self, end: &CpuSample) -> CpuUse {
        let diff = |a: Option<Duration>, b: Option<Duration>| {
            Some(b?.saturating_sub(a.unwrap_or_default()))
        };
        CpuUse {
            wall: end.at - self.at,
            process: end.process.saturating_sub(self.process),
            flusher: diff(self.flusher, end.flusher),
            syncer: diff(self.syncer, end.syncer),
        }
    }
}

/// What was used from `start` (set as a run passes its start line, see
/// `StartLine::measuring_cpu`) to now; `None` if it was never set (the run did not start) or
/// the clocks cannot be read.
pub fn since(start: &std::sync::OnceLock<CpuSample>) -> Option<CpuUse> {
    Some(start.get()?.until(&CpuSample::now()?))
}

/// User + system time of the whole process.
fn process_cpu() -> Option<Duration> {
    // SAFETY: `rusage` is plain data, for which all zeroes is a valid value; `getrusage`
    // only writes into the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; RUSAGE_SELF is a valid `who`.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return None;
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    Some(tv(ru.ru_utime) + tv(ru.ru_stime))
}

/// The run time of this process's flusher and syncer threads (by their names, which the
/// kernel keeps to 15 bytes), summed over every engine open in the process.
fn engine_threads() -> (Option<Duration>, Option<Duration>) {
    let (mut flusher, mut syncer) = (None, None);
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return (None, None);
    };
    for task in tasks.flatten() {
        let dir = task.path();
        let Ok(comm) = std::fs::read_to_string(dir.join("comm")) else {
            continue;
        };
        let slot = match comm.trim_end() {
            "mergelog-flushe" => &mut flusher,
            "mergelog-syncer" => &mut syncer,
            _ => continue,
        };
        let ns = std::fs::read_to_string(dir.join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok());
        if let Some(ns) = ns {
            *slot = Some(slot.unwrap_or_default() + Duration::from_nanos(ns));
        }
    }
    (flusher, syncer)
}

/// The calling thread's CPU time (for tests).
#[cfg(test)]
pub(crate) fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec, which `ts` is, and reads nothing.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0);
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_time_counts_a_busy_thread_and_rounds_add_up() {
        let start = CpuSample::now().expect("getrusage works");
        let t0 = Instant::now();
        let cpu0 = thread_cpu();
        let mut x = 0u64;
        // Spin until this thread has run for 30 ms on a CPU (however loaded the machine is:
        // by wall time alone a busy machine left it 10 ms of 60), and 60 ms have passed.
        while thread_cpu() - cpu0 < Duration::from_millis(30)
            || t0.elapsed() < Duration::from_millis(60)
        {
            for _ in 0..1000 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            }
        }
        let used = start.until(&CpuSample::now().unwrap());
        // The process's CPU includes this thread's 30 ms; the wall time at least 60 ms.
        assert!(used.process >= Duration::from_millis(30), "{used:?}");
        assert!(used.wall >= Duration::from_millis(60), "{used:?}");
        // No engine runs in this test binary: no such threads.
        assert_eq!((used.flusher, used.syncer), (None, None));
        let mut sum = used;
        sum += CpuUse {
            wall: Duration::from_secs(1),
            process: Duration::from_millis(500),
            flusher: Some(Duration::from_millis(100)),
            syncer: None,
        };
        assert_eq!(sum.wall, used.wall + Duration::from_secs(1));
        assert_eq!(sum.flusher, Some(Duration::from_millis(100)));
        assert!(
            (sum.cores(sum.process) - sum.process.as_secs_f64() / sum.wall.as_secs_f64()).abs()
                < 1e-12
        );
    }
}

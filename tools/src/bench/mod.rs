//! `mergelog bench`: one workload, run against each system in turn, in its own directory.
//!
//! - `mergelog`: the engine with `Config::default()` plus the flags; each writer keeps
//!   `--depth` requests in flight (closed loop) and records submit -> completion latency.
//! - `no-coalesce`: the same with `Config::coalesce = false` (plain group commit).
//! - `naive`: one mutex around a file; every write is lock, pwrite, fdatasync, unlock.
//!
//! Every system draws the same seeded operation streams (see `workload`), and the report
//! puts their numbers side by side, with each system's throughput relative to `naive` and
//! `no-coalesce`.

mod engine;
mod naive;
mod report;

use crate::error::{CliError, Context};
use crate::workload::{Dist, Generator, Spec, KEY_SIZE_MIN};
use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use mergelog::{Config, Durability, StageHistograms, WindowPolicy, WritePath};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Writer threads.
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = positive::<usize>)]
    writers: usize,
    /// Requests each writer keeps outstanding (closed loop). The naive baseline always has
    /// one per writer.
    #[arg(long, value_name = "N", default_value_t = 256, value_parser = positive::<usize>)]
    depth: usize,
    /// Distinct keys.
    #[arg(long, value_name = "N", default_value_t = 100_000, value_parser = positive::<u64>)]
    keys: u64,
    /// Key popularity: `uniform` or `zipf:THETA`.
    #[arg(long, value_name = "DIST", default_value = "zipf:0.99")]
    dist: Dist,
    /// Key length in bytes (at least 8: keys differ in their first 8 bytes).
    #[arg(long, value_name = "N", default_value_t = 16, value_parser = key_size)]
    key_size: usize,
    /// Value length in bytes.
    #[arg(long, value_name = "N", default_value_t = 100, value_parser = value_size)]
    value_size: usize,
    /// Fraction of operations that are windowed gets (0.0 to 1.0).
    #[arg(long, value_name = "F", default_value_t = 0.0, value_parser = fraction)]
    read_ratio: f64,
    /// Seconds to run each system.
    #[arg(long, value_name = "SECS", default_value_t = 3.0, value_parser = seconds)]
    duration: f64,
    /// When writes are acknowledged: after fdatasync/msync, or once in the page cache.
    #[arg(long, value_enum, default_value_t = DurabilityArg::Sync)]
    durability: DurabilityArg,
    /// Parent directory for the runs (one subdirectory per system, kept afterwards; each
    /// must not exist yet or be empty). Default: a temporary directory, removed afterwards.
    #[arg(long, value_name = "PATH")]
    dir: Option<PathBuf>,
    /// Also write the results as JSON to PATH.
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,
    /// Systems to run, in order, comma-separated.
    #[arg(
        long,
        value_enum,
        value_name = "LIST",
        value_delimiter = ',',
        default_value = "mergelog,no-coalesce,naive"
    )]
    systems: Vec<System>,
    /// How the engine writes batches (default: the engine's default). The naive baseline
    /// always uses pwrite + fdatasync.
    #[arg(long, value_enum)]
    write_path: Option<WritePathArg>,
    /// When the engine cuts a window: `adaptive`, `immediate` or `linger:US` (a linger over
    /// the 1 ms default window age cap raises the cap to match).
    #[arg(long, value_name = "POLICY", default_value = "adaptive")]
    window: Window,
    /// Seed of the operation streams (every system gets the same streams).
    #[arg(long, value_name = "N", default_value_t = 1)]
    seed: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum System {
    /// The engine with the given flags.
    Mergelog,
    /// The engine with coalescing off: plain group commit.
    NoCoalesce,
    /// Lock + pwrite + fdatasync per write, gets from a HashMap under the same lock.
    Naive,
}

impl System {
    pub fn name(self) -> &'static str {
        match self {
            System::Mergelog => "mergelog",
            System::NoCoalesce => "no-coalesce",
            System::Naive => "naive",
        }
    }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum DurabilityArg {
    Sync,
    Nosync,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum WritePathArg {
    Pwrite,
    Mmap,
}

/// `--window`, parsed.
#[derive(Clone, Copy, Debug)]
struct Window(WindowPolicy);

impl FromStr for Window {
    type Err = String;
    fn from_str(s: &str) -> Result<Window, String> {
        let policy = match s {
            "adaptive" => WindowPolicy::default(),
            "immediate" => WindowPolicy::Immediate,
            _ => {
                let Some(us) = s.strip_prefix("linger:") else {
                    return Err("expected 'adaptive', 'immediate' or 'linger:US'".into());
                };
                let us: u64 = us
                    .parse()
                    .map_err(|_| format!("linger '{us}' is not a whole number of microseconds"))?;
                if us > 10_000_000 {
                    return Err(format!("linger {us} µs exceeds the 10 s window age limit"));
                }
                WindowPolicy::Linger(Duration::from_micros(us))
            }
        };
        Ok(Window(policy))
    }
}

fn window_name(policy: WindowPolicy) -> String {
    match policy {
        WindowPolicy::Adaptive { quiet } => format!("adaptive (quiet {} µs)", quiet.as_micros()),
        WindowPolicy::Immediate => "immediate".into(),
        WindowPolicy::Linger(d) => format!("linger:{}", d.as_micros()),
    }
}

fn write_path_name(p: WritePath) -> &'static str {
    match p {
        WritePath::Pwrite => "pwrite",
        WritePath::Mmap => "mmap",
    }
}

fn positive<T: FromStr + PartialOrd + From<u8>>(s: &str) -> Result<T, String> {
    let n: T = s
        .parse()
        .map_err(|_| format!("'{s}' is not a whole number"))?;
    if n < T::from(1) {
        return Err("must be at least 1".into());
    }
    Ok(n)
}

fn key_size(s: &str) -> Result<usize, String> {
    let n: usize = s.parse().map_err(|_| format!("'{s}' is not a whole number"))?;
    let max = Config::default().key_len_max;
    if !(KEY_SIZE_MIN..=max).contains(&n) {
        return Err(format!(
            "must be between {KEY_SIZE_MIN} and {max} (the engine's key_len_max)"
        ));
    }
    Ok(n)
}

fn value_size(s: &str) -> Result<usize, String> {
    let n: usize = s.parse().map_err(|_| format!("'{s}' is not a whole number"))?;
    let max = Config::default().value_len_max;
    if n > max {
        return Err(format!("must be at most {max} (the engine's value_len_max)"));
    }
    Ok(n)
}

fn fraction(s: &str) -> Result<f64, String> {
    let f: f64 = s.parse().map_err(|_| format!("'{s}' is not a number"))?;
    if !(0.0..=1.0).contains(&f) {
        return Err("must be between 0.0 and 1.0".into());
    }
    Ok(f)
}

fn seconds(s: &str) -> Result<f64, String> {
    let f: f64 = s.parse().map_err(|_| format!("'{s}' is not a number"))?;
    if !(f > 0.0 && f <= 86_400.0) {
        return Err("must be more than 0 and at most 86400 seconds".into());
    }
    Ok(f)
}

/// Everything a system run needs, resolved from the flags.
pub struct Plan {
    pub spec: Spec,
    pub writers: usize,
    pub depth: usize,
    pub duration: Duration,
    pub durability: Durability,
    pub engine: Config,
}

impl Plan {
    fn engine_config(&self, system: System) -> Config {
        Config {
            coalesce: system == System::Mergelog,
            ..self.engine.clone()
        }
    }
}

/// What one system run measured. Counters are the engine's (after close) or, for
/// `naive`, its own.
pub struct RunResult {
    pub system: System,
    /// Operations completed, including those drained after the deadline.
    pub ops: u64,
    /// First writer start to last writer done (drain included).
    pub elapsed: Duration,
    /// Per-operation latency in nanoseconds, submit to completion, all writers.
    pub latency: Histogram<u64>,
    pub batches: u64,
    pub syncs: u64,
    pub coalesced_writes: u64,
    pub collapsed_reads: u64,
    pub bytes_written: u64,
    /// The engine's per-stage histograms (engine systems only).
    pub stages: Option<StageHistograms>,
}

/// Nanosecond latency histogram, 1 ns to 1 minute, 3 significant figures.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("static histogram bounds are valid")
}

/// Records `d` into `h`, saturating at the histogram's bounds.
pub fn record(h: &mut Histogram<u64>, d: Duration) {
    let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    h.saturating_record(ns.clamp(1, h.high()));
}

/// Where the runs live: a temporary directory, or the user's `--dir`.
enum Root {
    Temp(tempfile::TempDir),
    User(PathBuf),
}

impl Root {
    fn path(&self) -> &Path {
        match self {
            Root::Temp(t) => t.path(),
            Root::User(p) => p,
        }
    }

    fn prepare(dir: Option<&Path>) -> Result<Root, CliError> {
        match dir {
            None => tempfile::Builder::new()
                .prefix("mergelog-bench-")
                .tempdir()
                .map(Root::Temp)
                .context(|| "cannot create a temporary directory (pass --dir)".into()),
            Some(p) => {
                std::fs::create_dir_all(p)
                    .context(|| format!("cannot use --dir {}", p.display()))?;
                Ok(Root::User(p.to_owned()))
            }
        }
    }

    /// Creates the (empty) directory of one system's run.
    fn subdir(&self, system: System) -> Result<PathBuf, CliError> {
        let path = self.path().join(system.name());
        let what = || format!("cannot use {} as a run directory", path.display());
        match std::fs::read_dir(&path) {
            Ok(mut entries) => {
                if entries.next().is_some() {
                    return Err(CliError(format!(
                        "{} already holds files (an earlier run?); pass an empty or new --dir",
                        path.display()
                    )));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir(&path).context(what)?;
            }
            Err(e) => return Err(e).context(what),
        }
        Ok(path)
    }
}

/// The file system type of the mount holding `path`, from /proc/self/mounts.
fn fs_type(path: &Path) -> Option<String> {
    let path = path.canonicalize().ok()?;
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts
        .lines()
        .filter_map(|line| {
            let mut f = line.split(' ');
            let (_dev, mount, fs) = (f.next()?, f.next()?, f.next()?);
            let mount = mount.replace("\\040", " ");
            path.starts_with(&mount).then(|| (mount.len(), fs.to_owned()))
        })
        // The longest matching mount point wins; among equals, the last mounted.
        .max_by_key(|(len, _)| *len)
        .map(|(_, fs)| fs)
}

/// The machine a run was made on.
pub struct Machine {
    pub cpus: usize,
    pub os: String,
}

fn machine() -> Machine {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    Machine {
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        os: format!("{} {}", std::env::consts::OS, release.trim())
            .trim()
            .to_owned(),
    }
}

/// Fails early if `--json PATH` could not be written at the end.
fn check_json_path(path: &Path) -> Result<(), CliError> {
    if path.is_dir() {
        return Err(CliError(format!(
            "--json {} is a directory; name a file",
            path.display()
        )));
    }
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !parent.is_dir() {
        return Err(CliError(format!(
            "--json {}: directory {} does not exist",
            path.display(),
            parent.display()
        )));
    }
    Ok(())
}

pub fn run(args: BenchArgs) -> Result<(), CliError> {
    let mut seen = Vec::new();
    for s in &args.systems {
        if seen.contains(s) {
            return Err(CliError(format!(
                "--systems lists {} twice; name each system once",
                s.name()
            )));
        }
        seen.push(*s);
    }
    if let Some(json) = &args.json {
        check_json_path(json)?;
    }

    let mut engine = Config {
        durability: match args.durability {
            DurabilityArg::Sync => Durability::Sync,
            DurabilityArg::Nosync => Durability::NoSync,
        },
        window: args.window.0,
        ..Config::default()
    };
    if let Some(p) = args.write_path {
        engine.write_path = match p {
            WritePathArg::Pwrite => WritePath::Pwrite,
            WritePathArg::Mmap => WritePath::Mmap,
        };
    }
    if let WindowPolicy::Linger(d) = engine.window {
        engine.window_age_max = engine.window_age_max.max(d);
    }
    engine
        .validate()
        .context(|| "engine configuration from the flags".into())?;

    let plan = Plan {
        spec: Spec {
            keys: args.keys,
            dist: args.dist,
            key_size: args.key_size,
            value_size: args.value_size,
            read_ratio: args.read_ratio,
            seed: args.seed,
        },
        writers: args.writers,
        depth: args.depth,
        duration: Duration::from_secs_f64(args.duration),
        durability: engine.durability,
        engine,
    };
    // Surfaces a bad distribution now rather than inside every writer thread.
    Generator::new(&plan.spec, 0).map_err(CliError)?;

    let root = Root::prepare(args.dir.as_deref())?;
    let dirs = args
        .systems
        .iter()
        .map(|&s| Ok((s, root.subdir(s)?)))
        .collect::<Result<Vec<_>, CliError>>()?;
    let fs = fs_type(root.path());
    if fs.as_deref() == Some("tmpfs") && plan.durability == Durability::Sync {
        eprintln!(
            "mergelog bench: warning: {} is on tmpfs, where a sync costs nothing; pass --dir on a disk",
            root.path().display()
        );
    }

    let mut results = Vec::new();
    for (i, (system, dir)) in dirs.iter().enumerate() {
        eprintln!(
            "mergelog bench: [{}/{}] {} for {:.1} s in {}",
            i + 1,
            dirs.len(),
            system.name(),
            args.duration,
            dir.display()
        );
        let result = match system {
            System::Naive => naive::run(dir, &plan),
            _ => engine::run(dir, plan.engine_config(*system), &plan),
        }
        .map_err(|e| CliError(format!("{}: {e}", system.name())))?;
        eprintln!(
            "mergelog bench: {}: {:.0} ops/s",
            system.name(),
            result.ops as f64 / result.elapsed.as_secs_f64()
        );
        results.push(result);
    }

    let workload = report::Workload {
        writers: plan.writers,
        depth: plan.depth,
        keys: plan.spec.keys,
        dist: plan.spec.dist.to_string(),
        key_size: plan.spec.key_size,
        value_size: plan.spec.value_size,
        read_ratio: plan.spec.read_ratio,
        duration_s: args.duration,
        durability: match plan.durability {
            Durability::Sync => "sync",
            Durability::NoSync => "nosync",
        },
        write_path: write_path_name(plan.engine.write_path),
        window: window_name(plan.engine.window),
        systems: args.systems.iter().map(|s| s.name()).collect(),
        seed: plan.spec.seed,
        dir: args.dir.as_ref().map(|d| d.display().to_string()),
        fs,
    };
    let report = report::Report::new(workload, machine(), &results);
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(report.text(&results).as_bytes())
        .and_then(|()| stdout.flush())
        .context(|| "write the report to stdout".into())?;
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&report).context(|| "encode JSON".into())?;
        std::fs::write(path, json + "\n").context(|| format!("write {}", path.display()))?;
    }
    drop(root);
    Ok(())
}

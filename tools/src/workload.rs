//! What a benchmark writer submits: which key (a distribution over key ids), how a key id
//! becomes key bytes, how long keys and values are, and whether the op is a put, a delete or
//! a get. Every system draws from the same seeded generators, so they all see the same
//! sequence of operations.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};
use std::fmt;
use std::str::FromStr;

/// Shortest key the encoding supports: the 8-byte prefix must be unique per key id.
pub const KEY_SIZE_MIN: usize = 8;

/// How key ids are drawn from `0..keys`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Dist {
    /// Every id equally likely.
    Uniform,
    /// Zipf with exponent theta: id 0 is the most popular, id 1 the next, and so on.
    Zipf(f64),
    /// Ids in order, wrapping at `keys`; writers interleave (writer w takes w, w + W, ...),
    /// and keys ascend with their ids (the prefix is the id itself, not a hash of it).
    Sequential,
    /// `hot_pct` % of the keys (at least one) receive `traffic_pct` % of the operations,
    /// uniformly within the hot and within the cold set.
    HotSet { hot_pct: f64, traffic_pct: f64 },
}

const DIST_HELP: &str =
    "expected 'uniform', 'zipf:THETA', 'sequential' or 'hotset:X:Y' (X % of keys get Y % of ops)";

fn percent(s: &str, what: &str) -> Result<f64, String> {
    let p: f64 = s
        .parse()
        .map_err(|_| format!("hotset {what} '{s}' is not a number"))?;
    if !(0.0..=100.0).contains(&p) {
        return Err(format!("hotset {what} {p} must be between 0 and 100"));
    }
    Ok(p)
}

impl FromStr for Dist {
    type Err = String;
    fn from_str(s: &str) -> Result<Dist, String> {
        match s {
            "uniform" => return Ok(Dist::Uniform),
            "sequential" => return Ok(Dist::Sequential),
            _ => {}
        }
        if let Some(rest) = s.strip_prefix("hotset:") {
            let Some((x, y)) = rest.split_once(':') else {
                return Err(format!("hotset '{rest}': {DIST_HELP}"));
            };
            let hot_pct = percent(x, "key share")?;
            if hot_pct == 0.0 {
                return Err("hotset key share must be more than 0".into());
            }
            return Ok(Dist::HotSet {
                hot_pct,
                traffic_pct: percent(y, "traffic share")?,
            });
        }
        let Some(theta) = s.strip_prefix("zipf:") else {
            return Err(DIST_HELP.into());
        };
        let theta: f64 = theta
            .parse()
            .map_err(|_| format!("zipf theta '{theta}' is not a number"))?;
        // rand_distr accepts any s >= 0; above ~10 every sample is id 0, which is the
        // caller's business.
        if !theta.is_finite() || theta < 0.0 {
            return Err(format!("zipf theta {theta} must be a finite number >= 0"));
        }
        Ok(Dist::Zipf(theta))
    }
}

impl fmt::Display for Dist {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dist::Uniform => write!(f, "uniform"),
            Dist::Zipf(theta) => write!(f, "zipf:{theta}"),
            Dist::Sequential => write!(f, "sequential"),
            Dist::HotSet {
                hot_pct,
                traffic_pct,
            } => write!(f, "hotset:{hot_pct}:{traffic_pct}"),
        }
    }
}

/// A length in bytes: fixed (`16`) or drawn uniformly from an inclusive range (`16..64`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Size {
    pub min: usize,
    pub max: usize,
}

impl Size {
    pub fn fixed(n: usize) -> Size {
        Size { min: n, max: n }
    }
}

/// `100`, `4K`, `1M`, `1G` (binary multiples; a trailing `B` or `iB` is allowed), as every
/// byte flag (`--ring-bytes`, `--value-size` and the others) takes them; `None` if it is not
/// one.
pub fn byte_count(t: &str) -> Option<usize> {
    let t = t.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (digits, shift) = match t.char_indices().last() {
        Some((i, 'K' | 'k')) => (&t[..i], 10),
        Some((i, 'M' | 'm')) => (&t[..i], 20),
        Some((i, 'G' | 'g')) => (&t[..i], 30),
        _ => (t, 0),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse::<usize>().ok()?.checked_mul(1 << shift)
}

impl FromStr for Size {
    type Err = String;
    fn from_str(s: &str) -> Result<Size, String> {
        let num = |t: &str| {
            byte_count(t)
                .ok_or_else(|| format!("'{t}' is not a whole number of bytes (e.g. 100, 4K, 1M)"))
        };
        let size = match s.split_once("..") {
            None => Size::fixed(num(s)?),
            Some((a, b)) => {
                // Both ends are included; `..=` reads the same.
                let b = b.strip_prefix('=').unwrap_or(b);
                Size {
                    min: num(a)?,
                    max: num(b)?,
                }
            }
        };
        if size.min > size.max {
            return Err(format!(
                "range {s} is empty (min {} > max {})",
                size.min, size.max
            ));
        }
        Ok(size)
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.min == self.max {
            write!(f, "{}", self.min)
        } else {
            write!(f, "{}..{}", self.min, self.max)
        }
    }
}

/// The parameters every writer of every system shares.
#[derive(Clone, Debug)]
pub struct Spec {
    pub keys: u64,
    pub dist: Dist,
    pub key_size: Size,
    pub value_size: Size,
    /// Fraction of operations that are gets.
    pub read_ratio: f64,
    /// Fraction of operations that are deletes; the rest are puts.
    pub delete_ratio: f64,
    /// Number of writers (the sequential distribution interleaves them).
    pub writers: usize,
    pub seed: u64,
    /// `--op merge`: the writes are merges (increments of a counter) instead of puts.
    pub merge: bool,
}

/// One operation to submit. `key` and `value` borrow the generator's buffers.
pub enum Op<'a> {
    Put {
        key: &'a [u8],
        value: &'a [u8],
    },
    Delete {
        key: &'a [u8],
    },
    Get {
        key: &'a [u8],
    },
    /// Add `operand` (a little-endian i64) to the counter under `key`.
    Merge {
        key: &'a [u8],
        operand: &'a [u8],
    },
}

/// The kind of an [`Op`], for counting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Put,
    Delete,
    Get,
    Merge,
}

/// The operand of every `--op merge` increment: 1, as a little-endian i64.
pub const INCREMENT: [u8; 8] = 1i64.to_le_bytes();

impl Op<'_> {
    pub fn kind(&self) -> Kind {
        match self {
            Op::Put { .. } => Kind::Put,
            Op::Delete { .. } => Kind::Delete,
            Op::Get { .. } => Kind::Get,
            Op::Merge { .. } => Kind::Merge,
        }
    }
}

enum Sampler {
    Uniform,
    /// Zipf ids drawn ahead (see [`ZIPF_POOL`]), then taken in order, wrapping.
    Zipf {
        ids: Vec<u64>,
        at: usize,
    },
    Sequential {
        next: u64,
        step: u64,
    },
    HotSet {
        hot: u64,
        traffic: f64,
    },
}

/// Zipf ids drawn before a run, shared out among the writers (each draws
/// `ZIPF_POOL / writers`, at least [`ZIPF_POOL_MIN`]) and then taken in order, wrapping. A
/// draw (rejection-inversion, `rand_distr::Zipf`) costs two `powf`, about as much as
/// submitting the request, and the writers share the machine's cores with the engine they
/// measure; drawing ahead keeps that cost out of the run. A writer repeats its sequence only
/// after 2^22 / writers requests, far beyond any window, so coalescing sees a zipf stream.
pub const ZIPF_POOL: usize = 1 << 22;
/// The smallest per-writer pool of drawn zipf ids.
pub const ZIPF_POOL_MIN: usize = 1 << 16;
/// The most zipf ids drawn over all writers: above 256 writers (`--clients` runs thousands)
/// the per-writer minimum gives way, or 4,096 clients would draw 2^28 ids (2 GiB, tens of
/// seconds before every run).
pub const ZIPF_POOL_TOTAL_MAX: usize = 1 << 24;

/// The zipf distribution `spec` draws its keys from, if it is one; an error if its
/// parameters are not a distribution.
fn zipf(spec: &Spec) -> Result<Option<Zipf<f64>>, String> {
    match spec.dist {
        Dist::Zipf(theta) => Zipf::new(spec.keys as f64, theta)
            .map(Some)
            .map_err(|e| format!("zipf over {} keys, theta {theta}: {e}", spec.keys)),
        _ => Ok(None),
    }
}

/// Whether generators can be made for `spec` (what [`Generator::new`] would refuse), without
/// drawing a writer's zipf pool.
pub fn check(spec: &Spec) -> Result<(), String> {
    zipf(spec).map(|_| ())
}

/// One writer's stream of operations; owns its key and value buffers, so generating an op
/// does not allocate.
pub struct Generator {
    rng: SmallRng,
    sampler: Sampler,
    keys: u64,
    scramble: bool,
    key_size: Size,
    value_size: Size,
    read_ratio: f64,
    delete_ratio: f64,
    merge: bool,
    key: Vec<u8>,
    value: Vec<u8>,
    seq: u64,
}

impl Generator {
    /// The stream of writer `writer`; the same (spec, writer) gives the same stream.
    pub fn new(spec: &Spec, writer: usize) -> Result<Generator, String> {
        debug_assert!(spec.key_size.min >= KEY_SIZE_MIN && spec.keys >= 1);
        let sampler = match spec.dist {
            Dist::Uniform => Sampler::Uniform,
            Dist::Zipf(_) => Sampler::Zipf {
                ids: Vec::new(), // drawn below, with the writer's generator
                at: 0,
            },
            Dist::Sequential => Sampler::Sequential {
                next: writer as u64 % spec.keys,
                step: spec.writers.max(1) as u64,
            },
            Dist::HotSet {
                hot_pct,
                traffic_pct,
            } => Sampler::HotSet {
                hot: ((spec.keys as f64 * hot_pct / 100.0).round() as u64).clamp(1, spec.keys),
                traffic: traffic_pct / 100.0,
            },
        };
        let mut rng = SmallRng::seed_from_u64(mix64(spec.seed ^ mix64(writer as u64 + 1)));
        let mut sampler = sampler;
        if let (Sampler::Zipf { ids, .. }, Some(zipf)) = (&mut sampler, zipf(spec)?) {
            let w = spec.writers.max(1);
            let len = (ZIPF_POOL / w).max(ZIPF_POOL_MIN.min(ZIPF_POOL_TOTAL_MAX / w));
            // Samples are ranks 1..=n as floats; rank 1 is the most popular.
            ids.extend((0..len).map(|_| (zipf.sample(&mut rng) as u64).clamp(1, spec.keys) - 1));
        }
        let mut value = vec![0u8; spec.value_size.max];
        rng.fill(&mut value[..]);
        Ok(Generator {
            rng,
            sampler,
            keys: spec.keys,
            scramble: spec.dist != Dist::Sequential,
            key_size: spec.key_size,
            value_size: spec.value_size,
            read_ratio: spec.read_ratio,
            delete_ratio: spec.delete_ratio,
            merge: spec.merge,
            key: vec![0u8; spec.key_size.max],
            value,
            seq: 0,
        })
    }

    /// The next key id in `0..keys`.
    pub fn next_id(&mut self) -> u64 {
        match &mut self.sampler {
            Sampler::Uniform => self.rng.random_range(0..self.keys),
            Sampler::Zipf { ids, at } => {
                let id = ids[*at];
                *at = if *at + 1 == ids.len() { 0 } else { *at + 1 };
                id
            }
            Sampler::Sequential { next, step } => {
                let id = *next;
                *next = (*next + *step) % self.keys;
                id
            }
            Sampler::HotSet { hot, traffic } => {
                let (hot, cold) = (*hot, self.keys - *hot);
                if cold == 0 || self.rng.random_bool(*traffic) {
                    self.rng.random_range(0..hot)
                } else {
                    hot + self.rng.random_range(0..cold)
                }
            }
        }
    }

    /// The next operation.
    pub fn next_op(&mut self) -> Op<'_> {
        let id = self.next_id();
        let key_len = key_len(id, self.key_size);
        encode_key(id, self.scramble, &mut self.key[..key_len]);
        let key = &self.key[..key_len];
        let x: f64 = if self.read_ratio + self.delete_ratio > 0.0 {
            self.rng.random()
        } else {
            1.0
        };
        if x < self.read_ratio {
            return Op::Get { key };
        }
        if x < self.read_ratio + self.delete_ratio {
            return Op::Delete { key };
        }
        if self.merge {
            return Op::Merge {
                key,
                operand: &INCREMENT,
            };
        }
        let len = if self.value_size.min == self.value_size.max {
            self.value_size.min
        } else {
            self.rng
                .random_range(self.value_size.min..=self.value_size.max)
        };
        // Stamp a sequence number so successive values of a key differ.
        self.seq += 1;
        let n = len.min(8);
        self.value[..n].copy_from_slice(&self.seq.to_le_bytes()[..n]);
        Op::Put {
            key,
            value: &self.value[..len],
        }
    }
}

/// The length of key `id`: fixed by the id, so a key id always names the same bytes.
pub fn key_len(id: u64, size: Size) -> usize {
    let span = (size.max - size.min) as u64 + 1;
    size.min + (mix64(id ^ 0x6b65_795f_6c65_6e00) % span) as usize
}

/// The splitmix64 finaliser: a bijection on u64, so distinct ids give distinct prefixes.
pub fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Writes key `id` into `out` (at least 8 bytes). The first 8 bytes, big-endian, are
/// `mix64(id)` when `scramble` (keys differ in the 8-byte prefix the coalescer sorts on, and
/// popular ids are spread over the key space) or `id` itself (keys ascend with ids); the
/// rest repeats the id's bytes.
pub fn encode_key(id: u64, scramble: bool, out: &mut [u8]) {
    debug_assert!(out.len() >= KEY_SIZE_MIN);
    let prefix = if scramble { mix64(id) } else { id };
    out[..8].copy_from_slice(&prefix.to_be_bytes());
    let id_bytes = id.to_be_bytes();
    for (i, b) in out[8..].iter_mut().enumerate() {
        *b = id_bytes[i % 8];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{HashMap, HashSet};

    /// Sizes take the byte suffixes the byte flags take.
    #[test]
    fn sizes_take_byte_suffixes() {
        let size = |s: &str| s.parse::<Size>().map(|z| (z.min, z.max));
        assert_eq!(size("100"), Ok((100, 100)));
        assert_eq!(size("4K"), Ok((4096, 4096)));
        assert_eq!(size("1KiB..2k"), Ok((1024, 2048)));
        assert_eq!(size("1M"), Ok((1 << 20, 1 << 20)));
        assert_eq!(size("0..1G"), Ok((0, 1 << 30)));
        for bad in ["", "K", "-1", "1.5K", "4Q", "+4"] {
            assert!(size(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn dist_parses_and_rejects() {
        assert_eq!("uniform".parse::<Dist>(), Ok(Dist::Uniform));
        assert_eq!("sequential".parse::<Dist>(), Ok(Dist::Sequential));
        assert_eq!("zipf:0.99".parse::<Dist>(), Ok(Dist::Zipf(0.99)));
        assert_eq!(
            "hotset:10:90".parse::<Dist>(),
            Ok(Dist::HotSet {
                hot_pct: 10.0,
                traffic_pct: 90.0
            })
        );
        for bad in [
            "zipf:abc",
            "zipf:",
            "zipf:-1",
            "zipf:nan",
            "zipf:inf",
            "normal",
            "",
            "hotset:10",
            "hotset:0:50",
            "hotset:10:101",
            "hotset:x:50",
        ] {
            assert!(bad.parse::<Dist>().is_err(), "{bad} parsed");
        }
        assert_eq!(Dist::Zipf(0.99).to_string(), "zipf:0.99");
        assert_eq!(
            "hotset:1.5:99".parse::<Dist>().unwrap().to_string(),
            "hotset:1.5:99"
        );
    }

    #[test]
    fn sizes_parse_fixed_and_ranges() {
        assert_eq!("16".parse::<Size>(), Ok(Size::fixed(16)));
        assert_eq!("16..64".parse::<Size>(), Ok(Size { min: 16, max: 64 }));
        assert_eq!("16..=64".parse::<Size>(), Ok(Size { min: 16, max: 64 }));
        for bad in ["", "x", "64..16", "1..", "-1", "..4"] {
            assert!(bad.parse::<Size>().is_err(), "{bad} parsed");
        }
        assert_eq!(Size { min: 16, max: 64 }.to_string(), "16..64");
    }

    #[test]
    fn key_prefixes_are_distinct() {
        let mut prefixes = HashSet::new();
        let mut key = [0u8; 16];
        for id in 0..100_000u64 {
            encode_key(id, true, &mut key);
            assert!(prefixes.insert(u64::from_be_bytes(key[..8].try_into().unwrap())));
            assert_eq!(&key[8..16], &id.to_be_bytes());
        }
    }

    fn spec(dist: Dist, keys: u64) -> Spec {
        Spec {
            keys,
            dist,
            key_size: Size::fixed(16),
            value_size: Size::fixed(100),
            read_ratio: 0.25,
            delete_ratio: 0.0,
            writers: 1,
            seed: 7,
            merge: false,
        }
    }

    #[test]
    fn check_refuses_what_a_generator_refuses() {
        for (dist, keys) in [(Dist::Zipf(-1.0), 10), (Dist::Zipf(f64::NAN), 10)] {
            let s = spec(dist, keys);
            let refused = check(&s).expect_err("a zipf that is not a distribution");
            assert_eq!(Generator::new(&s, 0).err(), Some(refused));
        }
        for dist in [Dist::Zipf(0.99), Dist::Uniform, Dist::Sequential] {
            check(&spec(dist, 10)).unwrap();
        }
    }

    #[test]
    fn zipf_ids_follow_the_zipf_pmf() {
        let (keys, theta, draws) = (1000u64, 0.99, 400_000u32);
        let norm: f64 = (1..=keys).map(|r| (r as f64).powf(-theta)).sum();
        let mut s = spec(Dist::Zipf(theta), keys);
        // Several writers: each pool is shorter than the draws, so the wrap is exercised.
        s.writers = 64;
        let mut g = Generator::new(&s, 3).unwrap();
        let mut counts = vec![0u32; keys as usize];
        for _ in 0..draws {
            counts[g.next_id() as usize] += 1;
        }
        for id in [0usize, 1, 2, 9, 99, 999] {
            let expected = f64::from(draws) * ((id + 1) as f64).powf(-theta) / norm;
            let diff = (f64::from(counts[id]) - expected).abs();
            // Six standard deviations of a binomial count, allowing for a pool of 65,536
            // draws repeated about six times; a wrong theta or an off-by-one rank is far
            // outside it.
            let sd = (expected * f64::from(draws) / ZIPF_POOL_MIN as f64).sqrt();
            assert!(
                diff < 6.0 * sd + 1.0,
                "id {id} drawn {} times, expected {expected:.0}",
                counts[id]
            );
        }
    }

    #[test]
    fn ids_stay_in_range_and_zipf_is_skewed() {
        for dist in [Dist::Uniform, Dist::Zipf(0.99), Dist::Zipf(0.0)] {
            let mut g = Generator::new(&spec(dist, 1000), 0).unwrap();
            let mut zero = 0;
            for _ in 0..100_000 {
                let id = g.next_id();
                assert!(id < 1000);
                zero += u32::from(id == 0);
            }
            if dist == Dist::Zipf(0.99) {
                // P(id 0) is about 1 / H(1000, 0.99), roughly 13 %.
                assert!(zero > 8_000, "zipf id 0 drawn only {zero} times");
            } else {
                assert!(zero < 1_000, "{dist}: id 0 drawn {zero} times");
            }
        }
    }

    #[test]
    fn hotset_sends_its_share_to_the_hot_keys() {
        let dist = "hotset:10:90".parse().unwrap();
        let mut g = Generator::new(&spec(dist, 1000), 0).unwrap();
        let hot = (0..100_000).filter(|_| g.next_id() < 100).count();
        assert!(
            (88_000..92_000).contains(&hot),
            "{hot} of 100000 hit the hot 10 %"
        );
        // 100 % of the keys hot: everything is uniform over all of them.
        let dist = "hotset:100:50".parse().unwrap();
        let mut g = Generator::new(&spec(dist, 10), 0).unwrap();
        assert!((0..1000).all(|_| g.next_id() < 10));
    }

    #[test]
    fn sequential_writers_interleave_and_keys_ascend() {
        let mut s = spec(Dist::Sequential, 10);
        s.writers = 3;
        let mut g1 = Generator::new(&s, 1).unwrap();
        let ids: Vec<u64> = (0..5).map(|_| g1.next_id()).collect();
        assert_eq!(ids, [1, 4, 7, 0, 3]);
        let (mut a, mut b) = ([0u8; 16], [0u8; 16]);
        encode_key(41, false, &mut a);
        encode_key(42, false, &mut b);
        assert!(a < b);
    }

    #[test]
    fn key_lengths_are_fixed_per_id_and_in_range() {
        let size = Size { min: 16, max: 64 };
        let mut s = spec(Dist::Uniform, 500);
        s.key_size = size;
        s.value_size = Size { min: 0, max: 10 };
        s.read_ratio = 0.0;
        let mut g = Generator::new(&s, 0).unwrap();
        let mut seen: HashMap<Vec<u8>, usize> = HashMap::new();
        let mut lens = HashSet::new();
        for _ in 0..20_000 {
            let Op::Put { key, value } = g.next_op() else {
                panic!("a get or delete without a ratio")
            };
            assert!((16..=64).contains(&key.len()) && value.len() <= 10);
            lens.insert(key.len());
            let prefix = key[..8].to_vec();
            assert_eq!(*seen.entry(prefix).or_insert(key.len()), key.len());
        }
        assert!(lens.len() > 30, "only {} distinct key lengths", lens.len());
    }

    #[test]
    fn streams_are_deterministic_and_mix_ops() {
        let mut s = spec(Dist::Zipf(0.99), 1000);
        s.delete_ratio = 0.1;
        let (mut a, mut b) = (
            Generator::new(&s, 3).unwrap(),
            Generator::new(&s, 3).unwrap(),
        );
        let mut counts = HashMap::new();
        for _ in 0..10_000 {
            let op = a.next_op();
            let kind = op.kind();
            let ka = match op {
                Op::Put { key, .. } | Op::Delete { key } | Op::Get { key } => key.to_vec(),
                Op::Merge { key, .. } => key.to_vec(),
            };
            let kb = match b.next_op() {
                Op::Put { key, .. } | Op::Delete { key } | Op::Get { key } => key.to_vec(),
                Op::Merge { key, .. } => key.to_vec(),
            };
            assert_eq!(ka, kb);
            *counts.entry(kind).or_insert(0) += 1;
        }
        assert!((2_000..3_000).contains(&counts[&Kind::Get]), "{counts:?}");
        assert!((700..1_300).contains(&counts[&Kind::Delete]), "{counts:?}");
    }

    #[test]
    fn merge_streams_increment_where_puts_would_write() {
        let mut s = spec(Dist::Zipf(0.99), 1000);
        s.merge = true;
        let mut g = Generator::new(&s, 0).unwrap();
        let mut merges = 0;
        for _ in 0..1000 {
            match g.next_op() {
                Op::Merge { operand, .. } => {
                    assert_eq!(operand, INCREMENT);
                    merges += 1;
                }
                Op::Get { .. } => {}
                _ => panic!("a put or delete in a merge stream"),
            }
        }
        assert!((600..900).contains(&merges), "{merges} merges");
    }
}

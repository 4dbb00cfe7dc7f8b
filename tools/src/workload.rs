//! What a benchmark writer submits: which key (a distribution over key ids), how a key id
//! becomes key bytes, and whether the op is a read or a write. Every system draws from the
//! same seeded generators, so they all see the same sequence of operations.

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
}

impl FromStr for Dist {
    type Err = String;
    fn from_str(s: &str) -> Result<Dist, String> {
        if s == "uniform" {
            return Ok(Dist::Uniform);
        }
        let Some(theta) = s.strip_prefix("zipf:") else {
            return Err("expected 'uniform' or 'zipf:THETA' (e.g. zipf:0.99)".into());
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
        }
    }
}

/// The parameters every writer of every system shares.
#[derive(Clone, Debug)]
pub struct Spec {
    pub keys: u64,
    pub dist: Dist,
    pub key_size: usize,
    pub value_size: usize,
    pub read_ratio: f64,
    pub seed: u64,
}

/// One operation to submit. `key` borrows the generator's buffer.
pub enum Op<'a> {
    Put { key: &'a [u8], value: &'a [u8] },
    Get { key: &'a [u8] },
}

enum Sampler {
    Uniform,
    Zipf(Zipf<f64>),
}

/// One writer's stream of operations; owns its key and value buffers, so generating an op
/// does not allocate.
pub struct Generator {
    rng: SmallRng,
    sampler: Sampler,
    keys: u64,
    read_ratio: f64,
    key: Vec<u8>,
    value: Vec<u8>,
    seq: u64,
}

impl Generator {
    /// The stream of writer `writer`; the same (spec, writer) gives the same stream.
    pub fn new(spec: &Spec, writer: usize) -> Result<Generator, String> {
        debug_assert!(spec.key_size >= KEY_SIZE_MIN && spec.keys >= 1);
        let sampler = match spec.dist {
            Dist::Uniform => Sampler::Uniform,
            Dist::Zipf(theta) => Sampler::Zipf(
                Zipf::new(spec.keys as f64, theta)
                    .map_err(|e| format!("zipf over {} keys, theta {theta}: {e}", spec.keys))?,
            ),
        };
        let mut rng = SmallRng::seed_from_u64(mix64(spec.seed ^ mix64(writer as u64 + 1)));
        let mut value = vec![0u8; spec.value_size];
        rng.fill(&mut value[..]);
        Ok(Generator {
            rng,
            sampler,
            keys: spec.keys,
            read_ratio: spec.read_ratio,
            key: vec![0u8; spec.key_size],
            value,
            seq: 0,
        })
    }

    /// The next key id in `0..keys`.
    pub fn next_id(&mut self) -> u64 {
        match &self.sampler {
            Sampler::Uniform => self.rng.random_range(0..self.keys),
            // Samples are ranks 1..=n as floats; rank 1 is the most popular.
            Sampler::Zipf(z) => (z.sample(&mut self.rng) as u64).clamp(1, self.keys) - 1,
        }
    }

    /// The next operation.
    pub fn next_op(&mut self) -> Op<'_> {
        let id = self.next_id();
        encode_key(id, &mut self.key);
        let read = self.read_ratio > 0.0 && self.rng.random_bool(self.read_ratio);
        if read {
            return Op::Get { key: &self.key };
        }
        // Stamp a sequence number so successive values of a key differ.
        self.seq += 1;
        let n = self.value.len().min(8);
        self.value[..n].copy_from_slice(&self.seq.to_le_bytes()[..n]);
        Op::Put {
            key: &self.key,
            value: &self.value,
        }
    }
}

/// The splitmix64 finaliser: a bijection on u64, so distinct ids give distinct prefixes.
pub fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Writes key `id` into `out` (at least 8 bytes): the first 8 bytes are `mix64(id)`
/// big-endian, so keys differ in the 8-byte prefix the coalescer sorts on and popular ids
/// are spread over the key space; the rest repeats the id's bytes.
pub fn encode_key(id: u64, out: &mut [u8]) {
    debug_assert!(out.len() >= KEY_SIZE_MIN);
    out[..8].copy_from_slice(&mix64(id).to_be_bytes());
    let id_bytes = id.to_be_bytes();
    for (i, b) in out[8..].iter_mut().enumerate() {
        *b = id_bytes[i % 8];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn dist_parses_and_rejects() {
        assert_eq!("uniform".parse::<Dist>(), Ok(Dist::Uniform));
        assert_eq!("zipf:0.99".parse::<Dist>(), Ok(Dist::Zipf(0.99)));
        for bad in ["zipf:abc", "zipf:", "zipf:-1", "zipf:nan", "zipf:inf", "normal", ""] {
            assert!(bad.parse::<Dist>().is_err(), "{bad} parsed");
        }
        assert_eq!(Dist::Zipf(0.99).to_string(), "zipf:0.99");
    }

    #[test]
    fn key_prefixes_are_distinct() {
        let mut prefixes = HashSet::new();
        let mut key = [0u8; 16];
        for id in 0..100_000u64 {
            encode_key(id, &mut key);
            assert!(prefixes.insert(u64::from_be_bytes(key[..8].try_into().unwrap())));
            assert_eq!(&key[8..16], &id.to_be_bytes());
        }
    }

    fn spec(dist: Dist, keys: u64) -> Spec {
        Spec {
            keys,
            dist,
            key_size: 16,
            value_size: 100,
            read_ratio: 0.25,
            seed: 7,
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
    fn streams_are_deterministic_and_mix_reads() {
        let s = spec(Dist::Zipf(0.99), 1000);
        let (mut a, mut b) = (
            Generator::new(&s, 3).unwrap(),
            Generator::new(&s, 3).unwrap(),
        );
        let mut reads = 0;
        for _ in 0..10_000 {
            let (ka, ra) = match a.next_op() {
                Op::Put { key, .. } => (key.to_vec(), false),
                Op::Get { key } => (key.to_vec(), true),
            };
            let kb = match b.next_op() {
                Op::Put { key, .. } | Op::Get { key } => key.to_vec(),
            };
            assert_eq!(ka, kb);
            reads += u32::from(ra);
        }
        assert!((2_000..3_000).contains(&reads), "{reads} reads of 10000");
    }
}

//! `--sample K/N`: the Kth of N disjoint shares of a replica's objects.
//!
//! An object belongs to share `1 + XXH3-64(key) mod N`. The key never changes
//! (objects are write-once and named by content), so running K = 1..N, one per
//! night, reads every object exactly once, and new objects fall into shares
//! evenly.

use std::fmt;
use std::str::FromStr;

use xxhash_rust::xxh3::xxh3_64;

/// Share `k` (1-based) of `n`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Sample {
    pub k: u64,
    pub n: u64,
}

impl Sample {
    /// Whether the object named `key` is in this share.
    pub fn contains(&self, key: &str) -> bool {
        xxh3_64(key.as_bytes()) % self.n == self.k - 1
    }
}

impl FromStr for Sample {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("sample {s:?}: use K/N with 1 <= K <= N, like 3/7");
        let (k, n) = s.split_once('/').ok_or_else(bad)?;
        let k: u64 = k.trim().parse().map_err(|_| bad())?;
        let n: u64 = n.trim().parse().map_err(|_| bad())?;
        if n == 0 || k == 0 || k > n {
            return Err(bad());
        }
        Ok(Sample { k, n })
    }
}

impl fmt::Display for Sample {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.k, self.n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_partition_the_keys() {
        let keys: Vec<String> = (0..500u64)
            .map(|i| format!("segments/{i:016x}-{:016x}-00000000000ab-x.wseg", i + 3))
            .collect();
        for n in [1u64, 2, 3, 7] {
            let mut seen = vec![0u32; keys.len()];
            for k in 1..=n {
                let s = Sample { k, n };
                for (i, key) in keys.iter().enumerate() {
                    if s.contains(key) {
                        seen[i] += 1;
                    }
                }
            }
            assert!(seen.iter().all(|&c| c == 1), "n={n}: {seen:?}");
        }
    }

    #[test]
    fn parses_k_of_n() {
        assert_eq!("3/7".parse::<Sample>(), Ok(Sample { k: 3, n: 7 }));
        assert_eq!(Sample { k: 3, n: 7 }.to_string(), "3/7");
        for bad in ["0/3", "4/3", "1/0", "x/2", "2", ""] {
            assert!(bad.parse::<Sample>().is_err(), "{bad}");
        }
    }
}

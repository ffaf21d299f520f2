//! Difficulty and targets: the conversions where proxies go wrong.
//!
//! Stratum difficulty is "pool difficulty" (pdiff): difficulty 1 is the target
//! `0x00000000FFFF0000...0000` (`bitcoin::Target::MAX`), and a share of difficulty `d` must hash to
//! at most `diff1 / d`. Farms and tests use difficulties from far below 1 (CPU miners, 1e-9) to
//! above 1e12, so the division is done exactly in 256-bit integer arithmetic, never with `f64` on
//! the whole target.
//!
//! Two target types exist on purpose: [`bitcoin::Target`] is the public 256-bit value (it comes with
//! compact encoding, display and `difficulty_float`), and [`Threshold`] is the same number laid out
//! as four little-endian `u64` limbs so the hot path compares a hash against it with four integer
//! comparisons.

use std::fmt;

use bitcoin::{CompactTarget, Target};

use crate::protocol::Difficulty;

/// The difficulty-1 target: `0xFFFF << 208`.
pub const DIFF1_TARGET: Target = Target::MAX;

// The target math of a wire difficulty: the type is protocol's (it is what miners and pools
// send), the 256-bit arithmetic is work's.
impl Difficulty {
    /// The share target for this difficulty: `floor(diff1 / d)`, exact in integer arithmetic,
    /// saturating at `2^256 - 1` for difficulties below about 2.3e-10.
    pub fn to_target(self) -> Target {
        Target::from_le_bytes(limbs_to_le_bytes(&diff1_divided_by(self.get())))
    }

    /// The same target prepared for the hot-path comparison.
    pub fn to_threshold(self) -> Threshold {
        Threshold {
            limbs: diff1_divided_by(self.get()),
        }
    }

    /// The difficulty whose target is `target` (`diff1 / target`), as a float. Used for reporting
    /// and round trips; not for validity decisions.
    pub fn from_target(target: Target) -> Option<Self> {
        Difficulty::new(target.difficulty_float()).ok()
    }

    /// The difficulty a hash actually achieved: `diff1 / hash`, as a float. A share of difficulty
    /// `d` is valid exactly when this is at least `d` (up to float rounding at the boundary, which
    /// is why validity is decided by [`Threshold::is_met_by`], not by this number).
    pub fn of_hash(hash: &[u8; 32]) -> f64 {
        let hash_value = le_bytes_to_f64(hash);
        if hash_value == 0.0 {
            return f64::INFINITY;
        }
        DIFF1_F64 / hash_value
    }
}

/// `diff1` as an f64: 0xFFFF * 2^208.
const DIFF1_F64: f64 = 65535.0 * 411376139330301510538742295639337626245683966408394965837152256.0;

/// A 256-bit target as four little-endian `u64` limbs (limb 0 least significant).
///
/// The share verifier compares every hash against up to three of these (miner, upstream,
/// network); doing it on limbs costs four integer comparisons and no conversion.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Threshold {
    limbs: [u64; 4],
}

impl Threshold {
    /// The largest target: every hash meets it.
    pub const MAX: Threshold = Threshold {
        limbs: [u64::MAX; 4],
    };

    /// Whether `hash` (SHA-256d output in its natural, internal byte order, read as a
    /// little-endian 256-bit integer) is at most this target.
    #[inline(always)]
    pub fn is_met_by(&self, hash: &[u8; 32]) -> bool {
        for i in (0..4).rev() {
            let word = u64::from_le_bytes(
                hash[i * 8..i * 8 + 8]
                    .try_into()
                    .expect("an 8-byte slice of a 32-byte array"),
            );
            if word != self.limbs[i] {
                return word < self.limbs[i];
            }
        }
        true
    }

    /// Back to the public 256-bit type.
    pub fn to_target(&self) -> Target {
        Target::from_le_bytes(limbs_to_le_bytes(&self.limbs))
    }
}

impl From<Target> for Threshold {
    fn from(target: Target) -> Self {
        let bytes = target.to_le_bytes();
        Threshold {
            limbs: core::array::from_fn(|i| {
                u64::from_le_bytes(bytes[i * 8..i * 8 + 8].try_into().expect("8 bytes"))
            }),
        }
    }
}

impl fmt::Debug for Threshold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Threshold({:x})", self.to_target())
    }
}

/// The network target encoded by a block header's `nbits` (compact form: mantissa
/// `nbits & 0x007fffff` times `256^(exponent - 3)`), decoded by the `bitcoin` crate.
pub fn network_target(nbits: u32) -> Target {
    Target::from_compact(CompactTarget::from_consensus(nbits))
}

/// `floor((0xFFFF << 208) / d)` as little-endian limbs, saturating at `2^256 - 1`.
///
/// `d` is decomposed exactly as `m * 2^e` (m the 53-bit mantissa), so the quotient is
/// `floor(0xFFFF * 2^(208 - e) / m)`: a shift and one multi-limb division by a `u64`.
fn diff1_divided_by(d: f64) -> [u64; 4] {
    debug_assert!(
        d.is_finite() && d > 0.0,
        "Difficulty keeps d finite and positive"
    );
    let bits = d.to_bits();
    let raw_exponent = ((bits >> 52) & 0x7ff) as i32;
    let fraction = bits & ((1u64 << 52) - 1);
    let (mut mantissa, mut exponent) = if raw_exponent == 0 {
        (fraction, -1074) // subnormal
    } else {
        (fraction | (1u64 << 52), raw_exponent - 1075)
    };
    // An odd mantissa keeps the numerator as small as possible.
    let zeros = mantissa.trailing_zeros();
    mantissa >>= zeros;
    exponent += zeros as i32;

    let shift = 208 - exponent; // numerator = 0xFFFF << shift
    if shift < 0 {
        // d >= 2^209: the target is 0xFFFF / (m * 2^-shift), tiny or zero.
        let divisor_shift = (-shift) as u32;
        if divisor_shift >= 64 {
            return [0; 4];
        }
        let divisor = (mantissa as u128) << divisor_shift;
        return [(0xFFFFu128 / divisor) as u64, 0, 0, 0];
    }
    let shift = shift as u32;
    // The quotient has at least (16 + shift) - 64 bits; beyond 256 it saturates.
    let numerator_bits = 16 + shift;
    let mantissa_bits = 64 - mantissa.leading_zeros();
    if numerator_bits > 256 + mantissa_bits {
        return [u64::MAX; 4];
    }
    // numerator_bits <= 256 + 53 < 384: six limbs hold it.
    let mut numerator = [0u64; 6];
    let limb = (shift / 64) as usize;
    let offset = shift % 64;
    numerator[limb] = 0xFFFFu64 << offset;
    if offset > 48 && limb + 1 < 6 {
        numerator[limb + 1] = 0xFFFFu64 >> (64 - offset);
    }
    // Schoolbook division by a single limb, most significant first.
    let mut quotient = [0u64; 6];
    let mut remainder: u128 = 0;
    for i in (0..6).rev() {
        let current = (remainder << 64) | numerator[i] as u128;
        quotient[i] = (current / mantissa as u128) as u64;
        remainder = current % mantissa as u128;
    }
    if quotient[4] != 0 || quotient[5] != 0 {
        return [u64::MAX; 4];
    }
    [quotient[0], quotient[1], quotient[2], quotient[3]]
}

fn limbs_to_le_bytes(limbs: &[u64; 4]) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (chunk, limb) in out.chunks_exact_mut(8).zip(limbs) {
        chunk.copy_from_slice(&limb.to_le_bytes());
    }
    out
}

fn le_bytes_to_f64(bytes: &[u8; 32]) -> f64 {
    let mut value = 0.0f64;
    for i in (0..4).rev() {
        let limb = u64::from_le_bytes(bytes[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
        value = value * 18446744073709551616.0 + limb as f64;
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex_target(target: Target) -> String {
        format!("{target:064x}")
    }

    #[test]
    fn difficulty_one_is_the_pdiff_target() {
        assert_eq!(
            hex_target(Difficulty::ONE.to_target()),
            "00000000ffff0000000000000000000000000000000000000000000000000000"
        );
        assert_eq!(Difficulty::ONE.to_target(), DIFF1_TARGET);
    }

    #[test]
    fn known_pool_difficulties() {
        // Values any pool operator can check by hand: diff1 / 2^k is a shift.
        assert_eq!(
            hex_target(Difficulty::new(65536.0).unwrap().to_target()),
            "000000000000ffff000000000000000000000000000000000000000000000000"
        );
        assert_eq!(
            hex_target(Difficulty::new(0.5).unwrap().to_target()),
            "00000001fffe0000000000000000000000000000000000000000000000000000"
        );
        assert_eq!(
            hex_target(Difficulty::new(1.0 / 65536.0).unwrap().to_target()),
            "0000ffff00000000000000000000000000000000000000000000000000000000"
        );
        // Not a power of two: diff1 / 3 = 0x5555 << 208.
        assert_eq!(
            hex_target(Difficulty::new(3.0).unwrap().to_target()),
            "0000000055550000000000000000000000000000000000000000000000000000"
        );
    }

    /// Exact quotients of diff1 by the f64 nearest to each difficulty, computed independently
    /// with Python's `fractions.Fraction` (`int(Fraction(0xffff << 208) / Fraction(d))`).
    #[test]
    fn exact_division_matches_rational_arithmetic() {
        let vectors = [
            (
                0.0001,
                "0000270fd8efffffff791d46e3400001d1c6e73746fff9b79d29951ed415b1f5",
            ),
            (
                1e-9,
                "3b9a8e6535fffef481b5fe088151b0791619e09d7e3f36fccfbaa4c14955fdb7",
            ),
            (
                1.5e12,
                "000000000000000000bba5a9bb845ecca495ef689fa5f402323fb15b8339aaf9",
            ),
        ];
        for (d, expected) in vectors {
            assert_eq!(
                hex_target(Difficulty::new(d).unwrap().to_target()),
                expected,
                "difficulty {d}"
            );
        }
    }

    #[test]
    fn extreme_difficulties() {
        let tiny = Difficulty::new(1e-9).unwrap();
        let target = tiny.to_target();
        let back = target.difficulty_float();
        assert!((back - 1e-9).abs() / 1e-9 < 1e-12, "{back}");
        // below ~2.3e-10 the quotient exceeds 2^256: saturate
        assert_eq!(
            Difficulty::new(1e-12).unwrap().to_threshold(),
            Threshold::MAX
        );
        let huge = Difficulty::new(1.5e12).unwrap();
        let back = huge.to_target().difficulty_float();
        assert!((back - 1.5e12).abs() / 1.5e12 < 1e-9, "{back}");
        // an absurd difficulty gives a zero target, not a panic
        assert_eq!(Difficulty::new(1e300).unwrap().to_target(), Target::ZERO);
        assert!(Difficulty::new(f64::MIN_POSITIVE / 4.0).is_ok());
        let _ = Difficulty::new(f64::MIN_POSITIVE / 4.0)
            .unwrap()
            .to_target();
    }

    #[test]
    fn rejects_unusable_numbers() {
        assert!(Difficulty::new(0.0).is_err());
        assert!(Difficulty::new(-1.0).is_err());
        assert!(Difficulty::new(f64::NAN).is_err());
        assert!(Difficulty::new(f64::INFINITY).is_err());
        assert!(serde_json::from_str::<Difficulty>("0").is_err());
        assert_eq!(
            serde_json::from_str::<Difficulty>("16384").unwrap().get(),
            16384.0
        );
    }

    #[test]
    fn nbits_of_the_mainnet_vector() {
        // nbits 170ed0eb: mantissa 0x0ed0eb, exponent 0x17 -> 0x0ed0eb * 256^(0x17 - 3).
        assert_eq!(
            hex_target(network_target(0x170ed0eb)),
            "0000000000000000000ed0eb0000000000000000000000000000000000000000"
        );
        // The genesis block's nbits is difficulty 1.
        assert_eq!(network_target(0x1d00ffff), DIFF1_TARGET);
    }

    #[test]
    fn threshold_compares_as_little_endian_integer() {
        let threshold = Difficulty::ONE.to_threshold();
        let diff1_bytes = DIFF1_TARGET.to_le_bytes();
        assert!(
            threshold.is_met_by(&diff1_bytes),
            "a hash equal to the target meets it"
        );
        let mut above = diff1_bytes;
        above[0] = 1;
        assert!(!threshold.is_met_by(&above), "diff1 + 1 does not");
        let mut below = diff1_bytes;
        below[26] = 0xfe;
        assert!(threshold.is_met_by(&below));
        let mut high = [0u8; 32];
        high[28] = 1; // 2^224 > diff1: the most significant bytes are at the end
        assert!(!threshold.is_met_by(&high));
        let mut low = [0xffu8; 32];
        low[26..].fill(0); // 2^208 - 1 < diff1 despite all the ones at the start
        assert!(threshold.is_met_by(&low));
        assert_eq!(Threshold::from(DIFF1_TARGET).to_target(), DIFF1_TARGET);
    }

    #[test]
    fn difficulty_of_hash() {
        let d = Difficulty::of_hash(&DIFF1_TARGET.to_le_bytes());
        assert!((d - 1.0).abs() < 1e-12);
        assert!(Difficulty::of_hash(&[0u8; 32]).is_infinite());
    }
}

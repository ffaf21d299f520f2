//! Fixed-size hex fields as Stratum sends them: one spelling per value (exact length, either
//! case), because shares are keyed for duplicates and a second spelling would be a second share.

/// Decodes exactly 8 hex digits (either case) as a big-endian u32, the wire form of version,
/// nbits, ntime and nonce. Shorter or padded spellings are refused, so one value has one spelling.
pub fn decode_u32_hex(hex_str: &str) -> Option<u32> {
    decode_array::<4>(hex_str).map(u32::from_be_bytes)
}

/// Decodes exactly `N` bytes of hex.
pub(crate) fn decode_array<const N: usize>(hex_str: &str) -> Option<[u8; N]> {
    let mut out = [0u8; N];
    hex::decode_to_slice(hex_str, &mut out).ok()?;
    Some(out)
}

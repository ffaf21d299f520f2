//! SHA-256 at the compression-function level, so the share verifier can reuse midstates.
//!
//! Every hash in a share check goes through [`compress`], which is `sha2`'s raw compression
//! function. `sha2` detects SHA-NI (`sha` + `sse4.1`) at run time and uses it when the CPU has it;
//! [`backend`] reports which path this process takes so benches and logs can say so.
//!
//! All helpers here work on the stack: no allocation, fixed-size buffers.

/// SHA-256 initial hash values (FIPS 180-4, 5.3.3): the state before any block is compressed.
pub const INITIAL_STATE: [u32; 8] = [
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
];

/// The padding block that follows exactly 64 bytes of message: 0x80, zeros, and the bit length
/// 512 as a big-endian u64. Merkle steps hash 64-byte inputs, so this block is a constant.
const PAD_AFTER_64_BYTES: [u8; 64] = {
    let mut block = [0u8; 64];
    block[0] = 0x80;
    block[62] = 0x02; // 512 bits = 0x0200, big-endian in the last 8 bytes
    block
};

/// Runs the SHA-256 compression function over one 64-byte block.
#[inline(always)]
pub fn compress(state: &mut [u32; 8], block: &[u8; 64]) {
    sha2::block_api::compress256(state, std::slice::from_ref(block));
}

/// Which SHA-256 implementation `sha2` picks on this CPU: `"sha-ni"` or `"soft"`.
///
/// This mirrors `sha2`'s own run-time check (`sha` and `sse4.1` on x86), so a bench or a startup
/// log line can state which path the hot loop runs on.
pub fn backend() -> &'static str {
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    {
        if std::arch::is_x86_feature_detected!("sha")
            && std::arch::is_x86_feature_detected!("sse4.1")
        {
            return "sha-ni";
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        if std::arch::is_aarch64_feature_detected!("sha2") {
            return "armv8-sha2";
        }
    }
    "soft"
}

/// Serializes a SHA-256 state as the digest bytes (each word big-endian).
#[inline(always)]
pub fn state_to_digest(state: &[u32; 8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (chunk, word) in out.chunks_exact_mut(4).zip(state) {
        chunk.copy_from_slice(&word.to_be_bytes());
    }
    out
}

/// SHA-256 of a 32-byte message: one compression (message, 0x80, zeros, length 256 bits).
/// This is the second half of every SHA-256d.
#[inline(always)]
pub fn sha256_of_digest(digest: &[u8; 32]) -> [u8; 32] {
    let mut block = [0u8; 64];
    block[..32].copy_from_slice(digest);
    block[32] = 0x80;
    block[62] = 0x01; // 256 bits = 0x0100, big-endian
    let mut state = INITIAL_STATE;
    compress(&mut state, &block);
    state_to_digest(&state)
}

/// SHA-256d of exactly 64 bytes (a merkle step: left ++ right): three compressions.
#[inline(always)]
pub fn sha256d_64(data: &[u8; 64]) -> [u8; 32] {
    let mut state = INITIAL_STATE;
    compress(&mut state, data);
    compress(&mut state, &PAD_AFTER_64_BYTES);
    sha256_of_digest(&state_to_digest(&state))
}

/// A SHA-256 computation that can start from a midstate: the state after some whole 64-byte
/// blocks of a message that are the same for every share (coinb1's prefix).
///
/// Lives on the stack; `update` copies into a 64-byte buffer and compresses whenever it fills.
#[derive(Clone)]
pub struct Sha256Stream {
    state: [u32; 8],
    buffer: [u8; 64],
    buffered: usize,
    total_len: u64,
}

impl Sha256Stream {
    /// Starts a fresh SHA-256.
    pub fn new() -> Self {
        Self::from_midstate(INITIAL_STATE, 0)
    }

    /// Resumes from `state`, the result of compressing the first `hashed_len` bytes of the
    /// message. `hashed_len` must be a multiple of 64 (whole blocks).
    pub fn from_midstate(state: [u32; 8], hashed_len: u64) -> Self {
        debug_assert_eq!(hashed_len % 64, 0, "a midstate covers whole blocks only");
        Self {
            state,
            buffer: [0u8; 64],
            buffered: 0,
            total_len: hashed_len,
        }
    }

    /// Feeds more message bytes.
    #[inline]
    pub fn update(&mut self, mut data: &[u8]) {
        self.total_len += data.len() as u64;
        if self.buffered > 0 {
            let take = (64 - self.buffered).min(data.len());
            self.buffer[self.buffered..self.buffered + take].copy_from_slice(&data[..take]);
            self.buffered += take;
            data = &data[take..];
            if self.buffered < 64 {
                return;
            }
            compress(&mut self.state, &self.buffer);
            self.buffered = 0;
        }
        let mut blocks = data.chunks_exact(64);
        for block in &mut blocks {
            let block: &[u8; 64] = block
                .try_into()
                .expect("chunks_exact yields 64-byte chunks");
            compress(&mut self.state, block);
        }
        let rest = blocks.remainder();
        self.buffer[..rest.len()].copy_from_slice(rest);
        self.buffered = rest.len();
    }

    /// The current state, when the message so far is a whole number of blocks. Used to build a
    /// midstate once per job.
    pub fn midstate(&self) -> Option<([u32; 8], u64)> {
        (self.buffered == 0).then_some((self.state, self.total_len))
    }

    /// Applies the SHA-256 padding and returns the digest.
    #[inline]
    pub fn finish(mut self) -> [u8; 32] {
        let bit_len = self.total_len.wrapping_mul(8);
        self.buffer[self.buffered] = 0x80;
        self.buffer[self.buffered + 1..].fill(0);
        if self.buffered >= 56 {
            compress(&mut self.state, &self.buffer);
            self.buffer = [0u8; 64];
        }
        self.buffer[56..].copy_from_slice(&bit_len.to_be_bytes());
        compress(&mut self.state, &self.buffer);
        state_to_digest(&self.state)
    }
}

impl Default for Sha256Stream {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitcoin::hashes::{Hash, sha256, sha256d};

    #[test]
    fn stream_matches_reference_for_every_length_and_split() {
        let data: Vec<u8> = (0..300u32).map(|i| (i * 7 + 3) as u8).collect();
        for len in 0..data.len() {
            let expected = sha256::Hash::hash(&data[..len]).to_byte_array();
            for split in [0, 1, len / 2, len] {
                let split = split.min(len);
                let mut stream = Sha256Stream::new();
                stream.update(&data[..split]);
                stream.update(&data[split..len]);
                assert_eq!(stream.finish(), expected, "len {len} split {split}");
            }
        }
    }

    #[test]
    fn midstate_resume_matches_one_pass() {
        let data: Vec<u8> = (0..200u8).collect();
        let mut prefix = Sha256Stream::new();
        prefix.update(&data[..128]);
        let (state, len) = prefix.midstate().expect("128 bytes are two whole blocks");
        let mut resumed = Sha256Stream::from_midstate(state, len);
        resumed.update(&data[128..]);
        assert_eq!(resumed.finish(), sha256::Hash::hash(&data).to_byte_array());
    }

    #[test]
    fn sha256d_64_matches_reference() {
        let data: [u8; 64] = core::array::from_fn(|i| i as u8 ^ 0x5a);
        assert_eq!(
            sha256d_64(&data),
            sha256d::Hash::hash(&data).to_byte_array()
        );
    }

    #[test]
    fn backend_matches_cpu_flags() {
        // On a Linux x86 machine whose CPU advertises sha_ni, sha2 must take the SHA-NI path.
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let has_sha_ni = cpuinfo.split_whitespace().any(|flag| flag == "sha_ni");
        if has_sha_ni {
            assert_eq!(backend(), "sha-ni");
        }
    }
}

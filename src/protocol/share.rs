//! `mining.submit` on the wire: the fields of a share that go into the hash, decoded from hex
//! once. Whether the share is any good is work's verdict (`work::check_share`).

use super::extranonce::Extranonce2;
use super::hex::decode_u32_hex;
use super::notify::JobId;

/// The fields of a `mining.submit` that go into the hash, decoded from hex once.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Share {
    /// The job the miner worked on.
    pub job_id: JobId,
    /// The miner's extranonce2 (size checked by the verifier against what the miner was given).
    pub extranonce2: Extranonce2,
    /// Header timestamp.
    pub ntime: u32,
    /// Header nonce.
    pub nonce: u32,
    /// Rolled version bits (BIP310), when the miner sends them.
    pub version_bits: Option<u32>,
}

/// A submit field that is not hex of its exact size (Stratum error 20, with the field named).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{field} is not valid hex of the right length")]
pub struct BadShareHex {
    /// Which submit field.
    pub field: &'static str,
}

impl Share {
    /// Decodes the hex fields of a `mining.submit`. A field that does not decode makes the share
    /// invalid (error 20) with the field named.
    pub fn from_hex(
        job_id: &str,
        extranonce2: &str,
        ntime: &str,
        nonce: &str,
        version_bits: Option<&str>,
    ) -> Result<Self, BadShareHex> {
        Ok(Share {
            job_id: JobId::new(job_id).map_err(|_| BadShareHex { field: "job_id" })?,
            extranonce2: Extranonce2::from_hex(extranonce2).map_err(|_| BadShareHex {
                field: "extranonce2",
            })?,
            ntime: decode_u32_hex(ntime).ok_or(BadShareHex { field: "ntime" })?,
            nonce: decode_u32_hex(nonce).ok_or(BadShareHex { field: "nonce" })?,
            version_bits: version_bits
                .map(|bits| {
                    decode_u32_hex(bits).ok_or(BadShareHex {
                        field: "version_bits",
                    })
                })
                .transpose()?,
        })
    }
}

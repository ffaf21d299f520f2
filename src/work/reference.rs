//! The plain share check, built only on the `bitcoin` crate: no midstates, no reuse.
//!
//! It is the baseline the fast verifier is measured and property-tested against, and the
//! verifier of the simulated pool (`sim`), so the proxy's own verifier never grades itself.

use bitcoin::block::{Header, Version};
use bitcoin::hashes::{Hash, sha256d};
use bitcoin::{BlockHash, CompactTarget, TxMerkleNode};

use crate::protocol::{Extranonce1, Notify, Share};

/// The coinbase transaction bytes: coinb1 ++ extranonce1 ++ extranonce2 ++ coinb2.
pub fn coinbase(notify: &Notify, extranonce1: &Extranonce1, share: &Share) -> Vec<u8> {
    [
        notify.coinb1.as_slice(),
        extranonce1.as_bytes(),
        share.extranonce2.as_bytes(),
        notify.coinb2.as_slice(),
    ]
    .concat()
}

/// The merkle root: `root = sha256d(coinbase); for h in branch: root = sha256d(root ++ h)`.
pub fn merkle_root(notify: &Notify, extranonce1: &Extranonce1, share: &Share) -> TxMerkleNode {
    let mut root = sha256d::Hash::hash(&coinbase(notify, extranonce1, share)).to_byte_array();
    for branch_hash in &notify.merkle_branch {
        let mut pair = Vec::with_capacity(64);
        pair.extend_from_slice(&root);
        pair.extend_from_slice(branch_hash);
        root = sha256d::Hash::hash(&pair).to_byte_array();
    }
    TxMerkleNode::from_byte_array(root)
}

/// The block header the share describes. `version_mask` is the negotiated BIP310 mask; bits of
/// `share.version_bits` outside it are not checked here (the caller decides validity).
pub fn header(
    notify: &Notify,
    extranonce1: &Extranonce1,
    share: &Share,
    version_mask: u32,
) -> Header {
    let bits = share.version_bits.unwrap_or(0);
    let version = (notify.version & !version_mask) | (bits & version_mask);
    Header {
        version: Version::from_consensus(version as i32),
        prev_blockhash: notify.prevhash.to_block_hash(),
        merkle_root: merkle_root(notify, extranonce1, share),
        time: share.ntime,
        bits: CompactTarget::from_consensus(notify.nbits),
        nonce: share.nonce,
    }
}

/// The share's hash, through `Header::block_hash`.
pub fn share_hash(
    notify: &Notify,
    extranonce1: &Extranonce1,
    share: &Share,
    version_mask: u32,
) -> BlockHash {
    header(notify, extranonce1, share, version_mask).block_hash()
}

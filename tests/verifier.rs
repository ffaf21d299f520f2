//! The share verifier against a real mainnet block and against the plain `bitcoin`-crate
//! reference.

use std::path::PathBuf;

use bitcoin::hashes::Hash;
use hashgate::protocol::{
    BadShareHex, Difficulty, Extranonce1, Extranonce2, JobId, Notify, PrevHash, Share,
};
use hashgate::work::{
    DuplicateFilter, HeaderMidstate, InvalidShare, JobBook, Reject, ShareContext, ShareVector,
    Threshold, Verdict, check_share, hash_share, reference, share_merkle_root,
};
use proptest::prelude::*;

fn vector_path() -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/testdata/stratum_job_mainnet_block.json");
    assert!(
        path.exists(),
        "test vector missing: {} (the shared reference data must sit beside the project as ../shared)",
        path.display()
    );
    path
}

struct Mainnet {
    vector: ShareVector,
    book: JobBook,
    extranonce1: Extranonce1,
    share: Share,
    mask: u32,
}

fn mainnet() -> Mainnet {
    let vector = ShareVector::load(vector_path()).expect("vector loads");
    let mut book = JobBook::new(8);
    book.push(vector.notify().expect("job decodes"));
    Mainnet {
        extranonce1: vector.extranonce1().unwrap(),
        share: vector.share().unwrap(),
        mask: vector.version_mask().unwrap(),
        vector,
        book,
    }
}

fn check(m: &Mainnet, dups: &mut DuplicateFilter, share: &Share, difficulty: f64) -> Verdict {
    let share_target = Difficulty::new(difficulty).unwrap().to_threshold();
    let upstream_target = Difficulty::new(difficulty).unwrap().to_threshold();
    let context = ShareContext {
        extranonce1: &m.extranonce1,
        extranonce2_size: m.vector.extranonce2_size,
        version_mask: m.mask,
        share_target: &share_target,
        upstream_target: &upstream_target,
    };
    check_share(&m.book, dups, &context, share)
}

#[test]
fn mainnet_share_reproduces_the_real_block() {
    let m = mainnet();
    let job = m.book.latest().unwrap();
    let expected = m.vector.expected.as_ref().unwrap();

    // The merkle root and, through the reference, the exact header bytes.
    let root = share_merkle_root(job, &m.extranonce1, &m.share);
    assert_eq!(
        bitcoin::TxMerkleNode::from_byte_array(root).to_string(),
        expected.merkle_root.clone().unwrap()
    );
    let header = reference::header(job.notify(), &m.extranonce1, &m.share, m.mask);
    assert_eq!(
        hex::encode(bitcoin::consensus::serialize(&header)),
        expected.header_hex.clone().unwrap()
    );

    let hashed = hash_share(job, &m.extranonce1, 8, m.mask, &m.share).unwrap();
    assert_eq!(hashed.version, 0x3fffe004);
    let block_hash = bitcoin::BlockHash::from_byte_array(hashed.hash);
    assert_eq!(
        block_hash.to_string(),
        "000000000000000000000c835b2adcaedc20fdf6ee440009c249452c726dafae"
    );
    assert_eq!(block_hash.to_string(), m.vector.block_hash.clone().unwrap());

    // Accepted at a pool difficulty, and flagged as a block.
    let mut dups = DuplicateFilter::new();
    match check(&m, &mut dups, &m.share, 65536.0) {
        Verdict::Accepted(accepted) => {
            assert!(accepted.is_block, "meets nbits 170ed0eb");
            assert!(accepted.meets_upstream);
            assert_eq!(accepted.block_hash(), block_hash);
            assert!(accepted.hash_difficulty() > 1e13);
        }
        other => panic!("expected accepted, got {other:?}"),
    }
    // The same share again is a duplicate.
    assert_eq!(
        check(&m, &mut dups, &m.share, 65536.0),
        Verdict::Rejected(Reject::Duplicate)
    );
}

#[test]
fn one_flipped_bit_changes_the_hash() {
    let m = mainnet();
    let job = m.book.latest().unwrap();
    let original = hash_share(job, &m.extranonce1, 8, m.mask, &m.share)
        .unwrap()
        .hash;
    let mut variants = Vec::new();
    let mut s = m.share.clone();
    s.nonce ^= 1;
    variants.push(("nonce", s));
    let mut s = m.share.clone();
    s.ntime += 1;
    variants.push(("ntime", s));
    let mut s = m.share.clone();
    let mut en2 = s.extranonce2.as_bytes().to_vec();
    en2[7] ^= 0x80;
    s.extranonce2 = Extranonce2::from_bytes(&en2).unwrap();
    variants.push(("extranonce2", s));
    let mut s = m.share.clone();
    s.version_bits = Some(0x1fffe000 ^ 0x0000_2000); // a bit inside the mask
    variants.push(("version bit inside the mask", s));
    for (what, share) in variants {
        let hashed = hash_share(job, &m.extranonce1, 8, m.mask, &share).unwrap();
        assert_ne!(
            hashed.hash, original,
            "flipping {what} must change the hash"
        );
        // and none of them is a block any more
        assert!(!job.network_threshold().is_met_by(&hashed.hash), "{what}");
    }
}

#[test]
fn invalid_shares_name_their_reason() {
    let m = mainnet();
    let mut dups = DuplicateFilter::new();
    let mut outside = m.share.clone();
    outside.version_bits = Some(0x1fffe000 | 0x0000_0001);
    assert_eq!(
        check(&m, &mut dups, &outside, 1.0),
        Verdict::Rejected(Reject::Invalid(InvalidShare::VersionBitsOutsideMask {
            bits: 0x1fffe001,
            mask: 0x1fffe000
        }))
    );

    let mut short = m.share.clone();
    short.extranonce2 = Extranonce2::from_hex("78070000").unwrap();
    assert_eq!(
        check(&m, &mut dups, &short, 1.0),
        Verdict::Rejected(Reject::Invalid(InvalidShare::Extranonce2Size {
            expected: 8,
            got: 4
        }))
    );

    let mut early = m.share.clone();
    early.ntime -= 1;
    let mut late = m.share.clone();
    late.ntime += 7201;
    for share in [early, late] {
        assert!(matches!(
            check(&m, &mut dups, &share, 1.0),
            Verdict::Rejected(Reject::Invalid(InvalidShare::NtimeOutOfRange { .. }))
        ));
    }
    let mut edge = m.share.clone();
    edge.ntime += 7200;
    assert!(
        !matches!(
            check(&m, &mut dups, &edge, 1e-9),
            Verdict::Rejected(Reject::Invalid(_))
        ),
        "job ntime + 7200 s is still in range"
    );

    let mut unknown = m.share.clone();
    unknown.job_id = JobId::new("not-a-job").unwrap();
    assert_eq!(
        check(&m, &mut dups, &unknown, 1.0),
        Verdict::Rejected(Reject::Stale)
    );

    let bad_hex = Share::from_hex("1", "7807000000000000", "6155a491", "41dad6zz", None);
    assert_eq!(bad_hex, Err(BadShareHex { field: "nonce" }));
    let padded = Share::from_hex("1", "7807000000000000", "006155a491", "41dad6e3", None);
    assert_eq!(padded, Err(BadShareHex { field: "ntime" }));
}

#[test]
fn low_difficulty_and_upstream_flag() {
    let m = mainnet();
    let job = m.book.latest().unwrap();
    let mut s = m.share.clone();
    s.nonce ^= 1; // an ordinary hash now: almost surely above diff 2^20
    let mut dups = DuplicateFilter::new();
    assert_eq!(
        check(&m, &mut dups, &s, 1_048_576.0),
        Verdict::Rejected(Reject::LowDifficulty)
    );
    // A miner at a tiny difficulty (below 2.3e-10 every hash meets it) gets it accepted, but it
    // does not meet a pool's 65536.
    let share_target = Difficulty::new(1e-12).unwrap().to_threshold();
    assert_eq!(share_target, Threshold::MAX);
    let upstream_target = Difficulty::new(65536.0).unwrap().to_threshold();
    let context = ShareContext {
        extranonce1: &m.extranonce1,
        extranonce2_size: 8,
        version_mask: m.mask,
        share_target: &share_target,
        upstream_target: &upstream_target,
    };
    match check_share(&m.book, &mut dups, &context, &s) {
        Verdict::Accepted(a) => {
            assert!(!a.meets_upstream);
            assert!(!a.is_block);
            assert_eq!(a.job_seq, job.seq());
        }
        other => panic!("{other:?}"),
    }
    // Stale after a clean job.
    let mut book = m.book.clone();
    let mut next = m.vector.notify().unwrap();
    next.job_id = JobId::new("2").unwrap();
    next.clean_jobs = true;
    book.push(next);
    let mut dups = DuplicateFilter::new();
    let context = ShareContext {
        upstream_target: &Threshold::MAX,
        ..context
    };
    assert_eq!(
        check_share(&book, &mut dups, &context, &m.share),
        Verdict::Rejected(Reject::Stale)
    );
}

#[test]
fn header_midstate_matches_full_hash() {
    let m = mainnet();
    let job = m.book.latest().unwrap();
    let root = share_merkle_root(job, &m.extranonce1, &m.share);
    let midstate = HeaderMidstate::for_job(job, &root, 0x3fffe004);
    let full = hash_share(job, &m.extranonce1, 8, m.mask, &m.share).unwrap();
    assert_eq!(midstate.hash(m.share.ntime, m.share.nonce), full.hash);
}

fn arbitrary_job() -> impl Strategy<Value = (Notify, Vec<u8>, Vec<u8>, u32, u32, u32, u32)> {
    (
        (
            prop::collection::vec(any::<u8>(), 0..300), // coinb1
            prop::collection::vec(any::<u8>(), 0..200), // coinb2
            prop::collection::vec(any::<[u8; 32]>(), 0..14),
            any::<[u8; 32]>(),
            any::<u32>(),
            any::<u32>(),
            0u32..u32::MAX - 8000,
            any::<bool>(),
        ),
        prop::collection::vec(any::<u8>(), 0..=8), // extranonce1
        prop::collection::vec(any::<u8>(), 0..=8), // extranonce2
        0u32..=7200,                               // ntime roll
        any::<u32>(),                              // nonce
        any::<u32>(),                              // version bits (masked below)
        prop_oneof![Just(0u32), Just(0x1fffe000u32), any::<u32>()], // mask
    )
        .prop_map(
            |(
                (coinb1, coinb2, branch, prev, version, nbits, ntime, clean),
                en1,
                en2,
                roll,
                nonce,
                bits,
                mask,
            )| {
                let notify = Notify {
                    job_id: JobId::new("j").unwrap(),
                    prevhash: PrevHash::from_wire_bytes(prev),
                    coinb1,
                    coinb2,
                    merkle_branch: branch,
                    version,
                    nbits,
                    ntime,
                    clean_jobs: clean,
                };
                (notify, en1, en2, ntime + roll, nonce, bits & mask, mask)
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// The fast verifier and the plain `bitcoin`-crate reference agree on every job and share.
    #[test]
    fn fast_verifier_agrees_with_reference((notify, en1, en2, ntime, nonce, bits, mask) in arbitrary_job()) {
        let extranonce1 = Extranonce1::from_bytes(&en1).unwrap();
        let share = Share {
            job_id: notify.job_id.clone(),
            extranonce2: Extranonce2::from_bytes(&en2).unwrap(),
            ntime,
            nonce,
            version_bits: Some(bits),
        };
        let expected = reference::share_hash(&notify, &extranonce1, &share, mask);
        let mut book = JobBook::new(4);
        let job = book.push(notify);
        let fast = hash_share(&job, &extranonce1, en2.len(), mask, &share).unwrap();
        prop_assert_eq!(fast.hash, expected.to_byte_array());
    }
}

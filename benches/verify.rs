//! Share verification against the hardware floor (one SHA-256 compression) and against the plain
//! `bitcoin`-crate reference, measured in the same run. Ids are fixed so runs compare.
//!
//! Run: `cargo bench --bench verify`

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use hashgate::protocol::Difficulty;
use hashgate::work::{
    DuplicateFilter, HeaderMidstate, JobBook, ShareContext, ShareVector, Threshold, check_share,
    hash_share, reference, sha256, share_merkle_root,
};

fn vector() -> ShareVector {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/testdata/stratum_job_mainnet_block.json"
    );
    ShareVector::load(path).unwrap_or_else(|e| panic!("{e}: ../shared must sit beside the project"))
}

fn benches(c: &mut Criterion) {
    eprintln!("sha256 backend: {}", sha256::backend());
    let vector = vector();
    let notify = vector.notify().expect("vector job decodes");
    let extranonce1 = vector.extranonce1().expect("vector extranonce1");
    let share = vector.share().expect("vector share");
    let mask = vector.version_mask().expect("vector mask");
    let mut book = JobBook::new(8);
    let job = book.push(notify.clone());
    let share_target = Difficulty::new(65536.0).expect("positive").to_threshold();
    let upstream_target = Difficulty::new(1_048_576.0)
        .expect("positive")
        .to_threshold();

    let mut group = c.benchmark_group("sha256");
    let block = [0x5au8; 64];
    group.bench_function("compress", |b| {
        let mut state = sha256::INITIAL_STATE;
        b.iter(|| {
            sha256::compress(&mut state, black_box(&block));
            black_box(&state);
        })
    });
    group.finish();

    let mut group = c.benchmark_group("verify");
    group.bench_function("full_share", |b| {
        b.iter(|| {
            let hashed = hash_share(&job, &extranonce1, 8, mask, black_box(&share))
                .expect("the vector share is well formed");
            black_box((
                share_target.is_met_by(&hashed.hash),
                upstream_target.is_met_by(&hashed.hash),
                job.network_threshold().is_met_by(&hashed.hash),
            ))
        })
    });
    group.bench_function("naive_full_share", |b| {
        let share_target = share_target.to_target();
        let upstream_target = upstream_target.to_target();
        let network = hashgate::work::network_target(notify.nbits);
        b.iter(|| {
            let hash = reference::share_hash(&notify, &extranonce1, black_box(&share), mask);
            black_box((
                share_target.is_met_by(hash),
                upstream_target.is_met_by(hash),
                network.is_met_by(hash),
            ))
        })
    });
    let root = share_merkle_root(&job, &extranonce1, &share);
    let midstate = HeaderMidstate::for_job(&job, &root, 0x3fffe004);
    group.bench_function("header_only", |b| {
        b.iter(|| {
            let hash = midstate.hash(black_box(share.ntime), black_box(share.nonce));
            black_box(share_target.is_met_by(&hash))
        })
    });
    // The full verdict as a session runs it: job lookup, fields, hash, targets, duplicate set.
    // Every share is new (nonce varies); the set is cleared every 4096 shares as a job change
    // would, so it stays the size a live job's set has.
    group.bench_function("check_share", |b| {
        let mut duplicates = DuplicateFilter::new();
        let mut share = share.clone();
        let context = ShareContext {
            extranonce1: &extranonce1,
            extranonce2_size: 8,
            version_mask: mask,
            share_target: &Threshold::MAX,
            upstream_target: &upstream_target,
        };
        let mut n = 0u32;
        b.iter(|| {
            n = n.wrapping_add(1);
            share.nonce = n;
            if n.is_multiple_of(4096) {
                duplicates = DuplicateFilter::new();
            }
            black_box(check_share(
                &book,
                &mut duplicates,
                &context,
                black_box(&share),
            ))
        })
    });
    group.finish();
}

criterion_group!(verify, benches);
criterion_main!(verify);

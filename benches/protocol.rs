//! Protocol hot paths: parsing a miner's submit line, serializing a job once for broadcast.
//!
//! Run: `cargo bench --bench protocol`

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use hashgate::protocol::{Id, Message, Response, notify_line};
use hashgate::work::ShareVector;

fn benches(c: &mut Criterion) {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/testdata/stratum_job_mainnet_block.json"
    );
    let vector = ShareVector::load(path)
        .unwrap_or_else(|e| panic!("{e}: ../shared must sit beside the project"));
    let notify = vector.notify().expect("vector job decodes");
    let submit = br#"{"id":4711,"method":"mining.submit","params":["farm.rack07.s19-0042","1","7807000000000000","6155a491","41dad6e3","1fffe000"]}"#;

    let mut group = c.benchmark_group("protocol");
    group.bench_function("parse_submit", |b| {
        b.iter(|| black_box(Message::parse(black_box(submit)).expect("valid submit")))
    });
    group.bench_function("serialize_notify", |b| {
        b.iter(|| black_box(notify_line(black_box(&notify))))
    });
    group.bench_function("serialize_submit_reply", |b| {
        b.iter(|| black_box(Response::ok(black_box(Id::from(4711)), true.into()).to_line()))
    });
    group.finish();
}

criterion_group!(protocol, benches);
criterion_main!(protocol);

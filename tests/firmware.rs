//! Real firmware's handshakes and quirks against the proxy, byte for byte on the wire.

mod common;

use std::time::Duration;

use common::{RawMiner, config_for, pool, proxy};
use hashgate::protocol::{Id, Message, Method};

/// Antminer / Whatsminer (cgminer, bmminer): configure, subscribe, authorize in one TCP write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn antminer_pipelined_burst() {
    let pool = pool(1.0).await;
    let proxy = proxy(config_for(&[&pool], "")).await;
    let mut miner = RawMiner::connect(&proxy).await;
    miner
        .write_raw(concat!(
            r#"{"id":1,"method":"mining.configure","params":[["version-rolling"],{"version-rolling.mask":"1fffe000","version-rolling.min-bit-count":2}]}"#, "\n",
            r#"{"id":2,"method":"mining.subscribe","params":["bmminer/2.0.0"]}"#, "\n",
            r#"{"id":3,"method":"mining.authorize","params":["farm.s19-001","x"]}"#, "\n",
        ))
        .await;
    let configure = miner.response(Id::from(1)).await;
    assert_eq!(configure.result["version-rolling"], true);
    assert_eq!(configure.result["version-rolling.mask"], "1fffe000");
    let r = miner.response(Id::from(2)).await;
    assert!(r.is_ok(), "{r:?}");
    let r = miner.response(Id::from(3)).await;
    assert!(r.is_ok(), "{r:?}");
    // set_difficulty comes before the first notify.
    let mut order = Vec::new();
    while order.len() < 2 {
        if let Message::Request(r) = miner.next().await {
            order.push(r.method.name().to_owned());
        }
    }
    assert_eq!(order, vec!["mining.set_difficulty", "mining.notify"]);
    // A rolled share is accepted.
    let share = miner.find_share(9, true, Some(0x0000_6000));
    miner
        .send(&RawMiner::submit_line(10, "farm.s19-001", &share))
        .await;
    let r = miner.response(Id::from(10)).await;
    assert!(r.is_ok(), "{r:?}");
    proxy.shutdown().await;
}

/// Bitaxe / ESP-Miner: configure, then subscribe, suggest_difficulty, authorize, each awaited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bitaxe_order_with_suggest_difficulty() {
    let pool = pool(1.0).await;
    let proxy = proxy(config_for(&[&pool], "")).await;
    let mut miner = RawMiner::connect(&proxy).await;
    miner
        .send(r#"{"id":1,"method":"mining.configure","params":[["version-rolling"],{"version-rolling.mask":"ffffffff"}]}"#)
        .await;
    let configure = miner.response(Id::from(1)).await;
    assert_eq!(
        configure.result["version-rolling.mask"], "1fffe000",
        "requested AND granted"
    );
    miner
        .send(r#"{"id":2,"method":"mining.subscribe","params":["bitaxe/BM1366/v2.4.0"]}"#)
        .await;
    let r = miner.response(Id::from(2)).await;
    assert!(r.is_ok(), "{r:?}");
    miner
        .send(r#"{"id":3,"method":"mining.suggest_difficulty","params":[0.0005]}"#)
        .await;
    let r = miner.response(Id::from(3)).await;
    assert!(r.is_ok(), "{r:?}");
    miner
        .send(r#"{"id":4,"method":"mining.authorize","params":["farm.bitaxe","x"]}"#)
        .await;
    let r = miner.response(Id::from(4)).await;
    assert!(r.is_ok(), "{r:?}");
    let set = miner.notification("mining.set_difficulty").await;
    assert!(
        matches!(set.method, Method::SetDifficulty(d) if d.get() == 0.0005),
        "{set:?}"
    );
    proxy.shutdown().await;
}

/// bosminer's `[agent, null]`, authorize and suggest_difficulty before subscribe, string ids,
/// extra trailing params, integer difficulty, and configure with the extensions that froze a pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quirks_that_broke_other_proxies() {
    let pool = pool(1.0).await;
    let proxy = proxy(config_for(&[&pool], "")).await;
    let mut miner = RawMiner::connect(&proxy).await;
    miner
        .write_raw(concat!(
            r#"{"id":"a1","method":"mining.suggest_difficulty","params":[1, "extra"]}"#, "\r\n",
            r#"{"id":"a2","method":"mining.authorize","params":["farm.bos-7"]}"#, "\r\n",
            r#"{"id":"a3","method":"mining.configure","params":[["version-rolling","minimum-difficulty","subscribe-extranonce","unknown-ext"],{"version-rolling.mask":"1fffe000","minimum-difficulty.value":0.000002}]}"#, "\n",
            r#"{"id":"a4","method":"mining.subscribe","params":["bosminer/1.0.0", null]}"#, "\n",
        ))
        .await;
    assert!(miner.response(Id::from("a1")).await.is_ok());
    assert!(miner.response(Id::from("a2")).await.is_ok());
    let configure = miner.response(Id::from("a3")).await;
    assert_eq!(configure.result["minimum-difficulty"], true);
    assert_eq!(configure.result["subscribe-extranonce"], true);
    assert_eq!(configure.result["unknown-ext"], false);
    let subscribe = miner.response(Id::from("a4")).await;
    assert!(subscribe.is_ok(), "{subscribe:?}");
    // suggest 1 is clamped to difficulty.max (1.0): the pool's difficulty is 1 too.
    let set = miner.notification("mining.set_difficulty").await;
    assert!(
        matches!(set.method, Method::SetDifficulty(d) if d.get() == 1.0),
        "{set:?}"
    );
    // Split over many segments.
    let line = r#"{"id":99,"method":"mining.extranonce.subscribe","params":[]}"#;
    for chunk in line.as_bytes().chunks(5) {
        miner.write_raw(std::str::from_utf8(chunk).unwrap()).await;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    miner.write_raw("\n").await;
    let r = miner.response(Id::from(99)).await;
    assert!(r.is_ok(), "{r:?}");
    proxy.shutdown().await;
}

/// A pool with an extranonce2 of 12 bytes: miners get at most 8 (WhatsMiner).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downstream_extranonce2_is_capped_at_8_bytes() {
    let pool = common::pool_with(|c| {
        c.extranonce2_size = 12;
    })
    .await;
    let proxy = proxy(config_for(&[&pool], "")).await;
    let mut miner = RawMiner::connect(&proxy).await;
    miner.handshake("farm.m30").await;
    assert_eq!(miner.extranonce2_size, 8);
    let share = miner.find_share(5, true, None);
    miner
        .send(&RawMiner::submit_line(7, "farm.m30", &share))
        .await;
    let r = miner.response(Id::from(7)).await;
    assert!(r.is_ok(), "{r:?}");
    proxy.shutdown().await;
}

/// When the pool grants no version rolling, miners are told so (false, zero mask) and a rolled
/// share is rejected with a clear message instead of being forwarded to fail at the pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_version_rolling_upstream_means_none_downstream() {
    let pool = common::pool_with(|c| {
        c.version_mask = None;
    })
    .await;
    let proxy = proxy(config_for(&[&pool], "")).await;
    // Let the upstream come up so its (absent) mask is known.
    common::eventually("upstream ready", || {
        proxy.router.serving_upstream().is_some()
    })
    .await;
    let mut miner = RawMiner::connect(&proxy).await;
    miner
        .send(r#"{"id":1,"method":"mining.configure","params":[["version-rolling"],{"version-rolling.mask":"1fffe000"}]}"#)
        .await;
    let configure = miner.response(Id::from(1)).await;
    assert_eq!(configure.result["version-rolling"], false);
    assert_eq!(configure.result["version-rolling.mask"], "00000000");
    miner.handshake("farm.norolling").await;
    let share = miner.find_share(3, true, Some(0x0000_2000));
    miner
        .send(&RawMiner::submit_line(5, "farm.norolling", &share))
        .await;
    let r = miner.response(Id::from(5)).await;
    let error = r.error.expect("rejected");
    assert_eq!(error.code, 20);
    assert!(error.message.contains("version bits"), "{}", error.message);
    proxy.shutdown().await;
}

/// Garbage never takes the proxy down: bad JSON is answered, an over-long line closes only that
/// connection, and another miner keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_lines_close_one_connection_only() {
    let pool = pool(1.0).await;
    let proxy = proxy(config_for(&[&pool], "")).await;
    let mut good = RawMiner::connect(&proxy).await;
    good.handshake("farm.good").await;

    let mut bad = RawMiner::connect(&proxy).await;
    bad.send("{this is not json").await;
    let Message::Response(r) = bad.next().await else {
        panic!()
    };
    assert_eq!(r.error.map(|e| e.code), Some(20));
    bad.write_raw(&"x".repeat(20_000)).await;
    assert!(bad.closed().await, "over-long line closes the connection");

    let share = good.find_share(1, true, None);
    good.send(&RawMiner::submit_line(3, "farm.good", &share))
        .await;
    let r = good.response(Id::from(3)).await;
    assert!(r.is_ok(), "{r:?}");
    proxy.shutdown().await;
}

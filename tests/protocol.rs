//! The Stratum V1 protocol layer: parsing real firmware's quirks, serialization round trips, and
//! framing over a real TCP socket.

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use hashgate::downstream::reject_response;
use hashgate::protocol::{
    BadShareHex, Configure, ConfigureResult, Difficulty, Extranonce1, FrameError, Id, JobId,
    LineCodec, Message, Method, Notify, ParamError, ProtocolError, Reconnect, Request, Response,
    SetExtranonce, Share, Submit, Subscribe, SubscribeResult, accepted_line, code, notify_line,
    notify_line_renamed, write_submit_line,
};
use hashgate::work::{InvalidShare, Reject, ShareVector};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::FramedRead;

fn request(line: &str) -> Request {
    match Message::parse(line.as_bytes()) {
        Ok(Message::Request(request)) => request,
        other => panic!("expected a request from {line}, got {other:?}"),
    }
}

fn method(line: &str) -> Method {
    request(line).method
}

#[test]
fn ids_are_echoed_exactly() {
    for (line, id_json) in [
        (
            r#"{"id":7,"method":"mining.extranonce.subscribe","params":[]}"#,
            "7",
        ),
        (
            r#"{"id":"abc","method":"mining.extranonce.subscribe","params":[]}"#,
            r#""abc""#,
        ),
        (
            r#"{"id":null,"method":"mining.extranonce.subscribe","params":[]}"#,
            "null",
        ),
        (
            r#"{"id":1.5,"method":"mining.extranonce.subscribe","params":[]}"#,
            "1.5",
        ),
        (r#"{"id":-3,"method":"mining.extranonce.subscribe"}"#, "-3"),
    ] {
        let id = request(line).id;
        let reply = Response::ok(id, true.into()).to_line();
        let reply = std::str::from_utf8(&reply).unwrap();
        assert!(
            reply.starts_with(&format!("{{\"id\":{id_json},")),
            "{line} -> {reply}"
        );
        assert!(reply.ends_with('\n'));
    }
    // An id that is an object is not JSON-RPC.
    assert!(matches!(
        Message::parse(br#"{"id":{},"method":"mining.subscribe"}"#),
        Err(ProtocolError::InvalidJson(_))
    ));
}

#[test]
fn subscribe_with_zero_one_two_params_and_bosminer_null() {
    assert_eq!(
        method(r#"{"id":1,"method":"mining.subscribe","params":[]}"#),
        Method::Subscribe(Subscribe::default())
    );
    assert_eq!(
        method(r#"{"id":1,"method":"mining.subscribe"}"#),
        Method::Subscribe(Subscribe::default())
    );
    let Method::Subscribe(s) =
        method(r#"{"id":1,"method":"mining.subscribe","params":["bmminer/2.0.0"]}"#)
    else {
        panic!()
    };
    assert_eq!(s.user_agent.as_deref(), Some("bmminer/2.0.0"));
    let Method::Subscribe(s) =
        method(r#"{"id":1,"method":"mining.subscribe","params":["bosminer/1.0", null]}"#)
    else {
        panic!()
    };
    assert_eq!(
        (s.user_agent.as_deref(), s.session_id),
        (Some("bosminer/1.0"), None)
    );
    let Method::Subscribe(s) = method(
        r#"{"id":1,"method":"mining.subscribe","params":["cgminer/4.10", "9b19f82f", "pool.example", 3333]}"#,
    ) else {
        panic!()
    };
    assert_eq!(
        s.session_id.as_deref(),
        Some("9b19f82f"),
        "trailing host/port ignored"
    );
}

#[test]
fn authorize_with_and_without_password() {
    let Method::Authorize(a) =
        method(r#"{"id":2,"method":"mining.authorize","params":["farm.rig1"]}"#)
    else {
        panic!()
    };
    assert_eq!((a.worker.as_str(), a.password), ("farm.rig1", None));
    let Method::Authorize(a) =
        method(r#"{"id":2,"method":"mining.authorize","params":["farm.rig1","x"]}"#)
    else {
        panic!()
    };
    assert_eq!(a.password.as_deref(), Some("x"));
    let Method::Authorize(a) =
        method(r#"{"id":2,"method":"mining.authorize","params":["w\u00e9",null]}"#)
    else {
        panic!()
    };
    assert_eq!(a.worker, "wé", "escaped strings decode");
    assert!(matches!(
        Message::parse(br#"{"id":2,"method":"mining.authorize","params":[]}"#),
        Err(ProtocolError::InvalidParams { id, reason: ParamError::Missing { .. }, .. }) if id == Id::from(2)
    ));
}

#[test]
fn difficulty_as_integer_float_or_string() {
    for (text, expected) in [
        ("16384", 16384.0),
        ("0.0001", 0.0001),
        ("1e-9", 1e-9),
        ("\"512\"", 512.0),
    ] {
        let line = format!(r#"{{"id":null,"method":"mining.set_difficulty","params":[{text}]}}"#);
        assert_eq!(
            method(&line),
            Method::SetDifficulty(Difficulty::new(expected).unwrap())
        );
        let line = format!(
            r#"{{"id":5,"method":"mining.suggest_difficulty","params":[{text}, "extra"]}}"#
        );
        assert_eq!(
            method(&line),
            Method::SuggestDifficulty(Difficulty::new(expected).unwrap())
        );
    }
    for bad in ["0", "-1", "\"abc\"", "null"] {
        let line = format!(r#"{{"id":5,"method":"mining.suggest_difficulty","params":[{bad}]}}"#);
        assert!(
            matches!(
                Message::parse(line.as_bytes()),
                Err(ProtocolError::InvalidParams { .. })
            ),
            "{bad}"
        );
    }
    // Whole difficulties go out as integers, fractional ones as floats.
    let line =
        Request::notification(Method::SetDifficulty(Difficulty::new(16384.0).unwrap())).to_line();
    assert_eq!(
        &line[..],
        &b"{\"id\":null,\"method\":\"mining.set_difficulty\",\"params\":[16384]}\n"[..]
    );
    let line =
        Request::notification(Method::SetDifficulty(Difficulty::new(0.5).unwrap())).to_line();
    assert!(std::str::from_utf8(&line).unwrap().contains("[0.5]"));
}

#[test]
fn submit_with_version_bits_and_trailing_fields() {
    let Method::Submit(s) = method(
        r#"{"id":"4","method":"mining.submit","params":["farm.rig1","1","7807000000000000","6155A491","41dad6e3","1fffe000","extra",1]}"#,
    ) else {
        panic!()
    };
    assert_eq!(s.worker, "farm.rig1");
    assert_eq!(s.share.job_id.as_str(), "1");
    assert_eq!(s.share.ntime, 0x6155a491, "either hex case");
    assert_eq!(s.share.nonce, 0x41dad6e3);
    assert_eq!(s.share.version_bits, Some(0x1fffe000));
    // Without version bits, and with a numeric job id from a sloppy client.
    let Method::Submit(s) = method(
        r#"{"id":4,"method":"mining.submit","params":["w",12,"00000000","6155a491","41dad6e3"]}"#,
    ) else {
        panic!()
    };
    assert_eq!(
        (s.share.job_id.as_str(), s.share.version_bits),
        ("12", None)
    );
    // Bad hex names the field and keeps the id for the error-20 answer.
    match Message::parse(
        br#"{"id":9,"method":"mining.submit","params":["w","1","00","6155a491","xyz"]}"#,
    ) {
        Err(ProtocolError::InvalidParams { id, method, reason }) => {
            assert_eq!(id, Id::from(9));
            assert_eq!(method, "mining.submit");
            assert_eq!(
                reason,
                ParamError::InvalidShare(BadShareHex { field: "nonce" })
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn configure_extensions_and_answer() {
    let Method::Configure(c) = method(
        r#"{"id":1,"method":"mining.configure","params":[["version-rolling","minimum-difficulty","subscribe-extranonce"],{"version-rolling.mask":"1fffe000","version-rolling.min-bit-count":2,"minimum-difficulty.value":2048}]}"#,
    ) else {
        panic!()
    };
    assert_eq!(c.version_rolling_mask(), Some(0x1fffe000));
    assert_eq!(c.version_rolling_min_bit_count(), Some(2));
    assert_eq!(
        c.minimum_difficulty(),
        Some(Difficulty::new(2048.0).unwrap())
    );
    assert!(c.requests("subscribe-extranonce"));
    let no_rolling = Configure {
        extensions: vec!["minimum-difficulty".into()],
        ..Default::default()
    };
    assert_eq!(no_rolling.version_rolling_mask(), None);

    let answer = ConfigureResult {
        version_rolling: Some(0x1fffe000),
        extensions: vec![
            ("minimum-difficulty".into(), true),
            ("subscribe-extranonce".into(), false),
        ],
    };
    let value = answer.to_value();
    assert_eq!(value["version-rolling"], true);
    assert_eq!(value["version-rolling.mask"], "1fffe000");
    assert_eq!(value["subscribe-extranonce"], false);
    assert_eq!(ConfigureResult::from_value(&value), answer);
    let refused = ConfigureResult::from_value(&serde_json::json!({"version-rolling": false}));
    assert_eq!(refused.version_rolling, None);
}

#[test]
fn subscribe_result_round_trip_and_pool_shapes() {
    let result = SubscribeResult {
        subscription_id: "deadbeef".into(),
        extranonce1: Extranonce1::from_hex("9b19f82f").unwrap(),
        extranonce2_size: 8,
    };
    assert_eq!(
        SubscribeResult::from_value(&result.to_value()).unwrap(),
        result
    );
    // ckpool-style flat subscriptions, and a pool that sends a single pair.
    let flat = serde_json::json!([
        ["mining.notify", "ae6812eb4cd7735a302a8a9dd95cf71f"],
        "08000002",
        4
    ]);
    let parsed = SubscribeResult::from_value(&flat).unwrap();
    assert_eq!(
        (
            parsed.extranonce1.to_hex().as_str(),
            parsed.extranonce2_size
        ),
        ("08000002", 4)
    );
    assert!(SubscribeResult::from_value(&serde_json::json!([[], "zz", 4])).is_err());
}

#[test]
fn responses_and_error_shapes() {
    let Message::Response(r) = Message::parse(br#"{"id":3,"result":true,"error":null}"#).unwrap()
    else {
        panic!()
    };
    assert!(r.is_ok());
    let Message::Response(r) =
        Message::parse(br#"{"id":3,"result":null,"error":[23,"Low difficulty share",null]}"#)
            .unwrap()
    else {
        panic!()
    };
    assert_eq!(r.error.as_ref().map(|e| e.code), Some(23));
    assert!(!r.is_ok());
    let Message::Response(r) =
        Message::parse(br#"{"id":3,"result":false,"error":{"code":21,"message":"Stale"}}"#)
            .unwrap()
    else {
        panic!()
    };
    assert_eq!(r.error.unwrap().message, "Stale");
    let Message::Response(r) =
        Message::parse(br#"{"id":3,"result":false,"error":"nope"}"#).unwrap()
    else {
        panic!()
    };
    assert_eq!(r.error.unwrap().code, code::OTHER);

    for (reject, expected) in [
        (Reject::Stale, 21),
        (Reject::Duplicate, 22),
        (Reject::LowDifficulty, 23),
        (Reject::Unauthorized, 24),
        (Reject::NotSubscribed, 25),
        (Reject::Invalid(InvalidShare::BadHex { field: "nonce" }), 20),
    ] {
        let line = reject_response(Id::from(5), &reject).to_line();
        let text = std::str::from_utf8(&line).unwrap();
        assert!(text.contains(&format!("\"error\":[{expected},")), "{text}");
        assert!(text.contains("\"result\":null"));
    }
}

#[test]
fn unknown_methods_keep_their_id() {
    let r = request(r#"{"id":77,"method":"mining.get_transactions","params":["1"]}"#);
    assert_eq!(r.id, Id::from(77));
    assert_eq!(r.method, Method::Unknown("mining.get_transactions".into()));
    assert_eq!(r.method.name(), "mining.get_transactions");
}

#[test]
fn malformed_lines_are_typed_errors() {
    assert!(matches!(
        Message::parse(b"{\"id\":1,\"method\":"),
        Err(ProtocolError::InvalidJson(_))
    ));
    assert!(matches!(
        Message::parse(b"not json"),
        Err(ProtocolError::InvalidJson(_))
    ));
    assert!(matches!(
        Message::parse(b"[1,2,3]"),
        Err(ProtocolError::InvalidJson(_))
    ));
    let bad_utf8 = b"{\"id\":1,\"method\":\"mining.subscribe\",\"params\":[\"\xff\xfe\"]}";
    let first_bad = bad_utf8.iter().position(|&b| b == 0xff).unwrap();
    assert!(matches!(
        Message::parse(bad_utf8),
        Err(ProtocolError::InvalidUtf8 { valid_up_to }) if valid_up_to == first_bad
    ));
    assert!(matches!(
        Message::parse(br#"{"id":1,"method":"mining.submit","params":{"worker":"w"}}"#),
        Err(ProtocolError::InvalidParams {
            reason: ParamError::NotAnArray,
            ..
        })
    ));
}

fn mainnet_vector() -> ShareVector {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/testdata/stratum_job_mainnet_block.json"
    );
    ShareVector::load(path)
        .unwrap_or_else(|e| panic!("{e} (../shared must sit beside the project)"))
}

#[test]
fn every_method_round_trips_through_its_line() {
    let vector = mainnet_vector();
    let notify = vector.notify().unwrap();
    let share = vector.share().unwrap();
    let methods = vec![
        Method::Configure(Configure {
            extensions: vec!["version-rolling".into()],
            parameters: serde_json::from_str(r#"{"version-rolling.mask":"1fffe000"}"#).unwrap(),
        }),
        Method::Subscribe(Subscribe {
            user_agent: Some("hashgate/0.1".into()),
            session_id: None,
        }),
        Method::Subscribe(Subscribe {
            user_agent: Some("a".into()),
            session_id: Some("01".into()),
        }),
        Method::Authorize(hashgate::protocol::Authorize {
            worker: "farm.proxy".into(),
            password: Some("x".into()),
        }),
        Method::ExtranonceSubscribe,
        Method::SuggestDifficulty(Difficulty::new(2048.0).unwrap()),
        Method::Submit(hashgate::protocol::Submit {
            worker: "farm.proxy".into(),
            share,
        }),
        Method::SetDifficulty(Difficulty::new(0.0001).unwrap()),
        Method::Notify(notify.clone()),
        Method::SetVersionMask(0x1fffe000),
        Method::SetExtranonce(SetExtranonce {
            extranonce1: Extranonce1::from_hex("9b19f82f0001").unwrap(),
            extranonce2_size: 6,
        }),
        Method::Reconnect(Reconnect {
            host: Some("pool.example".into()),
            port: Some(3333),
            wait_seconds: Some(5),
        }),
        Method::Reconnect(Reconnect::default()),
        Method::ShowMessage("group rack-7 draining for AI window".into()),
    ];
    for (i, method) in methods.into_iter().enumerate() {
        let original = Request {
            id: Id::from(i as u64),
            method,
        };
        let line = original.to_line();
        assert_eq!(line.last(), Some(&b'\n'));
        let parsed = request(std::str::from_utf8(&line[..line.len() - 1]).unwrap());
        assert_eq!(parsed, original, "{}", String::from_utf8_lossy(&line));
    }
    // The broadcast helper writes the same notification.
    let line = notify_line(&notify);
    assert_eq!(
        line,
        Request::notification(Method::Notify(notify)).to_line()
    );
    let text = std::str::from_utf8(&line).unwrap();
    assert!(
        text.contains("\"19213b5f01c49d5227f4f03fd7be57a4b8b5e7060009c3de0000000000000000\""),
        "prevhash kept in wire order"
    );
    assert!(text.contains("\"20000004\",\"170ed0eb\",\"6155a491\",true]"));
}

/// Framing on a real socket: pipelined requests in one segment, `\r\n`, one request dribbled over
/// many segments, then an over-long line ends the stream with a typed error.
#[tokio::test]
async fn framing_over_tcp() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let writer = tokio::spawn(async move {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        stream
            .write_all(b"{\"id\":1,\"method\":\"mining.configure\",\"params\":[[],{}]}\r\n{\"id\":2,\"method\":\"mining.subscribe\",\"params\":[]}\n{\"id\":3,\"method\":\"mining.authorize\",\"params\":[\"w\"]}\n")
            .await
            .unwrap();
        let dribble = b"{\"id\":4,\"method\":\"mining.suggest_difficulty\",\"params\":[0.5]}\r\n";
        for chunk in dribble.chunks(3) {
            stream.write_all(chunk).await.unwrap();
            stream.flush().await.unwrap();
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        stream.write_all(&[b'x'; 300]).await.unwrap();
        stream
    });
    let (socket, _) = listener.accept().await.unwrap();
    let mut lines = FramedRead::new(socket, LineCodec::new(256));
    let mut ids = Vec::new();
    for _ in 0..4 {
        let line: Bytes = tokio::time::timeout(Duration::from_secs(5), lines.next())
            .await
            .expect("line in time")
            .expect("stream open")
            .expect("valid line");
        let Message::Request(request) = Message::parse(&line).unwrap() else {
            panic!()
        };
        ids.push(request.id);
    }
    assert_eq!(
        ids,
        vec![Id::from(1), Id::from(2), Id::from(3), Id::from(4)]
    );
    let end = tokio::time::timeout(Duration::from_secs(5), lines.next())
        .await
        .unwrap();
    assert!(matches!(
        end,
        Some(Err(FrameError::LineTooLong { limit: 256 }))
    ));
    drop(writer.await.unwrap());
}

mod never_panics {
    use hashgate::protocol::{LineCodec, Message};
    use proptest::prelude::*;
    use tokio_util::codec::Decoder;

    const SEEDS: &[&str] = &[
        r#"{"id":4,"method":"mining.submit","params":["w","1","7807000000000000","6155a491","41dad6e3","1fffe000"]}"#,
        r#"{"id":1,"method":"mining.configure","params":[["version-rolling"],{"version-rolling.mask":"1fffe000"}]}"#,
        r#"{"id":null,"method":"mining.notify","params":["1","00","00","00",[],"20000000","1d00ffff","6155a491",true]}"#,
        r#"{"id":2,"result":[[["mining.notify","x"]],"9b19f82f",8],"error":null}"#,
        r#"{"id":null,"method":"mining.set_extranonce","params":["9b19f82f",4]}"#,
        r#"{"id":null,"method":"client.reconnect","params":["h",3333,5]}"#,
    ];

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Arbitrary bytes: a typed error or a message, never a panic.
        #[test]
        fn arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = Message::parse(&bytes);
            let mut codec = LineCodec::new(256);
            let mut buf = bytes::BytesMut::from(&bytes[..]);
            while let Ok(Some(line)) = codec.decode(&mut buf) {
                let _ = Message::parse(&line);
            }
        }

        /// Real lines with bytes flipped, cut or repeated: the cases a fuzzer finds first.
        #[test]
        fn mutated_real_lines(seed in 0..SEEDS.len(), edits in prop::collection::vec((any::<usize>(), any::<u8>()), 0..6), cut in any::<usize>()) {
            let mut line = SEEDS[seed].as_bytes().to_vec();
            for (at, byte) in edits {
                let at = at % line.len();
                line[at] = byte;
            }
            line.truncate(cut % (line.len() + 1));
            let _ = Message::parse(&line);
        }
    }
}

#[test]
fn the_notify_line_is_the_generic_request_line_byte_for_byte() {
    let vector = mainnet_vector();
    let mainnet = vector.notify().unwrap();
    let quoted = Notify {
        job_id: JobId::new(r#"a"b\c"#).unwrap(),
        clean_jobs: false,
        merkle_branch: Vec::new(),
        ..mainnet.clone()
    };
    for notify in [mainnet, quoted] {
        let line = notify_line(&notify);
        let generic = Request {
            id: Id::Null,
            method: Method::Notify(notify.clone()),
        }
        .to_line();
        assert_eq!(line, generic, "{}", String::from_utf8_lossy(&line));
        match Message::parse(&line[..line.len() - 1]).unwrap() {
            Message::Request(Request {
                method: Method::Notify(parsed),
                ..
            }) => assert_eq!(parsed, notify),
            other => panic!("{other:?}"),
        }
    }
}

/// The forwarded share's line, written field by field into a reused buffer, is the generic
/// request line byte for byte: on the mainnet block's real share (with its rolled version
/// bits), without version bits, and with a worker name and job id that need escaping.
#[test]
fn the_submit_line_is_the_generic_request_line_byte_for_byte() {
    let real = mainnet_vector().share().unwrap();
    let plain = Share {
        version_bits: None,
        ..real.clone()
    };
    let quoted = Share {
        job_id: JobId::new(r#"j"1\x"#).unwrap(),
        ..real.clone()
    };
    let mut buffer = Vec::new();
    for (id, worker, share) in [
        (100u64, "farm.proxy", &real),
        (u64::MAX, "farm.proxy", &plain),
        (7, "a\"b\\c\u{1}", &quoted),
    ] {
        buffer.clear();
        write_submit_line(&mut buffer, id, worker, share);
        let generic = Request {
            id: Id::from(id),
            method: Method::Submit(Submit {
                worker: worker.to_owned(),
                share: share.clone(),
            }),
        }
        .to_line();
        assert_eq!(buffer, generic, "{}", String::from_utf8_lossy(&buffer));
    }
    buffer.clear();
    write_submit_line(&mut buffer, 100, "farm.proxy", &real);
    let text = std::str::from_utf8(&buffer).unwrap();
    // The vector's submit fields, in Stratum's hex conventions.
    assert!(text.ends_with("]}\n"), "{text}");
    assert!(text.contains(&format!("\"{:08x}\"", real.nonce)), "{text}");
}

/// The answer to an accepted share is `Response::ok(id, true)` byte for byte, for every kind
/// of id a miner may use.
#[test]
fn the_accepted_line_is_the_generic_response_byte_for_byte() {
    for id in [
        Id::from(4u64),
        Id::from(u64::MAX),
        Id::Null,
        Id::from("sub\"mit-1"),
        Id::Number(serde_json::Number::from(-3)),
        Id::Number(serde_json::Number::from_f64(2.5).unwrap()),
    ] {
        let generic = Response::ok(id.clone(), true.into()).to_line();
        assert_eq!(accepted_line(&id), generic, "{id:?}");
    }
}

/// A job re-sent under a miner's own id (the miner holds it at another difficulty) is spliced
/// from the shared line: byte for byte the line written from scratch, for both clean flags, on
/// the mainnet job and with ids that need escaping; a line of another shape is refused.
#[test]
fn a_renamed_notify_line_is_the_line_written_from_scratch() {
    let mainnet = mainnet_vector().notify().unwrap();
    let quoted = Notify {
        job_id: JobId::new(r#"a"b\c"#).unwrap(),
        ..mainnet.clone()
    };
    for original in [mainnet, quoted] {
        for pool_clean in [true, false] {
            let sent = Notify {
                clean_jobs: pool_clean,
                ..original.clone()
            };
            let shared = notify_line(&sent);
            for (new_id, clean) in [("7f.1", false), ("7f.2", true), ("q\"1", pool_clean)] {
                let new_id = JobId::new(new_id).unwrap();
                let expected = notify_line(&Notify {
                    job_id: new_id.clone(),
                    clean_jobs: clean,
                    ..sent.clone()
                });
                let spliced = notify_line_renamed(&shared, &sent.job_id, &new_id, clean);
                assert_eq!(spliced.as_ref(), Some(&expected));
            }
        }
    }
    let other = JobId::new("not-the-id").unwrap();
    let line = notify_line(&mainnet_vector().notify().unwrap());
    assert_eq!(notify_line_renamed(&line, &other, &other, true), None);
    assert_eq!(notify_line_renamed(b"{}\n", &other, &other, true), None);
}

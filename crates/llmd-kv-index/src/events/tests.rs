use super::*;
use crate::hashing::BlockKey;

const VECTORS: &str = include_str!("../../testdata/vllm-block-hashes.json");

struct Vector {
    version: String,
    label: String,
    payload: Vec<u8>,
    decoded: serde_json::Value,
}

fn vectors() -> Vec<Vector> {
    let v: serde_json::Value = serde_json::from_str(VECTORS).unwrap();
    v["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| Vector {
            version: e["vllm_version"].as_str().unwrap().to_owned(),
            label: e["label"].as_str().unwrap().to_owned(),
            payload: hex::decode(e["payload_hex"].as_str().unwrap()).unwrap(),
            decoded: e["decoded"].clone(),
        })
        .collect()
}

/// The `decoded` JSON of a vector (array or map layout) as our typed event.
fn expected_event(v: &serde_json::Value) -> KvEvent {
    let get = |name: &str, pos: usize| -> serde_json::Value {
        if v.is_object() {
            v.get(name).cloned().unwrap_or(serde_json::Value::Null)
        } else {
            v[pos].clone()
        }
    };
    let u64s = |x: serde_json::Value| -> Vec<u64> {
        x.as_array()
            .unwrap()
            .iter()
            .map(|h| h.as_u64().unwrap())
            .collect()
    };
    let tag = if v.is_object() {
        v["type"].as_str().unwrap().to_owned()
    } else {
        v[0].as_str().unwrap().to_owned()
    };
    assert_eq!(tag, "BlockStored");
    KvEvent::BlockStored(BlockStored {
        block_hashes: u64s(get("block_hashes", 1))
            .into_iter()
            .map(BlockKey)
            .collect(),
        parent_block_hash: get("parent_block_hash", 2).as_u64().map(BlockKey),
        token_ids: u64s(get("token_ids", 3))
            .into_iter()
            .map(|t| t as u32)
            .collect(),
        block_size: get("block_size", 4).as_u64().unwrap() as u32,
        lora_id: get("lora_id", 5).as_i64(),
        medium: get("medium", 6).as_str().map(str::to_owned),
        lora_name: get("lora_name", 7).as_str().map(str::to_owned),
        extra_keys: get("extra_keys", 8).as_array().map(|a| {
            a.iter()
                .map(|x| {
                    if x.is_null() {
                        WireValue::Nil
                    } else {
                        panic!("unexpected extra key")
                    }
                })
                .collect()
        }),
        group_idx: get("group_idx", 9).as_i64(),
        kv_cache_spec_kind: get("kv_cache_spec_kind", 10).as_str().map(str::to_owned),
        kv_cache_spec_sliding_window: get("kv_cache_spec_sliding_window", 11).as_i64(),
    })
}

#[test]
fn vllm_payloads_decode_in_both_layouts() {
    let all = vectors();
    assert_eq!(all.len(), 4);
    for v in &all {
        let batch =
            decode_batch(&v.payload).unwrap_or_else(|e| panic!("{} {}: {e}", v.version, v.label));
        assert_eq!(batch.ts, v.decoded[0].as_f64().unwrap(), "{}", v.label);
        assert_eq!(batch.data_parallel_rank, v.decoded[2].as_i64());
        assert_eq!(
            batch.skipped,
            Skipped::default(),
            "{} {}",
            v.version,
            v.label
        );
        assert_eq!(
            batch.events,
            vec![expected_event(&v.decoded[1][0])],
            "{} {}",
            v.version,
            v.label
        );
    }
    // Both layouts carry the same events.
    let a = decode_batch(&all[0].payload).unwrap();
    let m = decode_batch(&all[2].payload).unwrap();
    let strip = |e: &KvEvent| match e {
        KvEvent::BlockStored(s) => BlockStored {
            kv_cache_spec_kind: None,
            kv_cache_spec_sliding_window: None,
            ..s.clone()
        },
        _ => unreachable!(),
    };
    assert_eq!(strip(&a.events[0]), strip(&m.events[0]));
}

#[test]
fn encoder_reproduces_vllm_bytes() {
    for v in vectors() {
        let batch = decode_batch(&v.payload).unwrap();
        let layout = if v.version.starts_with("0.23") {
            Layout::Array
        } else {
            Layout::Map
        };
        assert_eq!(
            hex::encode(encode_batch(&batch, layout)),
            hex::encode(&v.payload),
            "{} {}",
            v.version,
            v.label
        );
    }
}

#[test]
fn message_frames_round_trip() {
    let batch = EventBatch {
        ts: 1.5,
        events: vec![
            KvEvent::BlockRemoved(BlockRemoved {
                block_hashes: vec![BlockKey(u64::MAX)],
                medium: Some("CPU".into()),
                group_idx: Some(0),
            }),
            KvEvent::AllBlocksCleared,
        ],
        data_parallel_rank: Some(1),
        skipped: Skipped::default(),
    };
    for layout in [Layout::Map, Layout::Array] {
        let frames = encode_message(
            "kv@10.0.0.7:8000@meta-llama/Llama-3.1-8B-Instruct",
            42,
            &batch,
            layout,
        );
        let msg = decode_message(&frames).unwrap();
        assert_eq!(msg.seq, 42);
        assert_eq!(msg.batch, batch);
        assert_eq!(
            parse_topic(&msg.topic),
            Some(("10.0.0.7:8000", "meta-llama/Llama-3.1-8B-Instruct"))
        );
    }
}

#[test]
fn hashes_as_bytes_and_signed_ints_decode_to_the_published_u64() {
    // {"type": "BlockRemoved", "block_hashes": [bin32, -1, bin3], "medium": nil}
    let mut digest = vec![0x74, 0x9f, 0xdc, 0x79];
    digest.extend([0u8; 20]);
    digest.extend(0xf2f5_8c38_5525_a1f5_u64.to_be_bytes());
    assert_eq!(digest.len(), 32);
    let mut p = vec![0x93, 0xcb, 0, 0, 0, 0, 0, 0, 0, 0, 0x91, 0x83];
    p.extend(b"\xa4type\xacBlockRemoved\xacblock_hashes\x93");
    p.extend([0xc4, digest.len() as u8]);
    p.extend(&digest);
    p.extend([0xff, 0xc4, 3, 1, 2, 3]);
    p.extend(b"\xa6medium\xc0\xc0");
    let batch = decode_batch(&p).unwrap();
    let KvEvent::BlockRemoved(r) = &batch.events[0] else {
        panic!()
    };
    assert_eq!(
        r.block_hashes,
        vec![
            BlockKey(0xf2f5_8c38_5525_a1f5),
            BlockKey(u64::MAX),
            BlockKey(0x010203)
        ]
    );
    assert_eq!(batch.data_parallel_rank, None);
}

#[test]
fn unknown_events_and_fields_are_skipped_and_counted() {
    // [ts, [{"type":"BlockStored", ..., "future_field": 1}, ["NewEvent", 1, 2], ["BlockRemoved", [7], "GPU", 0, "extra"]], 0]
    let stored = BlockStored {
        block_hashes: vec![BlockKey(5)],
        token_ids: vec![1, 2],
        block_size: 2,
        ..Default::default()
    };
    let mut p = vec![0x93, 0xcb, 0, 0, 0, 0, 0, 0, 0, 0, 0x93];
    let mut one = encode_batch(
        &EventBatch {
            events: vec![KvEvent::BlockStored(stored.clone())],
            ..Default::default()
        },
        Layout::Map,
    );
    // Take the single event's bytes out of a one-event batch: skip [93 cb..8 91] and the rank.
    let event_bytes = one.drain(11..one.len() - 1).collect::<Vec<u8>>();
    // Add a field: bump the map16 count and append.
    let mut ev = event_bytes.clone();
    ev[2] += 1;
    ev.extend(b"\xacfuture_field\x01");
    p.extend(&ev);
    p.extend(b"\x93\xa8NewEvent\x01\x02");
    p.extend(b"\x95\xacBlockRemoved\x91\x07\xa3GPU\x00\xa5extra");
    p.push(0x00);
    let batch = decode_batch(&p).unwrap();
    assert_eq!(
        batch.skipped,
        Skipped {
            unknown_events: 1,
            unknown_fields: 2,
            malformed_events: 0
        }
    );
    assert_eq!(batch.events.len(), 2);
    assert_eq!(batch.events[0], KvEvent::BlockStored(stored));
}

#[test]
fn a_malformed_event_is_dropped_alone() {
    // Second event has a string where token ids belong; the first and third survive.
    let mut p = vec![0x93, 0xcb, 0, 0, 0, 0, 0, 0, 0, 0, 0x93];
    p.extend(b"\x91\xb0AllBlocksCleared");
    p.extend(b"\x95\xabBlockStored\x91\x01\xc0\xa3abc\x10");
    p.extend(b"\x81\xa4type\xb0AllBlocksCleared");
    p.push(0xc0);
    let batch = decode_batch(&p).unwrap();
    assert_eq!(
        batch.events,
        vec![KvEvent::AllBlocksCleared, KvEvent::AllBlocksCleared]
    );
    assert_eq!(batch.skipped.malformed_events, 1);
    // A map event without "type" and a BlockStored without token_ids are malformed too.
    let mut p = vec![
        0x92, 0x00, 0x92, 0x81, 0xa6, b'm', b'e', b'd', b'i', b'u', b'm', 0xc0,
    ];
    p.extend(b"\x82\xa4type\xabBlockStored\xacblock_hashes\x90");
    p.truncate(p.len());
    let batch = decode_batch(&p).unwrap();
    assert!(batch.events.is_empty());
    assert_eq!(batch.skipped.malformed_events, 2);
}

#[test]
fn broken_envelopes_are_errors() {
    let good = hex::decode(
        "93cb41d954fc40200000919cab426c6f636b53746f72656492cff2f58c385525a1f5cfc82e2a1e69c1d12ac0dc0020cd03e8",
    )
    .unwrap();
    assert_eq!(decode_batch(&good), Err(DecodeError::Truncated(good.len())));
    assert!(matches!(decode_batch(b""), Err(DecodeError::Batch(_))));
    assert!(matches!(
        decode_batch(b"\x91\x00"),
        Err(DecodeError::Batch(_))
    ));
    assert!(matches!(
        decode_batch(b"\x93\xa1x\x90\x00"),
        Err(DecodeError::Batch(_))
    ));
    assert_eq!(
        decode_batch(b"\x93\x00\x90\x00\x00"),
        Err(DecodeError::TrailingBytes(1))
    );
    // A huge declared array length with no bytes behind it.
    assert!(matches!(
        decode_batch(b"\x93\x00\xdd\xff\xff\xff\xff"),
        Err(DecodeError::Truncated(_))
    ));
    assert!(matches!(
        decode_batch(b"\x93\x00\x91\xdd\xff\xff\xff\xff"),
        Err(DecodeError::Truncated(_))
    ));
    assert!(matches!(
        decode_batch(b"\x93\x00\x91\xc1\x00"),
        Err(DecodeError::Batch(_))
    ));

    assert_eq!(
        decode_message(&[b"t".as_slice(), b"x"]).unwrap_err(),
        DecodeError::FrameCount(2)
    );
    assert_eq!(
        decode_message(&[b"t".as_slice(), b"1234567", b"\x93\x00\x90\x00"]).unwrap_err(),
        DecodeError::SeqLength(7)
    );
    assert_eq!(
        decode_message(&[b"\xff".as_slice(), b"12345678", b"\x93\x00\x90\x00"]).unwrap_err(),
        DecodeError::TopicNotUtf8
    );
}

#[test]
fn deep_nesting_does_not_overflow_the_stack() {
    let mut p = vec![0x93, 0x00, 0x91];
    p.extend(std::iter::repeat_n(0x91, 1_000_000));
    p.push(0x00);
    p.push(0x00);
    // One event (a very deep array, malformed as an event), then the rank.
    let batch = decode_batch(&p).unwrap();
    assert_eq!(batch.skipped.malformed_events, 1);
}

#[test]
fn topics() {
    assert_eq!(parse_topic("kv@pod-1@model"), Some(("pod-1", "model")));
    assert_eq!(
        parse_topic("kv@10.0.0.1:8000@meta-llama/Llama-3.1-8B"),
        Some(("10.0.0.1:8000", "meta-llama/Llama-3.1-8B"))
    );
    assert_eq!(parse_topic(""), None);
    assert_eq!(parse_topic("kv@pod"), None);
    assert_eq!(parse_topic("kv@@model"), None);
    assert_eq!(parse_topic("kv@a@b@c"), None);
}

#[test]
fn tiers() {
    assert_eq!(Tier::from_medium(None), Tier::Gpu);
    assert_eq!(Tier::from_medium(Some("GPU")), Tier::Gpu);
    assert_eq!(Tier::from_medium(Some("cpu")), Tier::Cpu);
    assert_eq!(Tier::from_medium(Some("tape")), Tier::Other);
}

#[test]
fn every_decode_error_reason_is_listed_for_zero_registration() {
    for error in [
        DecodeError::FrameCount(1),
        DecodeError::TopicNotUtf8,
        DecodeError::Topic("x".into()),
        DecodeError::SeqLength(1),
        DecodeError::Batch("x"),
        DecodeError::Truncated(1),
        DecodeError::TrailingBytes(1),
    ] {
        assert!(DecodeError::REASONS.contains(&error.reason()), "{error:?}");
    }
}

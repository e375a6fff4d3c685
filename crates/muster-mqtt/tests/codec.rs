//! Behaviour of the muster-mqtt codec: round trips, golden bytes built by hand from the MQTT
//! 3.1.1 specification, two-phase incomplete input, every refusal, topic rules, property bags,
//! and a no-panic sweep over mutated packets.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "tests fail loudly on unexpected input"
)]

use bytes::{Bytes, BytesMut};
use muster_mqtt::topic::{
    encode_property_bag, matches, parse_property_bag, valid_filter, valid_topic_name,
};
use muster_mqtt::{
    ConnAck, Connect, ConnectReturnCode, Error, MAX_REMAINING_LENGTH, Packet, Publish, QoS, SubAck,
    SubAckReturnCode, Subscribe, Unsubscribe, Will, check, decode, encode,
};

const MAX: usize = 1024 * 1024;

fn enc(packet: &Packet) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode(packet, &mut out).unwrap();
    out.to_vec()
}

/// Decodes exactly one packet from `bytes`, which must hold nothing else.
fn dec(bytes: &[u8]) -> Result<Packet, Error> {
    let mut buf = BytesMut::from(bytes);
    let packet = decode(&mut buf, MAX)?.expect("complete packet");
    assert!(buf.is_empty(), "decode left {} bytes", buf.len());
    Ok(packet)
}

fn dps_connect() -> Connect {
    Connect {
        protocol_level: 4,
        client_id: "dev-1".to_owned(),
        clean_session: false,
        keep_alive: 60,
        username: Some(
            "0ne00ABCDEF/registrations/dev-1/api-version=2019-03-31&ClientVersion=x".to_owned(),
        ),
        password: None,
        will: None,
    }
}

fn samples() -> Vec<Packet> {
    vec![
        Packet::Connect(dps_connect()),
        Packet::Connect(Connect {
            protocol_level: 4,
            client_id: String::new(),
            clean_session: true,
            keep_alive: 0,
            username: Some("hub.example/dev-1/?api-version=2021-04-12".to_owned()),
            password: Some(b"SharedAccessSignature sr=x&sig=y".to_vec()),
            will: Some(Will {
                topic: "devices/dev-1/messages/events/".to_owned(),
                payload: Bytes::from_static(b"gone"),
                qos: QoS::AtLeastOnce,
                retain: true,
            }),
        }),
        Packet::Connect(Connect {
            protocol_level: 3,
            client_id: "old".to_owned(),
            clean_session: true,
            keep_alive: 65535,
            username: None,
            password: None,
            will: Some(Will {
                topic: "w".to_owned(),
                payload: Bytes::new(),
                qos: QoS::ExactlyOnce,
                retain: false,
            }),
        }),
        Packet::ConnAck(ConnAck {
            session_present: false,
            code: ConnectReturnCode::Accepted,
        }),
        Packet::ConnAck(ConnAck {
            session_present: true,
            code: ConnectReturnCode::Accepted,
        }),
        Packet::ConnAck(ConnAck {
            session_present: false,
            code: ConnectReturnCode::NotAuthorized,
        }),
        Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: "$dps/registrations/res/202/?$rid=1&retry-after=3".to_owned(),
            packet_id: None,
            payload: Bytes::from_static(br#"{"operationId":"4.abc","status":"assigning"}"#),
        }),
        Packet::Publish(Publish {
            dup: true,
            qos: QoS::AtLeastOnce,
            retain: true,
            topic: "devices/dev-1/messages/events/$.ct=application%2Fjson".to_owned(),
            packet_id: Some(65535),
            payload: Bytes::new(),
        }),
        Packet::Publish(Publish {
            dup: false,
            qos: QoS::ExactlyOnce,
            retain: false,
            topic: "q2".to_owned(),
            packet_id: Some(7),
            payload: Bytes::from(vec![0xAB; 300]),
        }),
        Packet::PubAck(1),
        Packet::Subscribe(Subscribe {
            packet_id: 10,
            filters: vec![
                ("$dps/registrations/res/#".to_owned(), QoS::AtMostOnce),
                (
                    "devices/+/messages/devicebound/#".to_owned(),
                    QoS::AtLeastOnce,
                ),
                ("#".to_owned(), QoS::ExactlyOnce),
            ],
        }),
        Packet::SubAck(SubAck {
            packet_id: 10,
            return_codes: vec![
                SubAckReturnCode::Success(QoS::AtMostOnce),
                SubAckReturnCode::Success(QoS::AtLeastOnce),
                SubAckReturnCode::Failure,
            ],
        }),
        Packet::Unsubscribe(Unsubscribe {
            packet_id: 11,
            filters: vec!["a/b".to_owned(), "+/x".to_owned()],
        }),
        Packet::UnsubAck(11),
        Packet::PingReq,
        Packet::PingResp,
        Packet::Disconnect,
    ]
}

// ---------------------------------------------------------------- round trips and golden bytes

#[test]
fn every_packet_round_trips() {
    for packet in samples() {
        let bytes = enc(&packet);
        assert_eq!(dec(&bytes).unwrap(), packet, "{}", packet.name());
        assert_eq!(check(&bytes, MAX).unwrap(), Some(bytes.len()));
        assert_eq!(bytes[0] >> 4, packet.packet_type());
    }
}

#[test]
fn golden_connect_as_the_python_azure_sdk_sends_it() {
    let username = b"0ne00ABCDEF/registrations/dev-1/api-version=2019-03-31&ClientVersion=x";
    assert_eq!(username.len(), 70);
    let mut golden = vec![
        0x10, // CONNECT, flags 0
        89,   // remaining length: 10 (variable header) + 7 (client id) + 72 (user name)
        0x00, 0x04, b'M', b'Q', b'T', b'T', // protocol name
        0x04, // protocol level 4 (3.1.1)
        0x80, // connect flags: user name; no password, no will, clean session 0
        0x00, 0x3C, // keep alive 60
        0x00, 0x05, b'd', b'e', b'v', b'-', b'1', // client identifier
        0x00, 70, // user name length
    ];
    golden.extend_from_slice(username);
    assert_eq!(golden.len(), 2 + 89);

    let packet = Packet::Connect(dps_connect());
    assert_eq!(enc(&packet), golden);
    assert_eq!(dec(&golden).unwrap(), packet);
}

#[test]
fn golden_small_packets() {
    let cases: Vec<(Packet, &[u8])> = vec![
        (
            Packet::ConnAck(ConnAck {
                session_present: false,
                code: ConnectReturnCode::Accepted,
            }),
            &[0x20, 0x02, 0x00, 0x00],
        ),
        (
            Packet::ConnAck(ConnAck {
                session_present: true,
                code: ConnectReturnCode::BadUserNameOrPassword,
            }),
            &[0x20, 0x02, 0x01, 0x04],
        ),
        (Packet::PubAck(0x1234), &[0x40, 0x02, 0x12, 0x34]),
        (Packet::UnsubAck(1), &[0xB0, 0x02, 0x00, 0x01]),
        (Packet::PingReq, &[0xC0, 0x00]),
        (Packet::PingResp, &[0xD0, 0x00]),
        (Packet::Disconnect, &[0xE0, 0x00]),
        (
            Packet::Subscribe(Subscribe {
                packet_id: 1,
                filters: vec![("a/#".to_owned(), QoS::AtLeastOnce)],
            }),
            &[0x82, 0x08, 0x00, 0x01, 0x00, 0x03, b'a', b'/', b'#', 0x01],
        ),
        (
            Packet::SubAck(SubAck {
                packet_id: 1,
                return_codes: vec![
                    SubAckReturnCode::Success(QoS::AtLeastOnce),
                    SubAckReturnCode::Failure,
                ],
            }),
            &[0x90, 0x04, 0x00, 0x01, 0x01, 0x80],
        ),
        (
            Packet::Unsubscribe(Unsubscribe {
                packet_id: 2,
                filters: vec!["a".to_owned()],
            }),
            &[0xA2, 0x05, 0x00, 0x02, 0x00, 0x01, b'a'],
        ),
        (
            Packet::Publish(Publish {
                dup: true,
                qos: QoS::AtLeastOnce,
                retain: true,
                topic: "t".to_owned(),
                packet_id: Some(5),
                payload: Bytes::from_static(b"hi"),
            }),
            &[0x3B, 0x07, 0x00, 0x01, b't', 0x00, 0x05, b'h', b'i'],
        ),
        (
            Packet::Publish(Publish {
                dup: false,
                qos: QoS::AtMostOnce,
                retain: false,
                topic: "t".to_owned(),
                packet_id: None,
                payload: Bytes::new(),
            }),
            &[0x30, 0x03, 0x00, 0x01, b't'],
        ),
    ];
    for (packet, golden) in cases {
        assert_eq!(enc(&packet), golden, "{}", packet.name());
        assert_eq!(dec(golden).unwrap(), packet, "{}", packet.name());
    }
}

#[test]
fn multi_byte_remaining_length() {
    let packet = Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: "t".to_owned(),
        packet_id: None,
        payload: Bytes::from(vec![7; 200]),
    });
    let bytes = enc(&packet);
    // Remaining length 203 = 75 + 1 * 128: two bytes, low seven bits first.
    assert_eq!(&bytes[..3], &[0x30, 75 | 0x80, 0x01]);
    assert_eq!(dec(&bytes).unwrap(), packet);
    // A non-minimal but valid varint is accepted.
    let mut padded = vec![0xC0, 0x80, 0x80, 0x00];
    padded.extend_from_slice(&[0xD0, 0x00]);
    let mut buf = BytesMut::from(&padded[..]);
    assert_eq!(decode(&mut buf, MAX).unwrap(), Some(Packet::PingReq));
    assert_eq!(decode(&mut buf, MAX).unwrap(), Some(Packet::PingResp));
}

// ---------------------------------------------------------------- two-phase decoding

#[test]
fn incomplete_input_at_every_split_point_waits_then_decodes() {
    for packet in samples() {
        let bytes = enc(&packet);
        for split in 0..bytes.len() {
            let mut buf = BytesMut::from(&bytes[..split]);
            assert_eq!(
                check(&buf, MAX).unwrap(),
                None,
                "{} at {split}",
                packet.name()
            );
            assert_eq!(
                decode(&mut buf, MAX).unwrap(),
                None,
                "{} at {split}",
                packet.name()
            );
            assert_eq!(buf.len(), split, "incomplete input must not be consumed");
            buf.extend_from_slice(&bytes[split..]);
            assert_eq!(decode(&mut buf, MAX).unwrap(), Some(packet.clone()));
            assert!(buf.is_empty());
        }
    }
}

#[test]
fn two_packets_in_one_buffer_decode_one_at_a_time() {
    let first = samples().remove(0);
    let second = Packet::PingReq;
    let mut buf = BytesMut::new();
    encode(&first, &mut buf).unwrap();
    encode(&second, &mut buf).unwrap();
    buf.extend_from_slice(&[0x30]); // the start of a third packet
    assert_eq!(check(&buf, MAX).unwrap(), Some(enc(&first).len()));
    assert_eq!(decode(&mut buf, MAX).unwrap(), Some(first));
    assert_eq!(decode(&mut buf, MAX).unwrap(), Some(second));
    assert_eq!(decode(&mut buf, MAX).unwrap(), None);
    assert_eq!(&buf[..], &[0x30]);
}

#[test]
fn oversize_remaining_length_is_refused_from_the_fixed_header_alone() {
    // PUBLISH announcing 2_097_151 bytes; none of the body is present.
    let header = [0x30, 0xFF, 0xFF, 0x7F];
    let too_large = Error::PacketTooLarge {
        size: 2_097_151 + 4,
        max: 1024,
    };
    assert_eq!(check(&header, 1024), Err(too_large.clone()));
    let mut buf = BytesMut::from(&header[..]);
    assert_eq!(decode(&mut buf, 1024), Err(too_large));
    // The limit counts the whole packet, fixed header included.
    assert_eq!(check(&[0xC0, 0x00], 2).unwrap(), Some(2));
    assert_eq!(
        check(&[0x30, 0x01], 2),
        Err(Error::PacketTooLarge { size: 3, max: 2 })
    );
    // Under the limit and incomplete: wait.
    assert_eq!(check(&header, usize::MAX).unwrap(), None);
}

#[test]
fn malformed_remaining_length() {
    let five = [0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01];
    assert!(matches!(check(&five, usize::MAX), Err(Error::Malformed(_))));
    // The fourth continuation byte is already enough to know.
    assert!(matches!(
        check(&five[..5], usize::MAX),
        Err(Error::Malformed(_))
    ));
    let mut buf = BytesMut::from(&five[..]);
    assert!(matches!(
        decode(&mut buf, usize::MAX),
        Err(Error::Malformed(_))
    ));
    // Three continuation bytes: still incomplete. The largest valid length is accepted.
    assert_eq!(check(&five[..4], usize::MAX).unwrap(), None);
    assert_eq!(
        check(&[0x30, 0xFF, 0xFF, 0xFF, 0x7F], usize::MAX).unwrap(),
        None
    );
    assert_eq!(
        check(&[0x30, 0xFF, 0xFF, 0xFF, 0x7F], 100),
        Err(Error::PacketTooLarge {
            size: MAX_REMAINING_LENGTH + 5,
            max: 100
        })
    );
}

// ---------------------------------------------------------------- refusals

#[test]
fn bad_fixed_header_flags() {
    let cases: &[(&[u8], u8, u8)] = &[
        (&[0x80, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x00], 8, 0), // SUBSCRIBE flags 0
        (&[0xA0, 0x05, 0x00, 0x01, 0x00, 0x01, b'a'], 10, 0),      // UNSUBSCRIBE flags 0
        (&[0xC1, 0x00], 12, 1),                                    // PINGREQ
        (&[0xD8, 0x00], 13, 8),                                    // PINGRESP
        (&[0xE2, 0x00], 14, 2),                                    // DISCONNECT
        (&[0x42, 0x02, 0x00, 0x01], 4, 2),                         // PUBACK
        (&[0x21, 0x02, 0x00, 0x00], 2, 1),                         // CONNACK
        (&[0x91, 0x03, 0x00, 0x01, 0x00], 9, 1),                   // SUBACK
        (&[0xB2, 0x02, 0x00, 0x01], 11, 2),                        // UNSUBACK
    ];
    for &(bytes, packet_type, flags) in cases {
        assert_eq!(
            dec(bytes),
            Err(Error::InvalidFlags { packet_type, flags }),
            "{bytes:02x?}"
        );
    }
    let mut connect = enc(&Packet::Connect(dps_connect()));
    connect[0] = 0x11;
    assert_eq!(
        dec(&connect),
        Err(Error::InvalidFlags {
            packet_type: 1,
            flags: 1
        })
    );
}

#[test]
fn reserved_and_qos2_packet_types() {
    assert!(matches!(
        check(&[0x00, 0x00], MAX),
        Err(Error::Malformed(_))
    ));
    assert!(matches!(
        check(&[0xF0, 0x00], MAX),
        Err(Error::Malformed(_))
    ));
    assert_eq!(
        dec(&[0x50, 0x02, 0x00, 0x01]),
        Err(Error::UnsupportedPacket(5))
    );
    assert_eq!(
        dec(&[0x62, 0x02, 0x00, 0x01]),
        Err(Error::UnsupportedPacket(6))
    );
    assert_eq!(
        dec(&[0x70, 0x02, 0x00, 0x01]),
        Err(Error::UnsupportedPacket(7))
    );
    // An unsupported packet is still consumed whole, so the next one is at the front.
    let mut buf = BytesMut::from(&[0x62, 0x02, 0x00, 0x01, 0xC0, 0x00][..]);
    assert_eq!(decode(&mut buf, MAX), Err(Error::UnsupportedPacket(6)));
    assert_eq!(decode(&mut buf, MAX), Ok(Some(Packet::PingReq)));
    // QoS 2 PUBLISH decodes so the server can decide to close.
    let Packet::Publish(p) = dec(&[0x34, 0x05, 0x00, 0x01, b't', 0x00, 0x09]).unwrap() else {
        panic!("not a PUBLISH");
    };
    assert_eq!((p.qos, p.packet_id), (QoS::ExactlyOnce, Some(9)));
}

#[test]
fn qos_3_is_refused_everywhere() {
    // PUBLISH with both QoS bits.
    assert_eq!(
        dec(&[0x36, 0x05, 0x00, 0x01, b't', 0x00, 0x01]),
        Err(Error::InvalidQoS(3))
    );
    // SUBSCRIBE requesting QoS 3.
    assert_eq!(
        dec(&[0x82, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x03]),
        Err(Error::InvalidQoS(3))
    );
    // SUBSCRIBE with reserved option bits.
    assert!(matches!(
        dec(&[0x82, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x04]),
        Err(Error::Malformed(_))
    ));
    // CONNECT with will QoS 3.
    let mut connect = enc(&Packet::Connect(Connect {
        will: Some(Will {
            topic: "w".to_owned(),
            payload: Bytes::new(),
            qos: QoS::AtMostOnce,
            retain: false,
        }),
        ..dps_connect()
    }));
    assert_eq!(connect[9], 0x84);
    connect[9] = 0x84 | 0x18;
    assert_eq!(dec(&connect), Err(Error::InvalidQoS(3)));
    // SUBACK with an unknown return code.
    assert!(matches!(
        dec(&[0x90, 0x03, 0x00, 0x01, 0x03]),
        Err(Error::Malformed(_))
    ));
}

#[test]
fn packet_id_zero_is_refused() {
    assert_eq!(
        dec(&[0x32, 0x05, 0x00, 0x01, b't', 0x00, 0x00]),
        Err(Error::ZeroPacketId)
    );
    assert_eq!(dec(&[0x40, 0x02, 0x00, 0x00]), Err(Error::ZeroPacketId));
    assert_eq!(
        dec(&[0x82, 0x06, 0x00, 0x00, 0x00, 0x01, b'a', 0x00]),
        Err(Error::ZeroPacketId)
    );
    assert_eq!(
        encode(&Packet::PubAck(0), &mut BytesMut::new()),
        Err(Error::ZeroPacketId)
    );
    let publish = Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: "t".to_owned(),
        packet_id: Some(0),
        payload: Bytes::new(),
    };
    assert_eq!(
        encode(&Packet::Publish(publish), &mut BytesMut::new()),
        Err(Error::ZeroPacketId)
    );
}

#[test]
fn publish_topic_rules() {
    for topic in ["a/+/b", "a/#", "#", "+"] {
        let packet = Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: topic.to_owned(),
            packet_id: None,
            payload: Bytes::new(),
        });
        assert!(matches!(
            encode(&packet, &mut BytesMut::new()),
            Err(Error::InvalidTopic(_))
        ));
        let mut bytes = vec![0x30, 2 + topic.len() as u8, 0x00, topic.len() as u8];
        bytes.extend_from_slice(topic.as_bytes());
        assert!(
            matches!(dec(&bytes), Err(Error::InvalidTopic(_))),
            "{topic}"
        );
    }
    // Empty topic name.
    assert!(matches!(
        dec(&[0x30, 0x02, 0x00, 0x00]),
        Err(Error::InvalidTopic(_))
    ));
    // DUP on QoS 0.
    assert!(matches!(
        dec(&[0x38, 0x03, 0x00, 0x01, b't']),
        Err(Error::Malformed(_))
    ));
    // Invalid UTF-8 and U+0000 in the topic.
    assert_eq!(
        dec(&[0x30, 0x04, 0x00, 0x02, 0xC3, 0x28]),
        Err(Error::InvalidUtf8)
    );
    assert_eq!(
        dec(&[0x30, 0x04, 0x00, 0x02, b'a', 0x00]),
        Err(Error::InvalidUtf8)
    );
    // Invalid filters in SUBSCRIBE / UNSUBSCRIBE.
    assert!(matches!(
        dec(&[0x82, 0x08, 0x00, 0x01, 0x00, 0x03, b'a', b'#', b'b', 0x00]),
        Err(Error::InvalidTopic(_))
    ));
    assert!(matches!(
        dec(&[0xA2, 0x04, 0x00, 0x01, 0x00, 0x00]),
        Err(Error::InvalidTopic(_))
    ));
    // SUBSCRIBE / UNSUBSCRIBE without any filter.
    assert!(matches!(
        dec(&[0x82, 0x02, 0x00, 0x01]),
        Err(Error::Malformed(_))
    ));
    assert!(matches!(
        dec(&[0xA2, 0x02, 0x00, 0x01]),
        Err(Error::Malformed(_))
    ));
}

#[test]
fn connect_validation() {
    let good = enc(&Packet::Connect(dps_connect()));
    // Password flag without user name flag (3.1.1 §3.1.2.9).
    let mut bytes = good.clone();
    bytes[9] = 0x40;
    assert!(matches!(dec(&bytes), Err(Error::Malformed(_))));
    let no_user = Packet::Connect(Connect {
        username: None,
        password: Some(b"pw".to_vec()),
        ..dps_connect()
    });
    assert!(matches!(
        encode(&no_user, &mut BytesMut::new()),
        Err(Error::Malformed(_))
    ));
    // Reserved flag.
    let mut bytes = good.clone();
    bytes[9] |= 0x01;
    assert!(matches!(dec(&bytes), Err(Error::Malformed(_))));
    // Will retain / QoS without the will flag.
    for flag in [0x20, 0x08] {
        let mut bytes = good.clone();
        bytes[9] |= flag;
        assert!(matches!(dec(&bytes), Err(Error::Malformed(_))), "{flag:#x}");
    }
    // Protocol level 3 with name "MQTT": the server answers CONNACK 0x01.
    let mut bytes = good.clone();
    bytes[8] = 3;
    assert_eq!(
        dec(&bytes),
        Err(Error::InvalidProtocol {
            name: "MQTT".to_owned(),
            level: 3
        })
    );
    // Level 5 is not ours either.
    let mut bytes = good.clone();
    bytes[8] = 5;
    assert!(matches!(
        dec(&bytes),
        Err(Error::InvalidProtocol { level: 5, .. })
    ));
    // Wrong protocol name.
    let mut bytes = good.clone();
    bytes[4..8].copy_from_slice(b"HTTP");
    assert!(matches!(dec(&bytes), Err(Error::InvalidProtocol { .. })));
    // U+0000 in the client identifier.
    let mut bytes = good.clone();
    bytes[14] = 0;
    assert_eq!(dec(&bytes), Err(Error::InvalidUtf8));
    // Invalid UTF-8 in the user name.
    let mut bytes = good;
    bytes[21] = 0xFF;
    assert_eq!(dec(&bytes), Err(Error::InvalidUtf8));
}

#[test]
fn truncated_string_inside_a_packet_never_reads_the_next_one() {
    // CONNECT whose client identifier claims 10 bytes but the packet ends after 5, followed by
    // a whole PINGREQ that an unbounded reader would happily read into.
    let mut bytes = vec![
        0x10, 17, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3C, 0x00, 10, b'd', b'e',
        b'v', b'-', b'1',
    ];
    assert_eq!(bytes.len(), 2 + 17);
    bytes.extend_from_slice(&[0xC0, 0x00, 0xC0, 0x00, 0xC0, 0x00]);
    let mut buf = BytesMut::from(&bytes[..]);
    assert_eq!(
        decode(&mut buf, MAX),
        Err(Error::Truncated("client identifier"))
    );
    assert_eq!(decode(&mut buf, MAX), Ok(Some(Packet::PingReq)));

    // A PUBLISH topic length past the end, and a missing packet identifier.
    assert_eq!(
        dec(&[0x30, 0x03, 0x00, 0x05, b't']),
        Err(Error::Truncated("topic name"))
    );
    assert_eq!(
        dec(&[0x32, 0x04, 0x00, 0x01, b't', 0x00]),
        Err(Error::Truncated("packet identifier"))
    );
    // A packet too short for its fixed fields.
    assert!(matches!(dec(&[0x20, 0x01, 0x00]), Err(Error::Truncated(_))));
    assert!(matches!(dec(&[0x40, 0x00]), Err(Error::Truncated(_))));
}

#[test]
fn trailing_bytes_inside_a_packet_are_malformed() {
    assert!(matches!(dec(&[0xC0, 0x01, 0x00]), Err(Error::Malformed(_))));
    assert!(matches!(
        dec(&[0x40, 0x03, 0x00, 0x01, 0x00]),
        Err(Error::Malformed(_))
    ));
    assert!(matches!(
        dec(&[0x20, 0x03, 0x00, 0x00, 0x00]),
        Err(Error::Malformed(_))
    ));
    // SUBSCRIBE with a filter but no QoS byte is truncated, not trailing.
    assert!(matches!(
        dec(&[0x82, 0x05, 0x00, 0x01, 0x00, 0x01, b'a']),
        Err(Error::Truncated(_))
    ));
    let mut connect = enc(&Packet::Connect(dps_connect()));
    connect[1] += 1;
    connect.push(0);
    assert!(matches!(dec(&connect), Err(Error::Malformed(_))));
    // CONNACK reserved flags and unknown return codes.
    assert!(matches!(
        dec(&[0x20, 0x02, 0x02, 0x00]),
        Err(Error::Malformed(_))
    ));
    assert!(matches!(
        dec(&[0x20, 0x02, 0x00, 0x06]),
        Err(Error::Malformed(_))
    ));
}

#[test]
fn encode_limits() {
    let long = "a".repeat(65536);
    let packet = Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: long,
        packet_id: None,
        payload: Bytes::new(),
    });
    let mut out = BytesMut::from(&b"keep"[..]);
    assert_eq!(encode(&packet, &mut out), Err(Error::FieldTooLong(65536)));
    assert_eq!(&out[..], b"keep", "a refused packet writes nothing");
    let longest = Packet::Connect(Connect {
        client_id: "a".repeat(65535),
        ..dps_connect()
    });
    assert_eq!(dec(&enc(&longest)).unwrap(), longest);
    let too_long = Packet::Connect(Connect {
        password: Some(vec![0; 65536]),
        ..dps_connect()
    });
    assert_eq!(
        encode(&too_long, &mut BytesMut::new()),
        Err(Error::FieldTooLong(65536))
    );
    // Remaining length just over the maximum (zeroed allocation: no memory is touched).
    let huge = Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: "t".to_owned(),
        packet_id: None,
        payload: Bytes::from(vec![0u8; MAX_REMAINING_LENGTH - 2]),
    });
    assert_eq!(
        encode(&huge, &mut BytesMut::new()),
        Err(Error::RemainingLengthTooLarge(MAX_REMAINING_LENGTH + 1))
    );
    // Inconsistent packets.
    let mut bad = BytesMut::new();
    for packet in [
        Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: "t".to_owned(),
            packet_id: None,
            payload: Bytes::new(),
        }),
        Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: "t".to_owned(),
            packet_id: Some(1),
            payload: Bytes::new(),
        }),
        Packet::Subscribe(Subscribe {
            packet_id: 1,
            filters: vec![],
        }),
        Packet::SubAck(SubAck {
            packet_id: 1,
            return_codes: vec![],
        }),
        Packet::Unsubscribe(Unsubscribe {
            packet_id: 1,
            filters: vec!["a/#/b".to_owned()],
        }),
        Packet::Connect(Connect {
            protocol_level: 5,
            ..dps_connect()
        }),
    ] {
        assert!(encode(&packet, &mut bad).is_err(), "{packet:?}");
    }
    assert!(bad.is_empty());
}

#[test]
fn error_messages_are_one_line() {
    let errors = [
        Error::Malformed("x"),
        Error::Truncated("client identifier"),
        Error::PacketTooLarge { size: 5, max: 4 },
        Error::RemainingLengthTooLarge(MAX_REMAINING_LENGTH + 1),
        Error::UnsupportedPacket(6),
        Error::InvalidProtocol {
            name: "MQ\nTT".to_owned(),
            level: 9,
        },
        Error::InvalidUtf8,
        Error::InvalidFlags {
            packet_type: 8,
            flags: 0,
        },
        Error::InvalidQoS(3),
        Error::ZeroPacketId,
        Error::InvalidTopic("x"),
        Error::FieldTooLong(70000),
    ];
    for error in errors {
        let message = error.to_string();
        assert!(!message.is_empty() && !message.contains('\n'), "{message}");
    }
    assert_eq!(
        Error::InvalidFlags {
            packet_type: 8,
            flags: 0
        }
        .to_string(),
        "invalid fixed header flags 0b0000 for MQTT packet type 8"
    );
}

// ---------------------------------------------------------------- topics and property bags

#[test]
fn topic_matching_table() {
    let table: &[(&str, &str, bool)] = &[
        (
            "$dps/registrations/res/#",
            "$dps/registrations/res/202/?$rid=1&retry-after=3",
            true,
        ),
        ("$dps/registrations/res/#", "$dps/registrations/res", true),
        (
            "$dps/registrations/res/#",
            "$dps/registrations/PUT/iotdps-register/?$rid=1",
            false,
        ),
        ("#", "$SYS/x", false),
        ("+/x", "$SYS/x", false),
        ("$SYS/#", "$SYS/x", true),
        ("#", "a/b/c", true),
        ("#", "/", true),
        ("sport/tennis/player1/#", "sport/tennis/player1", true),
        (
            "sport/tennis/player1/#",
            "sport/tennis/player1/ranking",
            true,
        ),
        (
            "sport/tennis/player1/#",
            "sport/tennis/player1/score/wimbledon",
            true,
        ),
        ("sport/tennis/player1/#", "sport/tennis/player2", false),
        ("sport/#", "sport", true),
        ("sport/tennis/+", "sport/tennis/player1", true),
        ("sport/tennis/+", "sport/tennis/player1/ranking", false),
        ("sport/+", "sport", false),
        ("sport/+", "sport/", true),
        ("+/+", "/finance", true),
        ("/+", "/finance", true),
        ("+", "/finance", false),
        ("+", "finance", true),
        (
            "devices/+/messages/devicebound/#",
            "devices/d1/messages/devicebound/%24.to=x",
            true,
        ),
        (
            "devices/+/messages/devicebound/#",
            "devices/d1/messages/events/",
            false,
        ),
        ("a/b", "a/b", true),
        ("a/b", "a/b/", false),
        ("a/b", "A/b", false),
        // Invalid filters and topic names match nothing.
        ("a/#/b", "a/x/b", false),
        ("a#", "a#", false),
        ("", "", false),
        ("#", "a/+", false),
    ];
    for &(filter, topic, expected) in table {
        assert_eq!(matches(filter, topic), expected, "{filter:?} vs {topic:?}");
    }
}

#[test]
fn filter_and_topic_name_validity() {
    for good in [
        "#",
        "+",
        "a/+/b",
        "a/#",
        "/",
        "+/+",
        "$dps/registrations/res/#",
        "a//b",
    ] {
        assert!(valid_filter(good), "{good}");
    }
    for bad in ["", "a#", "a/#/b", "#/a", "a+", "a/+b/c", "a/b#", "a\0b"] {
        assert!(!valid_filter(bad), "{bad}");
    }
    assert!(valid_topic_name(
        "$dps/registrations/res/202/?$rid=1&retry-after=3"
    ));
    assert!(valid_topic_name("/"));
    for bad in ["", "a/+", "#", "a\0"] {
        assert!(!valid_topic_name(bad), "{bad}");
    }
}

#[test]
fn property_bag_decoding() {
    let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
        v.iter()
            .map(|&(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    };
    assert_eq!(
        parse_property_bag("a=1&b=x%20y&c"),
        pairs(&[("a", "1"), ("b", "x y"), ("c", "")])
    );
    assert_eq!(
        parse_property_bag("%24.ct=application%2Fjson&%24.ce=utf-8"),
        pairs(&[("$.ct", "application/json"), ("$.ce", "utf-8")])
    );
    assert_eq!(
        parse_property_bag("$rid=1&retry-after=3"),
        pairs(&[("$rid", "1"), ("retry-after", "3")])
    );
    assert_eq!(parse_property_bag("q=a+b"), pairs(&[("q", "a+b")]));
    assert_eq!(parse_property_bag("k=a=b"), pairs(&[("k", "a=b")]));
    assert_eq!(
        parse_property_bag("x=%&y=%4&z=%zz&w=%4a"),
        pairs(&[("x", "%"), ("y", "%4"), ("z", "%zz"), ("w", "J")])
    );
    assert_eq!(parse_property_bag("=v&&k="), pairs(&[("", "v"), ("k", "")]));
    assert_eq!(parse_property_bag(""), pairs(&[]));
    assert_eq!(
        parse_property_bag("u=%C3%A9&bad=%FF"),
        pairs(&[("u", "é"), ("bad", "\u{FFFD}")])
    );
}

#[test]
fn property_bag_encoding() {
    assert_eq!(
        encode_property_bag([("$.ct", "application/json"), ("a b", "x+y&z=1"), ("c", "")]),
        "%24.ct=application%2Fjson&a%20b=x%2By%26z%3D1&c"
    );
    assert_eq!(encode_property_bag([("k-._~", "é")]), "k-._~=%C3%A9");
    assert_eq!(encode_property_bag(Vec::<(String, String)>::new()), "");
    let original = vec![
        ("$.mid".to_owned(), "42".to_owned()),
        ("weird&key=".to_owned(), "100% = 1+1 / ünïcode".to_owned()),
        ("empty".to_owned(), String::new()),
    ];
    assert_eq!(
        parse_property_bag(&encode_property_bag(original.clone())),
        original
    );
}

// ---------------------------------------------------------------- no panics

/// Decodes everything in `bytes` until it is incomplete or refused; whatever decodes must
/// encode again and decode to the same packet.
fn decode_all(bytes: &[u8]) {
    let mut buf = BytesMut::from(bytes);
    loop {
        let before = buf.len();
        match decode(&mut buf, 1024) {
            Ok(Some(packet)) => {
                let again = enc(&packet);
                assert_eq!(dec(&again).unwrap(), packet);
                assert!(buf.len() < before, "a decoded packet must consume bytes");
            }
            Ok(None) => {
                assert_eq!(buf.len(), before);
                return;
            }
            Err(_) => return,
        }
    }
}

#[test]
fn mutated_and_truncated_packets_never_panic() {
    let mut corpus = samples();
    corpus.retain(|p| enc(p).len() <= 1024);
    let masks = [
        0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80, 0x0F, 0xF0, 0xFF,
    ];
    for packet in &corpus {
        let bytes = enc(packet);
        for len in 0..=bytes.len() {
            decode_all(&bytes[..len]);
        }
        for i in 0..bytes.len() {
            for mask in masks {
                let mut mutated = bytes.clone();
                mutated[i] ^= mask;
                decode_all(&mutated);
                for len in [i, i + 1, mutated.len().saturating_sub(1)] {
                    decode_all(&mutated[..len.min(mutated.len())]);
                }
            }
        }
    }
    // Pseudo-random garbage, deterministic.
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    for _ in 0..20_000 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let len = (state % 40) as usize;
        let bytes: Vec<u8> = (0..len)
            .map(|i| (state.rotate_left(i as u32 * 8) & 0xFF) as u8)
            .collect();
        decode_all(&bytes);
        let _ = check(&bytes, 16);
    }
}

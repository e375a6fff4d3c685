//! Any bytes fed to the MQTT decoder, in any chunking, must decode, ask for more, or fail —
//! never panic or read past a packet; whatever decodes must re-encode and decode to itself.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    for _ in 0..64 {
        match muster_mqtt::decode(&mut buf, 4096) {
            Ok(Some(packet)) => {
                let mut out = BytesMut::new();
                if muster_mqtt::encode(&packet, &mut out).is_ok() {
                    let again = muster_mqtt::decode(&mut out, 1 << 20);
                    assert!(matches!(again, Ok(Some(ref p)) if *p == packet), "re-decode differs");
                }
            }
            Ok(None) | Err(_) => break,
        }
    }
});

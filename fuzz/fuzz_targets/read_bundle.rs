//! Any bytes given to `read_bundle` (PEM, DER, PKCS#12 detection and decoding) must produce a
//! value or an error, never a panic or a hang.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = muster_pki::read_bundle(data, None);
    let _ = muster_pki::read_bundle(data, Some("1234"));
});

//! Arbitrary bytes against a real AMQP connection (raw, or after a plain or SASL protocol
//! header): the server must answer, refuse or close — never panic, hang or keep running after
//! its input ends.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use muster_server::fuzzing::Harness;

static HARNESS: OnceLock<Harness> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    HARNESS.get_or_init(Harness::new).run_amqp(data);
});

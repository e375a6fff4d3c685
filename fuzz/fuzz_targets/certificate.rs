//! Any bytes parsed as a DER certificate: parsing, every accessor, and validating the result
//! against itself (signature check, extension rules) must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(cert) = muster_pki::Certificate::from_der(data) {
        let _ = cert.sha1_thumbprint();
        let _ = cert.subject_alt_names();
        let _ = cert.is_self_signed();
        let _ = cert.to_pem();
        let at = time::OffsetDateTime::UNIX_EPOCH + time::Duration::days(20_000);
        let options = muster_pki::ChainOptions { at, usage: muster_pki::Usage::ClientAuth };
        let _ = muster_pki::validate_chain(std::slice::from_ref(&cert), std::slice::from_ref(&cert), options);
    }
});

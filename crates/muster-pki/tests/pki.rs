//! Behaviour of muster-pki against fixture certificates made independently by rcgen.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "a test fails loudly on anything unexpected"
)]

use muster_pki::{
    Algorithm, ChainOptions, Error, Format, Issuer, KeyAlgorithm, PathElement, Profile, Request,
    Usage, decode, pkcs12, read_bundle, read_certificate, read_certificates, read_private_key,
    validate_chain, verify_proof_of_possession,
};
use muster_test_support::{Duration, KeyKind, Kind, OffsetDateTime, Pki, Spec, TestCa, TestCert};

fn cert(t: &TestCert) -> muster_pki::Certificate {
    muster_pki::Certificate::from_der(&t.der).unwrap()
}

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

fn client(at: OffsetDateTime) -> ChainOptions {
    ChainOptions {
        at,
        usage: Usage::ClientAuth,
    }
}

fn validate(
    presented: &[&TestCert],
    anchors: &[&TestCert],
) -> Result<muster_pki::ValidatedPath, Error> {
    let presented: Vec<_> = presented.iter().map(|c| cert(c)).collect();
    let anchors: Vec<_> = anchors.iter().map(|c| cert(c)).collect();
    validate_chain(&presented, &anchors, client(now()))
}

#[test]
fn identity_of_a_leaf() {
    let pki = Pki::new();
    let leaf = cert(&pki.leaf);
    assert_eq!(leaf.common_name(), Some("device-1"));
    assert!(leaf.subject().contains("CN=device-1"), "{}", leaf.subject());
    assert!(
        leaf.issuer().contains("CN=muster test intermediate"),
        "{}",
        leaf.issuer()
    );
    assert_eq!(leaf.key_algorithm(), KeyAlgorithm::EcdsaP256);
    assert!(!leaf.is_ca());
    assert!(leaf.allows_client_auth());
    let sha1 = leaf.sha1_thumbprint();
    let sha256 = leaf.sha256_thumbprint();
    assert_eq!(sha1.len(), 40);
    assert_eq!(sha256.len(), 64);
    assert!(
        sha256
            .chars()
            .all(|c| c.is_ascii_digit() || ('A'..='F').contains(&c))
    );
    assert_ne!(leaf.serial(), cert(&pki.leaf_from_root).serial());
    let inter = cert(&pki.intermediate.cert);
    assert!(inter.is_ca());
    assert_eq!(inter.path_len(), Some(0));
    let root = cert(&pki.root.cert);
    assert!(root.is_self_signed());
    assert!(!inter.is_self_signed());
}

#[test]
fn pem_with_many_blocks_in_any_order() {
    let pki = Pki::new();
    let text = format!(
        "junk before\n{}{}{}",
        pki.intermediate.cert.pem, pki.leaf.key_pem, pki.leaf.pem
    );
    let bundle = read_bundle(text.as_bytes(), None).unwrap();
    assert_eq!(bundle.format, Format::Pem);
    assert_eq!(bundle.certificates.len(), 2);
    assert_eq!(bundle.certificates[1].common_name(), Some("device-1"));
    let key = bundle.key.unwrap();
    key.check_matches(&bundle.certificates[1]).unwrap();
    assert!(matches!(
        key.check_matches(&bundle.certificates[0]),
        Err(Error::KeyMismatch { .. })
    ));
    assert!(
        !format!("{key:?}").contains(&pki.leaf.key_pem[30..60]),
        "Debug must not print key material"
    );
}

#[test]
fn der_certificate_and_der_key() {
    let pki = Pki::new();
    let c = read_certificate(&pki.leaf.der).unwrap();
    assert_eq!(c.common_name(), Some("device-1"));
    let k = read_private_key(&pki.leaf.key_der, None).unwrap();
    k.check_matches(&c).unwrap();
}

#[test]
fn valid_three_level_chain_reports_anchor_and_path() {
    let pki = Pki::new();
    let path = validate(
        &[&pki.leaf, &pki.intermediate.cert],
        &[&pki.wrong_root.cert, &pki.root.cert],
    )
    .unwrap();
    assert_eq!(path.anchor, 1);
    assert_eq!(
        path.path,
        vec![
            PathElement::Presented(0),
            PathElement::Presented(1),
            PathElement::Anchor(1)
        ]
    );
}

#[test]
fn valid_two_level_chain_and_intermediate_as_anchor() {
    let pki = Pki::new();
    let path = validate(&[&pki.leaf_from_root], &[&pki.root.cert]).unwrap();
    assert_eq!(
        path.path,
        vec![PathElement::Presented(0), PathElement::Anchor(0)]
    );
    // An uploaded intermediate can anchor on its own (Azure's signingCertificates).
    let path = validate(&[&pki.leaf], &[&pki.intermediate.cert]).unwrap();
    assert_eq!(path.path.len(), 2);
}

#[test]
fn missing_intermediate_is_unknown_issuer() {
    let pki = Pki::new();
    let err = validate(&[&pki.leaf], &[&pki.root.cert]).unwrap_err();
    assert!(
        matches!(err, Error::UnknownIssuer { ref subject, .. } if subject.contains("device-1")),
        "{err}"
    );
}

#[test]
fn same_names_other_keys_do_not_validate() {
    let pki = Pki::new();
    let err = validate(
        &[&pki.wrong_leaf, &pki.wrong_intermediate.cert],
        &[&pki.root.cert],
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            Error::UnknownIssuer { .. } | Error::BadSignature { .. }
        ),
        "{err}"
    );
}

#[test]
fn tampered_signature_is_bad_signature() {
    let pki = Pki::new();
    let mut der = pki.leaf_from_root.der.clone();
    let last = der.len() - 3;
    der[last] ^= 0x01;
    let tampered = muster_pki::Certificate::from_der(&der).unwrap();
    let err = validate_chain(&[tampered], &[cert(&pki.root.cert)], client(now())).unwrap_err();
    assert!(matches!(err, Error::BadSignature { .. }), "{err}");
}

#[test]
fn expired_and_not_yet_valid_leaves() {
    let pki = Pki::new();
    let err = validate(
        &[&pki.expired_leaf, &pki.intermediate.cert],
        &[&pki.root.cert],
    )
    .unwrap_err();
    assert!(
        matches!(err, Error::Expired { ref subject, .. } if subject.contains("device-expired")),
        "{err}"
    );
    let err = validate(
        &[&pki.not_yet_valid_leaf, &pki.intermediate.cert],
        &[&pki.root.cert],
    )
    .unwrap_err();
    assert!(matches!(err, Error::NotYetValid { .. }), "{err}");
}

#[test]
fn expired_intermediate_is_named() {
    let pki = Pki::new();
    let err = validate(
        &[
            &pki.leaf_under_expired_intermediate,
            &pki.expired_intermediate.cert,
        ],
        &[&pki.root.cert],
    )
    .unwrap_err();
    assert!(
        matches!(err, Error::Expired { ref subject, .. } if subject.contains("expired intermediate")),
        "{err}"
    );
}

#[test]
fn time_is_injected() {
    let pki = Pki::new();
    let presented = [cert(&pki.leaf), cert(&pki.intermediate.cert)];
    let anchors = [cert(&pki.root.cert)];
    validate_chain(&presented, &anchors, client(now())).unwrap();
    let err =
        validate_chain(&presented, &anchors, client(now() + Duration::days(400))).unwrap_err();
    assert!(matches!(err, Error::Expired { .. }), "{err}");
    let err = validate_chain(&presented, &anchors, client(now() - Duration::days(1))).unwrap_err();
    assert!(matches!(err, Error::NotYetValid { .. }), "{err}");
}

#[test]
fn issuer_that_is_not_a_ca() {
    let pki = Pki::new();
    let err = validate(
        &[&pki.leaf_under_not_ca, &pki.not_ca.cert],
        &[&pki.root.cert],
    )
    .unwrap_err();
    assert!(
        matches!(err, Error::NotACa { ref subject } if subject.contains("not a ca")),
        "{err}"
    );
}

#[test]
fn path_length_constraint() {
    let pki = Pki::new();
    let err = validate(
        &[
            &pki.leaf_too_deep,
            &pki.too_deep_intermediate.cert,
            &pki.intermediate.cert,
        ],
        &[&pki.root.cert],
    )
    .unwrap_err();
    assert!(
        matches!(err, Error::PathLenExceeded { path_len: 0, found: 1, ref subject } if subject.contains("intermediate")),
        "{err}"
    );
}

#[test]
fn key_cert_sign_required_when_key_usage_present() {
    let root = TestCa::root("ku root");
    let ca = root.issue_ca(&Spec::new("ku ca", Kind::CaWithoutKeyCertSign));
    let leaf = ca.leaf("device-ku");
    let err = validate(&[&leaf, &ca.cert], &[&root.cert]).unwrap_err();
    assert!(matches!(err, Error::KeyCertSignMissing { .. }), "{err}");
}

#[test]
fn client_auth_required_where_eku_present() {
    let pki = Pki::new();
    let err = validate(
        &[&pki.server_only_leaf, &pki.intermediate.cert],
        &[&pki.root.cert],
    )
    .unwrap_err();
    assert!(matches!(err, Error::ClientAuthMissing { .. }), "{err}");
    let presented = [cert(&pki.server_only_leaf), cert(&pki.intermediate.cert)];
    validate_chain(
        &presented,
        &[cert(&pki.root.cert)],
        ChainOptions {
            at: now(),
            usage: Usage::Any,
        },
    )
    .unwrap();
}

#[test]
fn unknown_critical_extension_refused() {
    let pki = Pki::new();
    let err = validate(
        &[&pki.critical_ext_leaf, &pki.intermediate.cert],
        &[&pki.root.cert],
    )
    .unwrap_err();
    assert!(
        matches!(err, Error::UnsupportedCriticalExtension { ref oid, .. } if oid == "1.3.6.1.4.1.55555.1"),
        "{err}"
    );
}

#[test]
fn every_supported_key_type_validates() {
    for kind in [
        KeyKind::P256,
        KeyKind::P384,
        KeyKind::Rsa2048,
        KeyKind::Ed25519,
    ] {
        let root = TestCa::self_signed(&Spec::new("alg root", Kind::Ca(None)).key(kind));
        let inter = root.issue_ca(&Spec::new("alg inter", Kind::Ca(Some(0))).key(kind));
        let leaf = inter.issue(&Spec::new("alg-device", Kind::Client).key(kind));
        validate(&[&leaf, &inter.cert], &[&root.cert]).unwrap_or_else(|e| panic!("{kind:?}: {e}"));
    }
}

#[test]
fn proof_of_possession() {
    let code = "49C900C30C78D916C46AE9D9C124E9CFFD5FCE124696FAEA";
    let root = TestCa::root("pop root");
    let ca = cert(&root.cert);
    let good = cert(&root.issue(&Spec::new(code, Kind::Client)));
    verify_proof_of_possession(&ca, &good, code, now()).unwrap();
    let err = verify_proof_of_possession(&ca, &good, "0000", now()).unwrap_err();
    assert!(
        matches!(err, Error::VerificationCodeMismatch { .. }),
        "{err}"
    );
    let other = TestCa::root("pop root");
    let forged = cert(&other.issue(&Spec::new(code, Kind::Client)));
    let err = verify_proof_of_possession(&ca, &forged, code, now()).unwrap_err();
    assert!(matches!(err, Error::BadSignature { .. }), "{err}");
    let expired = cert(&root.issue(&Spec::new(code, Kind::Client).expired()));
    let err = verify_proof_of_possession(&ca, &expired, code, now()).unwrap_err();
    assert!(matches!(err, Error::Expired { .. }), "{err}");
}

fn request(cn: &str, profile: Profile, days: i64) -> Request {
    Request {
        common_name: cn.into(),
        organization: None,
        profile,
        not_before: now() - Duration::minutes(1),
        not_after: now() + Duration::days(days),
    }
}

#[test]
fn issued_hierarchy_validates_for_every_algorithm() {
    for (alg, _) in Algorithm::ALL {
        if matches!(alg, Algorithm::Rsa3072 | Algorithm::Rsa4096) {
            continue; // slow key generation; covered by the CLI interop test with RSA 2048
        }
        let root =
            muster_pki::self_signed(&request("r", Profile::Ca { path_len: None }, 3650), alg)
                .unwrap();
        let root = Issuer::new(root.certificate, root.key).unwrap();
        let inter = root
            .issue(&request("i", Profile::Ca { path_len: Some(0) }, 1825), alg)
            .unwrap();
        let inter = Issuer::new(inter.certificate, inter.key).unwrap();
        let leaf = inter
            .issue(&request("dev", Profile::Client, 365), alg)
            .unwrap();
        leaf.key.check_matches(&leaf.certificate).unwrap();
        let path = validate_chain(
            &[leaf.certificate.clone(), inter.certificate().clone()],
            &[root.certificate().clone()],
            client(now()),
        )
        .unwrap_or_else(|e| panic!("{alg}: {e}"));
        assert_eq!(path.path.len(), 3);
        // A verification certificate from the root proves possession.
        let v = root
            .issue(&request("CODE123", Profile::Verification, 1), alg)
            .unwrap();
        verify_proof_of_possession(root.certificate(), &v.certificate, "CODE123", now()).unwrap();
        // Issuer::new refuses a leaf and a foreign key.
        assert!(matches!(
            Issuer::new(leaf.certificate.clone(), leaf.key.clone()),
            Err(Error::NotACa { .. })
        ));
        assert!(matches!(
            Issuer::new(root.certificate().clone(), leaf.key.clone()),
            Err(Error::KeyMismatch { .. })
        ));
    }
}

#[test]
fn server_profile_carries_names() {
    let root = muster_pki::self_signed(
        &request("r", Profile::Ca { path_len: None }, 10),
        Algorithm::EcdsaP256,
    )
    .unwrap();
    let root = Issuer::new(root.certificate, root.key).unwrap();
    let names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    let server = root
        .issue(
            &request("localhost", Profile::Server { names }, 10),
            Algorithm::EcdsaP256,
        )
        .unwrap();
    assert_eq!(
        server.certificate.subject_alt_names(),
        ["DNS:localhost", "IP:127.0.0.1", "IP:::1"]
    );
    assert!(!server.certificate.allows_client_auth());
}

#[test]
fn invalid_requests_are_refused() {
    let err = muster_pki::self_signed(&request("", Profile::Client, 10), Algorithm::EcdsaP256)
        .unwrap_err();
    assert!(matches!(err, Error::Issue(_)));
    let mut r = request("x", Profile::Client, 10);
    r.not_after = r.not_before - Duration::days(1);
    assert!(matches!(
        muster_pki::self_signed(&r, Algorithm::EcdsaP256),
        Err(Error::Issue(_))
    ));
    let err = "dsa-1024".parse::<Algorithm>().unwrap_err();
    assert!(err.to_string().contains("ecdsa-p256"), "{err}");
}

#[test]
fn pkcs12_round_trip_and_wrong_password() {
    let pki = Pki::new();
    let key = read_private_key(pki.leaf.key_pem.as_bytes(), None).unwrap();
    let chain = [cert(&pki.leaf), cert(&pki.intermediate.cert)];
    let pfx = pkcs12::write(&key, &chain, "s3cret-pass", "device-1").unwrap();
    let bundle = read_bundle(&pfx, Some("s3cret-pass")).unwrap();
    assert_eq!(bundle.format, Format::Pkcs12);
    assert_eq!(bundle.certificates.len(), 2);
    assert_eq!(bundle.certificates[0].common_name(), Some("device-1"));
    bundle
        .key
        .unwrap()
        .check_matches(&bundle.certificates[0])
        .unwrap();
    assert_eq!(
        read_bundle(&pfx, Some("wrong")).unwrap_err(),
        Error::WrongPassword
    );
    assert_eq!(
        read_bundle(&pfx, None).unwrap_err(),
        Error::Pkcs12NeedsPassword
    );
    assert!(
        pkcs12::write(&key, &chain, "", "x").is_err(),
        "empty passwords are refused"
    );
    assert!(matches!(
        pkcs12::write(&key, &[cert(&pki.intermediate.cert)], "pw", "x"),
        Err(Error::KeyMismatch { .. })
    ));
}

#[test]
fn bad_inputs_give_specific_errors() {
    let pki = Pki::new();
    // Garbage.
    assert!(matches!(
        read_bundle(b"hello world", None),
        Err(Error::Malformed { .. })
    ));
    assert!(matches!(
        read_bundle(b"", None),
        Err(Error::Malformed { .. })
    ));
    // Truncated PEM.
    let truncated = &pki.leaf.pem[..pki.leaf.pem.len() / 2];
    let err = read_bundle(truncated.as_bytes(), None).unwrap_err();
    assert!(err.to_string().contains("truncated"), "{err}");
    // PEM with a damaged body.
    let damaged = pki.leaf.pem.replacen('M', "#", 3);
    assert!(matches!(
        read_bundle(damaged.as_bytes(), None),
        Err(Error::Malformed { .. })
    ));
    // DER junk and a truncated DER certificate.
    assert!(matches!(
        read_bundle(&[0x30, 0x82, 0x01], None),
        Err(Error::Malformed { .. })
    ));
    let cut = &pki.leaf.der[..pki.leaf.der.len() - 10];
    assert!(matches!(
        read_bundle(cut, None),
        Err(Error::Malformed { .. })
    ));
    // A key where a certificate is expected.
    assert_eq!(
        read_certificates(pki.leaf.key_pem.as_bytes()).unwrap_err(),
        Error::NoCertificate
    );
    // A certificate where a key is expected.
    assert_eq!(
        read_private_key(pki.leaf.pem.as_bytes(), None).unwrap_err(),
        Error::NoPrivateKey
    );
    // A public key only.
    let public = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n-----END PUBLIC KEY-----\n";
    assert!(matches!(
        read_bundle(public.as_bytes(), None),
        Err(Error::NotACertificate { .. })
    ));
}

#[test]
fn no_panic_on_mutated_inputs() {
    let pki = Pki::new();
    let inputs = [
        pki.leaf.der.clone(),
        pki.leaf.pem.clone().into_bytes(),
        pki.root.cert.der,
    ];
    for input in inputs {
        for i in 0..input.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut m = input.clone();
                m[i] ^= flip;
                let _ = read_bundle(&m, Some("pw"));
                let _ = read_bundle(&m[..i], None);
            }
        }
    }
}

#[test]
fn encoded_pem_round_trips() {
    let pki = Pki::new();
    let c = cert(&pki.leaf);
    let again = read_certificate(c.to_pem().as_bytes()).unwrap();
    assert_eq!(again, c);
    let k = read_private_key(pki.leaf.key_pem.as_bytes(), None).unwrap();
    assert_eq!(decode::encode_pem("PRIVATE KEY", k.der()), k.to_pem());
}

//! # muster-test-support
//!
//! Fixtures shared by muster's tests. Nothing here ships in the binary.
//!
//! # Layout
//! - [`TestCa`] / [`TestCert`]: a CA (root or intermediate) that can issue further CAs and
//!   leaves from a [`Spec`], and the certificates it makes (DER, PEM, PKCS#8 key).
//! - [`Pki`]: a ready-made set — root → intermediate → device leaf — plus the broken cases every
//!   validator must refuse: expired, not yet valid, wrong CA (same names, other keys), an issuer
//!   that is not a CA, a path longer than a pathLenConstraint allows, a server-only EKU, an
//!   unknown critical extension.
//!
//! Certificates are made with `rcgen` directly (not with `muster-pki`), so the library is
//! tested against certificates it did not make itself.

use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SerialNumber,
};
pub use time::{Duration, OffsetDateTime};

/// The key type of a fixture certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyKind {
    /// ECDSA P-256 (default; fast).
    #[default]
    P256,
    /// ECDSA P-384.
    P384,
    /// RSA 2048.
    Rsa2048,
    /// Ed25519.
    Ed25519,
}

/// What a fixture certificate is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A CA with an optional pathLenConstraint.
    Ca(Option<u8>),
    /// A CA whose keyUsage lacks keyCertSign.
    CaWithoutKeyCertSign,
    /// A device leaf: EKU clientAuth.
    Client,
    /// A leaf with EKU serverAuth only.
    ServerOnly,
    /// A leaf with basicConstraints cA=false (used to sign another certificate in "not a CA").
    NotCa,
}

/// The description of one fixture certificate.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Subject CN.
    pub common_name: String,
    /// Key type.
    pub key: KeyKind,
    /// What it is.
    pub kind: Kind,
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
    /// Add a critical extension with an OID nobody understands.
    pub unknown_critical_extension: bool,
}

impl Spec {
    /// A spec valid from an hour ago for a year.
    #[must_use]
    pub fn new(common_name: &str, kind: Kind) -> Self {
        let now = OffsetDateTime::now_utc();
        Self {
            common_name: common_name.to_owned(),
            key: KeyKind::default(),
            kind,
            not_before: now - Duration::hours(1),
            not_after: now + Duration::days(365),
            unknown_critical_extension: false,
        }
    }

    /// Use this key type.
    #[must_use]
    pub fn key(mut self, key: KeyKind) -> Self {
        self.key = key;
        self
    }

    /// Valid only between these times.
    #[must_use]
    pub fn validity(mut self, not_before: OffsetDateTime, not_after: OffsetDateTime) -> Self {
        self.not_before = not_before;
        self.not_after = not_after;
        self
    }

    /// Expired a day ago.
    #[must_use]
    pub fn expired(self) -> Self {
        let now = OffsetDateTime::now_utc();
        self.validity(now - Duration::days(30), now - Duration::days(1))
    }

    /// Valid only from tomorrow.
    #[must_use]
    pub fn not_yet_valid(self) -> Self {
        let now = OffsetDateTime::now_utc();
        self.validity(now + Duration::days(1), now + Duration::days(30))
    }

    /// Carry an unknown critical extension.
    #[must_use]
    pub fn with_unknown_critical_extension(mut self) -> Self {
        self.unknown_critical_extension = true;
        self
    }

    fn params(&self) -> CertificateParams {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "muster tests");
        dn.push(DnType::CommonName, self.common_name.as_str());
        params.distinguished_name = dn;
        params.not_before = self.not_before;
        params.not_after = self.not_after;
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(SerialNumber::from_slice(&serial(&self.common_name)));
        match self.kind {
            Kind::Ca(path_len) => {
                params.is_ca = IsCa::Ca(path_len.map_or(
                    BasicConstraints::Unconstrained,
                    BasicConstraints::Constrained,
                ));
                params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            }
            Kind::CaWithoutKeyCertSign => {
                params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
                params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            }
            Kind::Client => {
                params.is_ca = IsCa::ExplicitNoCa;
                params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
                params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            }
            Kind::ServerOnly => {
                params.is_ca = IsCa::ExplicitNoCa;
                params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
                params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            }
            Kind::NotCa => {
                params.is_ca = IsCa::ExplicitNoCa;
                params.key_usages = vec![
                    KeyUsagePurpose::DigitalSignature,
                    KeyUsagePurpose::KeyCertSign,
                ];
            }
        }
        if self.unknown_critical_extension {
            // 1.3.6.1.4.1.55555.1 under a private enterprise arc, content: NULL.
            let mut ext =
                CustomExtension::from_oid_content(&[1, 3, 6, 1, 4, 1, 55555, 1], vec![0x05, 0x00]);
            ext.set_criticality(true);
            params.custom_extensions.push(ext);
        }
        params
    }
}

/// A deterministic-looking but distinct positive serial per CN and call.
fn serial(cn: &str) -> [u8; 16] {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(1);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut out = [0u8; 16];
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in cn.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    out[..8].copy_from_slice(&h.to_be_bytes());
    out[8..].copy_from_slice(&n.to_be_bytes());
    out[0] = (out[0] & 0x7f) | 0x10;
    out
}

fn generate(kind: KeyKind) -> KeyPair {
    let result = match kind {
        KeyKind::P256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256),
        KeyKind::P384 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384),
        KeyKind::Ed25519 => KeyPair::generate_for(&rcgen::PKCS_ED25519),
        KeyKind::Rsa2048 => {
            KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
        }
    };
    #[expect(
        clippy::expect_used,
        reason = "a fixture that cannot make a key cannot test anything"
    )]
    result.expect("key generation")
}

/// A certificate made by a fixture, with its key.
#[derive(Debug, Clone)]
pub struct TestCert {
    /// DER of the certificate.
    pub der: Vec<u8>,
    /// PEM of the certificate.
    pub pem: String,
    /// PKCS#8 DER of the private key.
    pub key_der: Vec<u8>,
    /// PKCS#8 PEM of the private key.
    pub key_pem: String,
}

/// A CA that issues fixture certificates.
#[derive(Debug)]
pub struct TestCa {
    /// The CA's own certificate.
    pub cert: TestCert,
    params: CertificateParams,
    key: KeyPair,
}

impl TestCa {
    /// A self-signed root CA (unconstrained path length).
    #[must_use]
    pub fn root(common_name: &str) -> Self {
        Self::self_signed(&Spec::new(common_name, Kind::Ca(None)))
    }

    /// A self-signed certificate from any spec (a root when the spec is a CA).
    #[must_use]
    pub fn self_signed(spec: &Spec) -> Self {
        let key = generate(spec.key);
        let params = spec.params();
        #[expect(
            clippy::expect_used,
            reason = "fixture specs are valid by construction"
        )]
        let cert = params.self_signed(&key).expect("self-sign");
        Self {
            cert: test_cert(cert.der(), &key),
            params,
            key,
        }
    }

    /// Issue a certificate from `spec`.
    #[must_use]
    pub fn issue(&self, spec: &Spec) -> TestCert {
        self.issue_with_key(spec).0
    }

    /// Issue a CA from `spec` that can issue in turn.
    #[must_use]
    pub fn issue_ca(&self, spec: &Spec) -> TestCa {
        let (cert, params, key) = self.issue_with_key(spec);
        TestCa { cert, params, key }
    }

    /// An intermediate CA with pathLenConstraint 0.
    #[must_use]
    pub fn intermediate(&self, common_name: &str) -> TestCa {
        self.issue_ca(&Spec::new(common_name, Kind::Ca(Some(0))))
    }

    /// A device leaf (EKU clientAuth) for `common_name`.
    #[must_use]
    pub fn leaf(&self, common_name: &str) -> TestCert {
        self.issue(&Spec::new(common_name, Kind::Client))
    }

    fn issue_with_key(&self, spec: &Spec) -> (TestCert, CertificateParams, KeyPair) {
        let key = generate(spec.key);
        let params = spec.params();
        let issuer = rcgen::Issuer::from_params(&self.params, &self.key);
        #[expect(
            clippy::expect_used,
            reason = "fixture specs are valid by construction"
        )]
        let cert = params.signed_by(&key, &issuer).expect("sign");
        (test_cert(cert.der(), &key), params, key)
    }
}

fn test_cert(der: &[u8], key: &KeyPair) -> TestCert {
    TestCert {
        der: der.to_vec(),
        pem: pem_encode("CERTIFICATE", der),
        key_der: key.serialize_der(),
        key_pem: key.serialize_pem(),
    }
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new(label, der.to_vec()),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

/// The standard fixture set.
#[derive(Debug)]
pub struct Pki {
    /// Root CA `muster test root`.
    pub root: TestCa,
    /// Intermediate `muster test intermediate` (pathLen 0) under the root.
    pub intermediate: TestCa,
    /// Device leaf `device-1` under the intermediate.
    pub leaf: TestCert,
    /// Device leaf `device-direct` signed by the root itself.
    pub leaf_from_root: TestCert,
    /// A second root with the *same* names as `root` but other keys.
    pub wrong_root: TestCa,
    /// An intermediate with the same names as `intermediate`, under `wrong_root`.
    pub wrong_intermediate: TestCa,
    /// `device-1` under `wrong_intermediate`: names chain to `root`, signatures do not.
    pub wrong_leaf: TestCert,
    /// Expired device leaf under the intermediate.
    pub expired_leaf: TestCert,
    /// Not-yet-valid device leaf under the intermediate.
    pub not_yet_valid_leaf: TestCert,
    /// An expired intermediate (same names as a CA, distinct) and a leaf under it.
    pub expired_intermediate: TestCa,
    /// Leaf under `expired_intermediate`.
    pub leaf_under_expired_intermediate: TestCert,
    /// A leaf certificate (cA=false) under the root that signed `leaf_under_not_ca`.
    pub not_ca: TestCa,
    /// Leaf signed by `not_ca`.
    pub leaf_under_not_ca: TestCert,
    /// Second-level intermediate under `intermediate` (which has pathLen 0).
    pub too_deep_intermediate: TestCa,
    /// Leaf under `too_deep_intermediate`: its path exceeds the pathLen of `intermediate`.
    pub leaf_too_deep: TestCert,
    /// Leaf with EKU serverAuth only, under the intermediate.
    pub server_only_leaf: TestCert,
    /// Leaf with an unknown critical extension, under the intermediate.
    pub critical_ext_leaf: TestCert,
}

impl Pki {
    /// Mint the whole set (ECDSA P-256; about a millisecond per certificate).
    #[must_use]
    pub fn new() -> Self {
        let root = TestCa::root("muster test root");
        let intermediate = root.intermediate("muster test intermediate");
        let leaf = intermediate.leaf("device-1");
        let leaf_from_root = root.leaf("device-direct");
        let wrong_root = TestCa::root("muster test root");
        let wrong_intermediate = wrong_root.intermediate("muster test intermediate");
        let wrong_leaf = wrong_intermediate.leaf("device-1");
        let expired_leaf = intermediate.issue(&Spec::new("device-expired", Kind::Client).expired());
        let not_yet_valid_leaf =
            intermediate.issue(&Spec::new("device-future", Kind::Client).not_yet_valid());
        let expired_intermediate =
            root.issue_ca(&Spec::new("muster expired intermediate", Kind::Ca(Some(0))).expired());
        let leaf_under_expired_intermediate = expired_intermediate.leaf("device-2");
        let not_ca = root.issue_ca(&Spec::new("muster not a ca", Kind::NotCa));
        let leaf_under_not_ca = not_ca.leaf("device-3");
        let too_deep_intermediate =
            intermediate.issue_ca(&Spec::new("muster too deep", Kind::Ca(None)));
        let leaf_too_deep = too_deep_intermediate.leaf("device-4");
        let server_only_leaf = intermediate.issue(&Spec::new("server-only", Kind::ServerOnly));
        let critical_ext_leaf = intermediate
            .issue(&Spec::new("device-critical", Kind::Client).with_unknown_critical_extension());
        Self {
            root,
            intermediate,
            leaf,
            leaf_from_root,
            wrong_root,
            wrong_intermediate,
            wrong_leaf,
            expired_leaf,
            not_yet_valid_leaf,
            expired_intermediate,
            leaf_under_expired_intermediate,
            not_ca,
            leaf_under_not_ca,
            too_deep_intermediate,
            leaf_too_deep,
            server_only_leaf,
            critical_ext_leaf,
        }
    }
}

impl Default for Pki {
    fn default() -> Self {
        Self::new()
    }
}

/// A root CA and a device certificate made by the `openssl` command line with the profile of
/// the Azure lab's `certGen.sh` (`openssl_root_ca.cnf`: a 4096-bit root, a device leaf with
/// nsCertType and emailProtection), as a user following the lab would make them.
#[derive(Debug)]
pub struct OpensslLabChain {
    /// The root's PEM.
    pub root_pem: String,
    /// The root's private key (PEM).
    pub root_key_pem: String,
    /// The device certificate's file.
    pub device_cert: std::path::PathBuf,
    /// The device key's file.
    pub device_key: std::path::PathBuf,
}

/// The lab profile's extensions, as `openssl_root_ca.cnf` writes them.
const LAB_PROFILE: &str = "[req]\ndistinguished_name=dn\nprompt=no\n[dn]\nCN=x\n[v3_ca]\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid:always,issuer\nbasicConstraints=critical,CA:true\nkeyUsage=critical,digitalSignature,cRLSign,keyCertSign\n[usr_cert]\nbasicConstraints=CA:FALSE\nnsCertType=client,email\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid,issuer\nkeyUsage=critical,nonRepudiation,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth,emailProtection\n";

#[allow(clippy::expect_used, reason = "a test fixture fails loudly")]
fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl on PATH");
    assert!(
        out.status.success(),
        "openssl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Make an [`OpensslLabChain`] in `dir` for the device `common_name`.
///
/// # Panics
/// When `openssl` is missing or fails (a test fixture).
#[must_use]
#[allow(clippy::expect_used, reason = "a test fixture fails loudly")]
pub fn openssl_lab_chain(dir: &std::path::Path, common_name: &str) -> OpensslLabChain {
    std::fs::write(dir.join("lab.cnf"), LAB_PROFILE).expect("write lab.cnf");
    openssl(dir, &["genrsa", "-out", "root.key", "4096"]);
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-x509",
            "-config",
            "lab.cnf",
            "-extensions",
            "v3_ca",
            "-key",
            "root.key",
            "-subj",
            "/CN=Azure IoT Hub CA Cert Test Only",
            "-days",
            "30",
            "-sha256",
            "-out",
            "root.pem",
        ],
    );
    openssl(dir, &["genrsa", "-out", "dev.key", "2048"]);
    let subject = format!("/CN={common_name}");
    openssl(
        dir,
        &[
            "req", "-new", "-config", "lab.cnf", "-key", "dev.key", "-subj", &subject, "-out",
            "dev.csr",
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "dev.csr",
            "-CA",
            "root.pem",
            "-CAkey",
            "root.key",
            "-CAcreateserial",
            "-extfile",
            "lab.cnf",
            "-extensions",
            "usr_cert",
            "-days",
            "30",
            "-sha256",
            "-out",
            "dev.pem",
        ],
    );
    OpensslLabChain {
        root_pem: std::fs::read_to_string(dir.join("root.pem")).expect("root.pem"),
        root_key_pem: std::fs::read_to_string(dir.join("root.key")).expect("root.key"),
        device_cert: dir.join("dev.pem"),
        device_key: dir.join("dev.key"),
    }
}

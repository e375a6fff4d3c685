//! Certificates made by OpenSSL — the classic lab profile of Azure's `certGen.sh` (RSA 4096 root
//! and intermediate with `CA:true`, a device leaf signed by the root with `nsCertType client,
//! email` and EKU `clientAuth, emailProtection`), RSA-PSS signatures, and PKCS#12 archives in
//! OpenSSL 3's default and legacy encodings — must parse and validate in muster-pki.
//!
//! Needs the `openssl` command (installed by `.ci/run`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "a test fails loudly on anything unexpected"
)]

use std::path::Path;
use std::process::Command;

use muster_pki::{
    ChainOptions, Error, Format, KeyAlgorithm, Usage, read_bundle, read_certificate,
    read_private_key, validate_chain,
};
use time::OffsetDateTime;

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("this test needs the `openssl` command on PATH (apt-get install openssl): {e}")
        });
    assert!(
        out.status.success(),
        "openssl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

const LAB_CNF: &str = r"
[ req ]
distinguished_name = dn
prompt = no
[ dn ]
CN = placeholder
[ v3_ca ]
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always,issuer
basicConstraints = critical, CA:true
keyUsage = critical, digitalSignature, cRLSign, keyCertSign
[ v3_intermediate_ca ]
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always,issuer
basicConstraints = critical, CA:true
keyUsage = critical, digitalSignature, cRLSign, keyCertSign
[ usr_cert ]
basicConstraints = CA:FALSE
nsCertType = client, email
nsComment = OpenSSL Generated Client Certificate
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid,issuer
keyUsage = critical, nonRepudiation, digitalSignature, keyEncipherment
extendedKeyUsage = clientAuth, emailProtection
";

fn read(dir: &Path, name: &str) -> Vec<u8> {
    std::fs::read(dir.join(name)).unwrap()
}

#[test]
fn classic_lab_profile_validates() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::write(d.join("lab.cnf"), LAB_CNF).unwrap();
    // Keys encrypted with a password, as certGen.sh does (OpenSSL 3 writes encrypted PKCS#8).
    openssl(
        d,
        &[
            "genrsa",
            "-aes256",
            "-passout",
            "pass:1234",
            "-out",
            "root.key.pem",
            "4096",
        ],
    );
    openssl(
        d,
        &[
            "req",
            "-new",
            "-x509",
            "-config",
            "lab.cnf",
            "-extensions",
            "v3_ca",
            "-key",
            "root.key.pem",
            "-passin",
            "pass:1234",
            "-subj",
            "/CN=Azure IoT Hub CA Cert Test Only",
            "-days",
            "30",
            "-sha256",
            "-out",
            "root.pem",
        ],
    );
    openssl(d, &["genrsa", "-out", "inter.key.pem", "4096"]);
    openssl(
        d,
        &[
            "req",
            "-new",
            "-config",
            "lab.cnf",
            "-key",
            "inter.key.pem",
            "-subj",
            "/CN=Azure IoT Hub Intermediate Cert Test Only",
            "-out",
            "inter.csr",
        ],
    );
    openssl(
        d,
        &[
            "x509",
            "-req",
            "-in",
            "inter.csr",
            "-CA",
            "root.pem",
            "-CAkey",
            "root.key.pem",
            "-passin",
            "pass:1234",
            "-CAcreateserial",
            "-extfile",
            "lab.cnf",
            "-extensions",
            "v3_intermediate_ca",
            "-days",
            "30",
            "-sha256",
            "-out",
            "inter.pem",
        ],
    );
    openssl(d, &["genrsa", "-out", "device.key.pem", "2048"]);
    openssl(
        d,
        &[
            "req",
            "-new",
            "-config",
            "lab.cnf",
            "-key",
            "device.key.pem",
            "-subj",
            "/CN=simulated-device1",
            "-out",
            "device.csr",
        ],
    );
    openssl(
        d,
        &[
            "x509",
            "-req",
            "-in",
            "device.csr",
            "-CA",
            "root.pem",
            "-CAkey",
            "root.key.pem",
            "-passin",
            "pass:1234",
            "-CAcreateserial",
            "-extfile",
            "lab.cnf",
            "-extensions",
            "usr_cert",
            "-days",
            "30",
            "-sha256",
            "-out",
            "device.pem",
        ],
    );

    let root = read_certificate(&read(d, "root.pem")).unwrap();
    let inter = read_certificate(&read(d, "inter.pem")).unwrap();
    let device = read_certificate(&read(d, "device.pem")).unwrap();
    assert_eq!(root.key_algorithm(), KeyAlgorithm::Rsa(4096));
    assert!(root.is_ca() && root.is_self_signed());
    assert!(inter.is_ca());
    assert_eq!(device.common_name(), Some("simulated-device1"));
    assert!(device.allows_client_auth());
    let now = OffsetDateTime::now_utc();
    let opts = ChainOptions {
        at: now,
        usage: Usage::ClientAuth,
    };
    // Leaf signed by the root (the lab's create_device_certificate).
    let path = validate_chain(
        std::slice::from_ref(&device),
        std::slice::from_ref(&root),
        opts,
    )
    .unwrap();
    assert_eq!(path.path.len(), 2);
    // The intermediate chains to the root too.
    validate_chain(
        std::slice::from_ref(&inter),
        std::slice::from_ref(&root),
        ChainOptions {
            at: now,
            usage: Usage::Any,
        },
    )
    .unwrap();
    // ... and 31 days later everything has expired, as the lab warns.
    let later = ChainOptions {
        at: now + time::Duration::days(31),
        usage: Usage::ClientAuth,
    };
    assert!(matches!(
        validate_chain(&[device], &[root], later),
        Err(Error::Expired { .. })
    ));

    // The encrypted root key: refused without a password, opened with it.
    let enc = read(d, "root.key.pem");
    assert_eq!(
        read_private_key(&enc, None).unwrap_err(),
        Error::EncryptedKeyNeedsPassword
    );
    assert_eq!(
        read_private_key(&enc, Some("4321")).unwrap_err(),
        Error::WrongPassword
    );
    let key = read_private_key(&enc, Some("1234")).unwrap();
    key.check_matches(&read_certificate(&read(d, "root.pem")).unwrap())
        .unwrap();

    // PFX as OpenSSL 3 writes it by default (PBES2/AES-256) and in the legacy 3DES encoding.
    openssl(
        d,
        &[
            "pkcs12",
            "-export",
            "-in",
            "device.pem",
            "-inkey",
            "device.key.pem",
            "-certfile",
            "root.pem",
            "-passout",
            "pass:1234",
            "-out",
            "device.pfx",
        ],
    );
    openssl(
        d,
        &[
            "pkcs12",
            "-export",
            "-in",
            "device.pem",
            "-inkey",
            "device.key.pem",
            "-passout",
            "pass:1234",
            "-certpbe",
            "PBE-SHA1-3DES",
            "-keypbe",
            "PBE-SHA1-3DES",
            "-macalg",
            "sha1",
            "-out",
            "device-3des.pfx",
        ],
    );
    for name in ["device.pfx", "device-3des.pfx"] {
        let bundle =
            read_bundle(&read(d, name), Some("1234")).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(bundle.format, Format::Pkcs12);
        assert_eq!(
            bundle.certificates[0].common_name(),
            Some("simulated-device1"),
            "{name}"
        );
        bundle
            .key
            .unwrap()
            .check_matches(&bundle.certificates[0])
            .unwrap();
        assert_eq!(
            read_bundle(&read(d, name), Some("12345")).unwrap_err(),
            Error::WrongPassword,
            "{name}"
        );
    }
}

#[test]
fn rsa_pss_and_ecdsa_p384_from_openssl() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::write(d.join("lab.cnf"), LAB_CNF).unwrap();
    openssl(
        d,
        &[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            "pss-root.key",
        ],
    );
    openssl(
        d,
        &[
            "req",
            "-new",
            "-x509",
            "-config",
            "lab.cnf",
            "-extensions",
            "v3_ca",
            "-key",
            "pss-root.key",
            "-subj",
            "/CN=PSS root",
            "-days",
            "2",
            "-sha384",
            "-sigopt",
            "rsa_padding_mode:pss",
            "-sigopt",
            "rsa_pss_saltlen:digest",
            "-out",
            "pss-root.pem",
        ],
    );
    openssl(
        d,
        &[
            "ecparam",
            "-name",
            "secp384r1",
            "-genkey",
            "-noout",
            "-out",
            "ec.key",
        ],
    );
    openssl(
        d,
        &[
            "req",
            "-new",
            "-config",
            "lab.cnf",
            "-key",
            "ec.key",
            "-subj",
            "/CN=p384-device",
            "-out",
            "ec.csr",
        ],
    );
    openssl(
        d,
        &[
            "x509",
            "-req",
            "-in",
            "ec.csr",
            "-CA",
            "pss-root.pem",
            "-CAkey",
            "pss-root.key",
            "-CAcreateserial",
            "-extfile",
            "lab.cnf",
            "-extensions",
            "usr_cert",
            "-days",
            "2",
            "-sha256",
            "-sigopt",
            "rsa_padding_mode:pss",
            "-sigopt",
            "rsa_pss_saltlen:digest",
            "-out",
            "ec.pem",
        ],
    );
    let root = read_certificate(&read(d, "pss-root.pem")).unwrap();
    let leaf = read_certificate(&read(d, "ec.pem")).unwrap();
    assert_eq!(leaf.key_algorithm(), KeyAlgorithm::EcdsaP384);
    let opts = ChainOptions {
        at: OffsetDateTime::now_utc(),
        usage: Usage::ClientAuth,
    };
    validate_chain(&[leaf], &[root], opts).unwrap();
    // A SEC1 "EC PRIVATE KEY" file is read too.
    let key = read_private_key(&read(d, "ec.key"), None).unwrap();
    key.check_matches(&read_certificate(&read(d, "ec.pem")).unwrap())
        .unwrap();
}

#[test]
fn sha1_signatures_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::write(d.join("lab.cnf"), LAB_CNF).unwrap();
    openssl(d, &["genrsa", "-out", "r.key", "2048"]);
    openssl(
        d,
        &[
            "req",
            "-new",
            "-x509",
            "-config",
            "lab.cnf",
            "-extensions",
            "v3_ca",
            "-key",
            "r.key",
            "-subj",
            "/CN=sha1 root",
            "-days",
            "2",
            "-sha1",
            "-out",
            "r.pem",
        ],
    );
    let root = read_certificate(&read(d, "r.pem")).unwrap();
    let opts = ChainOptions {
        at: OffsetDateTime::now_utc(),
        usage: Usage::Any,
    };
    let err = validate_chain(
        std::slice::from_ref(&root),
        std::slice::from_ref(&root),
        opts,
    )
    .unwrap_err();
    assert!(
        matches!(err, Error::UnsupportedAlgorithm(ref m) if m.contains("SHA-1")),
        "{err}"
    );
}

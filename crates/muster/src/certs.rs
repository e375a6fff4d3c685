//! `muster certs`: the certificate tool (a safe replacement for the lab's `certGen.sh`).
//!
//! File names follow docs/certificates.md: `root-ca.pem`, `root-ca.key.pem`, `intermediate-ca.pem`,
//! `intermediate-ca.key.pem`, `ca-chain.pem`, `verification-code.pem` (+ `.key.pem`),
//! `<id>.pem` (leaf then its chain without the root), `<id>.key.pem`, `<id>.pfx`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use muster_pki::{
    Algorithm, Bundle, Certificate, ChainOptions, Issuer, PathElement, Profile, Request, Usage,
    pkcs12, read_bundle, read_certificates, read_private_key, validate_chain,
};
use serde_json::{Value, json};
use time::{
    Duration, OffsetDateTime, format_description::well_known::Rfc3339, macros::format_description,
};

use crate::cli::{CaChoice, CertsCommand, Output, Purpose};
use crate::files::{FileSet, Sensitivity};

const ROOT: &str = "root-ca";
const INTERMEDIATE: &str = "intermediate-ca";
const CHAIN: &str = "ca-chain.pem";
const VERIFICATION: &str = "verification-code";
/// Certificates are back-dated a little so a device whose clock lags does not refuse them.
const BACKDATE: Duration = Duration::minutes(5);

pub(crate) fn run(cmd: CertsCommand, output: Output) -> Result<()> {
    let now = OffsetDateTime::now_utc();
    match cmd {
        CertsCommand::CreateRootAndIntermediate {
            dir,
            algorithm,
            days,
            intermediate_days,
            subject_prefix,
            force,
        } => create_root_and_intermediate(
            &dir.dir,
            &algorithm,
            days,
            intermediate_days,
            &subject_prefix,
            force,
            now,
            output,
        ),
        CertsCommand::CreateVerificationCert {
            code,
            dir,
            ca,
            force,
        } => create_verification_cert(&dir.dir, &code, ca, force, now, output),
        CertsCommand::CreateDeviceCert {
            id,
            dir,
            ca,
            days,
            algorithm,
            pfx_password_env,
            force,
        } => create_device_cert(
            &dir.dir,
            &id,
            ca,
            days,
            &algorithm,
            pfx_password_env.as_deref(),
            force,
            now,
            output,
        ),
        CertsCommand::Show {
            file,
            trust,
            purpose,
            password_env,
        } => show(
            &file,
            trust.as_deref(),
            purpose,
            password_env.as_deref(),
            now,
            output,
        ),
    }
}

fn parse_algorithm(name: &str) -> Result<Algorithm> {
    name.parse::<Algorithm>().context("--algorithm")
}

fn file(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}

#[expect(
    clippy::too_many_arguments,
    reason = "one parameter per command-line flag"
)]
fn create_root_and_intermediate(
    dir: &Path,
    algorithm: &str,
    days: u32,
    intermediate_days: u32,
    prefix: &str,
    force: bool,
    now: OffsetDateTime,
    output: Output,
) -> Result<()> {
    let algorithm = parse_algorithm(algorithm)?;
    let prefix = prefix.trim();
    if prefix.is_empty() {
        bail!("--subject-prefix must not be empty");
    }
    let not_before = now - BACKDATE;
    let root_until = now + Duration::days(i64::from(days));
    let root = muster_pki::self_signed(
        &Request {
            common_name: format!("{prefix} Root CA"),
            organization: None,
            profile: Profile::Ca { path_len: None },
            not_before,
            not_after: root_until,
        },
        algorithm,
    )?;
    let root = Issuer::new(root.certificate, root.key)?;
    let inter = root.issue(
        &Request {
            common_name: format!("{prefix} Intermediate CA"),
            organization: None,
            profile: Profile::Ca { path_len: Some(0) },
            not_before,
            not_after: (now + Duration::days(i64::from(intermediate_days))).min(root_until),
        },
        algorithm,
    )?;

    let mut files = FileSet::default();
    let root_pem = file(dir, &format!("{ROOT}.pem"));
    let root_key = file(dir, &format!("{ROOT}.key.pem"));
    let inter_pem = file(dir, &format!("{INTERMEDIATE}.pem"));
    let inter_key = file(dir, &format!("{INTERMEDIATE}.key.pem"));
    let chain = file(dir, CHAIN);
    files.add(
        root_pem.clone(),
        root.certificate().to_pem(),
        Sensitivity::Public,
    );
    files.add(root_key.clone(), root.key().to_pem(), Sensitivity::Secret);
    files.add(
        inter_pem.clone(),
        inter.certificate.to_pem(),
        Sensitivity::Public,
    );
    files.add(inter_key.clone(), inter.key.to_pem(), Sensitivity::Secret);
    files.add(
        chain.clone(),
        format!(
            "{}{}",
            inter.certificate.to_pem(),
            root.certificate().to_pem()
        ),
        Sensitivity::Public,
    );
    files.commit(dir, force)?;

    let root_text = root_pem.display();
    let dir_text = dir.display();
    let next = format!(
        "upload {root_text} to the provisioning service as a CA certificate:\n  \
         muster dps certificate create --name root-ca --path {root_text}\n\
         prove possession of its key in one step (the key stays on this machine):\n  \
         muster dps certificate verify --name root-ca --ca-key {dir_text}/root-ca.key.pem\n\
         or in three, as in the Azure portal:\n  \
         muster dps certificate generate-verification-code --name root-ca\n  \
         muster certs create-verification-cert <CODE> --dir {dir_text}\n  \
         muster dps certificate verify --name root-ca --path {dir_text}/verification-code.pem\n\
         then an enrollment group that trusts it:\n  \
         muster dps enrollment-group create --enrollment-id <GROUP> --ca-name root-ca"
    );
    match output {
        Output::Json => print_json(&json!({
            "algorithm": algorithm.name(),
            "rootCa": describe_file(root.certificate(), &root_pem, now),
            "intermediateCa": describe_file(&inter.certificate, &inter_pem, now),
            "files": {
                "rootCa": root_pem, "rootCaKey": root_key,
                "intermediateCa": inter_pem, "intermediateCaKey": inter_key, "caChain": chain,
            },
        })),
        Output::Table => {
            out!(
                "Created a root CA and an intermediate CA ({}) in {}",
                algorithm.name(),
                dir.display()
            );
            print_created("root CA", &root_pem, root.certificate(), now);
            print_created("intermediate CA", &inter_pem, &inter.certificate, now);
            out!("  {:<16} {}", "CA chain", chain.display());
            out!(
                "  {:<16} {}, {} (mode 0600: keep them secret)",
                "private keys",
                root_key.display(),
                inter_key.display()
            );
            out!("\nNext: {next}");
        }
    }
    Ok(())
}

fn create_verification_cert(
    dir: &Path,
    code: &str,
    ca: CaChoice,
    force: bool,
    now: OffsetDateTime,
    output: Output,
) -> Result<()> {
    let code = code.trim();
    if code.is_empty() || code.len() > 64 || !code.chars().all(|c| c.is_ascii_graphic()) {
        bail!("the verification code must be 1 to 64 printable ASCII characters without spaces");
    }
    let (issuer, _) = load_issuer(dir, ca, now)?;
    let algorithm = algorithm_of(issuer.certificate());
    let verification = issuer.issue(
        &Request {
            common_name: code.to_owned(),
            organization: None,
            profile: Profile::Verification,
            not_before: now - BACKDATE,
            // Only needed for the upload; a short life limits what a leaked file proves.
            not_after: (now + Duration::days(7)).min(issuer.certificate().not_after()),
        },
        algorithm,
    )?;
    let cert_path = file(dir, &format!("{VERIFICATION}.pem"));
    let key_path = file(dir, &format!("{VERIFICATION}.key.pem"));
    let mut files = FileSet::default();
    files.add(
        cert_path.clone(),
        verification.certificate.to_pem(),
        Sensitivity::Public,
    );
    files.add(
        key_path.clone(),
        verification.key.to_pem(),
        Sensitivity::Secret,
    );
    files.commit(dir, force)?;
    let next = format!(
        "upload it to complete proof of possession:\n  \
         muster dps certificate verify --name <NAME> --path {}",
        cert_path.display()
    );
    match output {
        Output::Json => print_json(&json!({
            "verificationCertificate": describe_file(&verification.certificate, &cert_path, now),
            "signedBy": issuer.certificate().subject(),
            "files": { "certificate": cert_path, "key": key_path },
        })),
        Output::Table => {
            out!(
                "Created the verification certificate for code {code}, signed by {}",
                issuer.certificate().subject()
            );
            print_created("verification", &cert_path, &verification.certificate, now);
            out!("\nNext: {next}");
        }
    }
    Ok(())
}

#[expect(
    clippy::too_many_arguments,
    reason = "one parameter per command-line flag"
)]
fn create_device_cert(
    dir: &Path,
    id: &str,
    ca: CaChoice,
    days: u32,
    algorithm: &str,
    pfx_password_env: Option<&str>,
    force: bool,
    now: OffsetDateTime,
    output: Output,
) -> Result<()> {
    check_device_id(id)?;
    let algorithm = parse_algorithm(algorithm)?;
    let password = pfx_password_env.map(password_from_env).transpose()?;
    let (issuer, chain) = load_issuer(dir, ca, now)?;
    let wanted_until = now + Duration::days(i64::from(days));
    let not_after = wanted_until.min(issuer.certificate().not_after());
    let device = issuer.issue(
        &Request {
            common_name: id.to_owned(),
            organization: None,
            profile: Profile::Client,
            not_before: now - BACKDATE,
            not_after,
        },
        algorithm,
    )?;
    let mut full_chain = vec![device.certificate.clone()];
    full_chain.extend(chain);
    let cert_path = file(dir, &format!("{id}.pem"));
    let key_path = file(dir, &format!("{id}.key.pem"));
    let pfx_path = file(dir, &format!("{id}.pfx"));
    let mut files = FileSet::default();
    files.add(
        cert_path.clone(),
        full_chain
            .iter()
            .map(Certificate::to_pem)
            .collect::<String>(),
        Sensitivity::Public,
    );
    files.add(key_path.clone(), device.key.to_pem(), Sensitivity::Secret);
    if let Some(password) = &password {
        let pfx = pkcs12::write(&device.key, &full_chain, password, id)?;
        files.add(pfx_path.clone(), pfx, Sensitivity::Secret);
    }
    files.commit(dir, force)?;
    let next = format!(
        "run the device with it (muster info prints the ID scope):\n  muster device simulate --provisioning-host localhost --id-scope <ID_SCOPE> --cert {} --key {} --trust muster-data/tls/ca.pem",
        cert_path.display(),
        key_path.display()
    );
    match output {
        Output::Json => print_json(&json!({
            "deviceCertificate": describe_file(&device.certificate, &cert_path, now),
            "signedBy": issuer.certificate().subject(),
            "files": {
                "certificate": cert_path,
                "key": key_path,
                "pfx": password.as_ref().map(|_| &pfx_path),
            },
        })),
        Output::Table => {
            out!(
                "Created the device certificate for '{id}', signed by {}",
                issuer.certificate().subject()
            );
            if not_after < wanted_until {
                out!("  note: validity shortened to end with the issuing CA's");
            }
            print_created("device", &cert_path, &device.certificate, now);
            out!("  {:<16} {} (mode 0600)", "private key", key_path.display());
            if password.is_some() {
                out!(
                    "  {:<16} {} (mode 0600, password from ${})",
                    "PKCS#12",
                    pfx_path.display(),
                    pfx_password_env.unwrap_or_default()
                );
            }
            out!("\nNext: {next}");
        }
    }
    Ok(())
}

fn show(
    path: &Path,
    trust: Option<&Path>,
    purpose: Purpose,
    password_env: Option<&str>,
    now: OffsetDateTime,
    output: Output,
) -> Result<()> {
    let password = password_env.map(password_from_env).transpose()?;
    let bundle = read_file(path, password.as_deref())?;
    if bundle.certificates.is_empty() {
        bail!("{}: {}", path.display(), muster_pki::Error::NoCertificate);
    }
    let verdict = match trust {
        None => None,
        Some(trust_path) => {
            let bytes = std::fs::read(trust_path)
                .with_context(|| format!("cannot read {}", trust_path.display()))?;
            let anchors =
                read_certificates(&bytes).with_context(|| trust_path.display().to_string())?;
            let usage = match purpose {
                Purpose::Client => Usage::ClientAuth,
                Purpose::Any => Usage::Any,
            };
            Some((
                trust_path,
                validate_chain(
                    &bundle.certificates,
                    &anchors,
                    ChainOptions { at: now, usage },
                )
                .map(|p| {
                    p.path
                        .iter()
                        .map(|e| match *e {
                            PathElement::Presented(i) => bundle.certificates.get(i),
                            PathElement::Anchor(i) => anchors.get(i),
                        })
                        .filter_map(|c| c.map(|c| c.subject().to_owned()))
                        .collect::<Vec<_>>()
                }),
            ))
        }
    };
    match output {
        Output::Json => {
            let chain = verdict.as_ref().map(|(trust, result)| match result {
                Ok(path) => json!({ "valid": true, "trust": trust, "path": path }),
                Err(e) => json!({ "valid": false, "trust": trust, "error": e.to_string() }),
            });
            print_json(&json!({
                "file": path,
                "format": bundle.format.to_string(),
                "hasPrivateKey": bundle.key.is_some(),
                "certificates": bundle.certificates.iter().map(|c| describe(c, now)).collect::<Vec<_>>(),
                "chain": chain,
            }));
        }
        Output::Table => {
            out!(
                "{} ({}, {} certificate{}, {})",
                path.display(),
                bundle.format,
                bundle.certificates.len(),
                if bundle.certificates.len() == 1 {
                    ""
                } else {
                    "s"
                },
                if bundle.key.is_some() {
                    "with private key"
                } else {
                    "no private key"
                }
            );
            for (i, cert) in bundle.certificates.iter().enumerate() {
                out!();
                print_certificate(i + 1, cert, now);
            }
            if let Some((trust, result)) = &verdict {
                out!();
                match result {
                    Ok(path) => out!(
                        "chain: valid against {}\n  {}",
                        trust.display(),
                        path.join("\n  -> ")
                    ),
                    Err(e) => out!("chain: NOT valid against {}: {e}", trust.display()),
                }
            }
        }
    }
    if let Some((trust, Err(e))) = verdict {
        bail!(
            "{}: chain does not validate against {}: {e}",
            path.display(),
            trust.display()
        );
    }
    Ok(())
}

fn read_file(path: &Path, password: Option<&str>) -> Result<Bundle> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    read_bundle(&bytes, password).with_context(|| path.display().to_string())
}

/// Load the CA that signs, plus the chain to append to what it issues (root excluded).
fn load_issuer(
    dir: &Path,
    ca: CaChoice,
    now: OffsetDateTime,
) -> Result<(Issuer, Vec<Certificate>)> {
    let base = match ca {
        CaChoice::Root => ROOT,
        CaChoice::Intermediate => INTERMEDIATE,
    };
    let cert_path = file(dir, &format!("{base}.pem"));
    let key_path = file(dir, &format!("{base}.key.pem"));
    if !cert_path.exists() {
        bail!(
            "{} not found: run `muster certs create-root-and-intermediate --dir {}` first",
            cert_path.display(),
            dir.display()
        );
    }
    let bytes = std::fs::read(&cert_path)
        .with_context(|| format!("cannot read {}", cert_path.display()))?;
    let cert = read_certificates(&bytes)
        .with_context(|| cert_path.display().to_string())?
        .into_iter()
        .next()
        .with_context(|| format!("{}: no certificate", cert_path.display()))?;
    let key_bytes =
        std::fs::read(&key_path).with_context(|| format!("cannot read {}", key_path.display()))?;
    let key = read_private_key(&key_bytes, None).with_context(|| key_path.display().to_string())?;
    if !cert.is_valid_at(now) {
        bail!(
            "{}: the CA is not valid now (valid {} to {})",
            cert_path.display(),
            day(cert.not_before()),
            day(cert.not_after())
        );
    }
    let issuer = Issuer::new(cert.clone(), key)
        .with_context(|| format!("{} with {}", cert_path.display(), key_path.display()))?;
    let chain = match ca {
        CaChoice::Root => Vec::new(),
        CaChoice::Intermediate => vec![cert],
    };
    Ok((issuer, chain))
}

fn algorithm_of(cert: &Certificate) -> Algorithm {
    match cert.key_algorithm() {
        muster_pki::KeyAlgorithm::EcdsaP384 => Algorithm::EcdsaP384,
        muster_pki::KeyAlgorithm::Ed25519 => Algorithm::Ed25519,
        muster_pki::KeyAlgorithm::Rsa(bits) if bits >= 4096 => Algorithm::Rsa4096,
        muster_pki::KeyAlgorithm::Rsa(bits) if bits >= 3072 => Algorithm::Rsa3072,
        muster_pki::KeyAlgorithm::Rsa(_) => Algorithm::Rsa2048,
        _ => Algorithm::EcdsaP256,
    }
}

/// A registration id as DPS accepts it ([`muster_types::RegistrationId`]) that a certificate's
/// CN and a file name can hold: at most 64 characters (the X.509 limit of a CN), not starting
/// with `.`.
fn check_device_id(id: &str) -> Result<()> {
    if let Err(e) = muster_types::RegistrationId::new(id) {
        bail!("invalid device id: {e}");
    }
    if id.len() > 64 || id.starts_with('.') {
        bail!(
            "invalid device id '{id}': a certificate's CN holds at most 64 characters and a file name may not start with '.'"
        );
    }
    Ok(())
}

fn password_from_env(var: &str) -> Result<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Ok(v),
        Ok(_) => bail!("environment variable {var} is empty; it must hold the password"),
        Err(_) => bail!("environment variable {var} is not set; it must hold the password"),
    }
}

pub(crate) fn day(t: OffsetDateTime) -> String {
    t.format(format_description!(
        "[year]-[month]-[day] [hour]:[minute] UTC"
    ))
    .unwrap_or_else(|_| t.to_string())
}

/// Whole days until expiry, rounded to the nearest day (a certificate made "for 30 days" a
/// second ago shows 30, not 29).
fn days_left(cert: &Certificate, now: OffsetDateTime) -> i64 {
    let seconds = (cert.not_after() - now).whole_seconds();
    (seconds + 43_200).div_euclid(86_400)
}

fn expiry_text(cert: &Certificate, now: OffsetDateTime) -> String {
    let left = days_left(cert, now);
    if now > cert.not_after() {
        format!("EXPIRED {} days ago", -left)
    } else if now < cert.not_before() {
        format!("NOT YET VALID (from {})", day(cert.not_before()))
    } else {
        format!("{left} days left")
    }
}

fn print_created(label: &str, path: &Path, cert: &Certificate, now: OffsetDateTime) {
    out!("  {label:<16} {}  {}", path.display(), cert.subject());
    out!(
        "  {:<16} expires {} ({})",
        "",
        day(cert.not_after()),
        expiry_text(cert, now)
    );
    out!("  {:<16} SHA-1   {}", "", cert.sha1_thumbprint());
    out!("  {:<16} SHA-256 {}", "", cert.sha256_thumbprint());
}

fn print_certificate(n: usize, cert: &Certificate, now: OffsetDateTime) {
    let kind = if cert.is_ca() {
        match cert.path_len() {
            Some(p) => format!(
                "CA (pathLen {p}){}",
                if cert.is_self_signed() {
                    ", self-signed root"
                } else {
                    ""
                }
            ),
            None => format!(
                "CA{}",
                if cert.is_self_signed() {
                    ", self-signed root"
                } else {
                    ""
                }
            ),
        }
    } else {
        format!(
            "leaf{}",
            if cert.allows_client_auth() {
                " (client authentication allowed)"
            } else {
                " (not for client authentication)"
            }
        )
    };
    out!("[{n}] {}", cert.subject());
    out!("    {:<10} {}", "issuer", cert.issuer());
    out!("    {:<10} {kind}", "kind");
    out!("    {:<10} {}", "key", cert.key_algorithm());
    out!("    {:<10} {}", "serial", cert.serial());
    out!(
        "    {:<10} {} to {} ({})",
        "valid",
        day(cert.not_before()),
        day(cert.not_after()),
        expiry_text(cert, now)
    );
    out!("    {:<10} {}", "SHA-1", cert.sha1_thumbprint());
    out!("    {:<10} {}", "SHA-256", cert.sha256_thumbprint());
    if !cert.subject_alt_names().is_empty() {
        out!("    {:<10} {}", "SANs", cert.subject_alt_names().join(", "));
    }
}

fn describe(cert: &Certificate, now: OffsetDateTime) -> Value {
    json!({
        "subject": cert.subject(),
        "issuer": cert.issuer(),
        "commonName": cert.common_name(),
        "serialNumber": cert.serial(),
        "notBefore": cert.not_before().format(&Rfc3339).ok(),
        "notAfter": cert.not_after().format(&Rfc3339).ok(),
        "daysLeft": days_left(cert, now),
        "validNow": cert.is_valid_at(now),
        "sha1Thumbprint": cert.sha1_thumbprint(),
        "sha256Thumbprint": cert.sha256_thumbprint(),
        "isCa": cert.is_ca(),
        "pathLength": cert.path_len(),
        "selfSigned": cert.is_self_signed(),
        "keyAlgorithm": cert.key_algorithm().to_string(),
        "subjectAltNames": cert.subject_alt_names(),
    })
}

fn describe_file(cert: &Certificate, path: &Path, now: OffsetDateTime) -> Value {
    let mut v = describe(cert, now);
    if let Some(o) = v.as_object_mut() {
        o.insert("path".into(), json!(path));
    }
    v
}

fn print_json(v: &Value) {
    out!(
        "{}",
        serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
    );
}

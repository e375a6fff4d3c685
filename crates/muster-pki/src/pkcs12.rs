//! PKCS#12 (PFX) archives: reading what OpenSSL, Windows and Java write, and writing archives
//! with PBES2/AES-256-CBC and HMAC-SHA256 that OpenSSL 3, .NET and Node open.

use p12_keystore::error::Error as P12Error;
use p12_keystore::{KeyStore, KeyStoreEntry, Pkcs12Archive, PrivateKeyChain};

use crate::cert::Certificate;
use crate::decode::{Bundle, Format, KeyEncoding, PrivateKey};
use crate::error::{Error, Result};

/// Write `key` and `chain` (leaf first) into a password-protected PKCS#12 archive.
///
/// `friendly_name` becomes the entry's alias (Windows shows it; the lab's device uses the
/// registration id).
///
/// # Errors
/// [`Error::UnsupportedAlgorithm`] when the key is not PKCS#8 (keys muster generates always are),
/// [`Error::Malformed`] when an empty password is given or encoding fails.
pub fn write(
    key: &PrivateKey,
    chain: &[Certificate],
    password: &str,
    friendly_name: &str,
) -> Result<Vec<u8>> {
    if key.encoding() != KeyEncoding::Pkcs8 {
        return Err(Error::UnsupportedAlgorithm(
            "PKCS#12 export needs a PKCS#8 private key".into(),
        ));
    }
    if password.is_empty() {
        return Err(Error::malformed(
            "PKCS#12",
            "refusing to write an archive with an empty password",
        ));
    }
    let leaf = chain.first().ok_or(Error::NoCertificate)?;
    key.check_matches(leaf)?;
    let p12_key = p12_keystore::PrivateKey::from_der(key.der())
        .map_err(|e| Error::malformed("private key", e))?;
    let certs = chain
        .iter()
        .map(|c| {
            p12_keystore::Certificate::from_der(c.der())
                .map_err(|e| Error::malformed("certificate", e))
        })
        .collect::<Result<Vec<_>>>()?;
    // The SHA-1 of the leaf is the conventional localKeyId that ties key and certificate.
    let local_key_id = leaf.sha1_digest().to_vec();
    let mut store = KeyStore::new();
    store.add_entry(
        friendly_name,
        KeyStoreEntry::PrivateKeyChain(PrivateKeyChain::new(local_key_id, p12_key, certs)),
    );
    store
        .writer(password)
        .write()
        .map_err(|e| Error::malformed("PKCS#12", format!("cannot encode ({e})")))
}

/// Open a PKCS#12 archive.
///
/// # Errors
/// [`Error::WrongPassword`] when the MAC or decryption fails, [`Error::Malformed`] otherwise.
pub fn read(bytes: &[u8], password: &str) -> Result<Bundle> {
    let archive = Pkcs12Archive::from_pkcs12(bytes, password).map_err(|e| match e {
        P12Error::MacError(_) | P12Error::UnpadError => Error::WrongPassword,
        P12Error::Pkcs5Error(_) => Error::WrongPassword,
        other => Error::malformed("PKCS#12", other),
    })?;
    if archive.keys.len() > 1 {
        return Err(Error::malformed(
            "PKCS#12",
            "more than one private key in the archive",
        ));
    }
    let key_bag = archive.keys.into_iter().next();
    let key_id = key_bag
        .as_ref()
        .and_then(|k| k.local_key_id.as_ref().map(|id| id.as_ref().to_vec()));
    let mut certificates = Vec::with_capacity(archive.certs.len());
    let mut leaf_index = None;
    for bag in &archive.certs {
        let cert = Certificate::from_der(bag.cert.as_der())?;
        if leaf_index.is_none()
            && key_id.is_some()
            && bag.local_key_id.as_deref() == key_id.as_deref()
        {
            leaf_index = Some(certificates.len());
        }
        certificates.push(cert);
    }
    if let Some(i) = leaf_index {
        let leaf = certificates.remove(i);
        certificates.insert(0, leaf);
    }
    Ok(Bundle {
        certificates,
        key: key_bag.map(|k| PrivateKey::from_der(k.key.as_der().to_vec(), KeyEncoding::Pkcs8)),
        format: Format::Pkcs12,
    })
}

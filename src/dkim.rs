//! DKIM signing with mail-auth (relaxed/relaxed), the last step before a message leaves:
//! over the original's final headers and body, and over each re-injected copy's bytes.
//! Keys are read when the configuration is (start and SIGHUP); a weak or unreadable key
//! is a configuration error.

use mail_auth::common::crypto::{Algorithm, DkimKey, Ed25519Key, RsaKey, Sha256, SigningKey};
use mail_auth::common::headers::{HeaderWriter as _, Writable};
use mail_auth::dkim::{Canonicalization, DkimSigner};
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject as _;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

/// Smallest RSA key accepted (RFC 8301 requires 1024; 2048 is today's floor).
pub const MIN_RSA_BITS: usize = 2048;

/// Signed when present (the default of `[[dkim_key]] headers`). `From`, `To`, `Subject`,
/// `Reply-To` are also oversigned (listed once more than they occur), so none can be added later.
const OVERSIGNED: &[&str] = &["From", "To", "Subject", "Reply-To"];
const SIGNED: &[&str] = &[
    "Cc",
    "Date",
    "Message-ID",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "In-Reply-To",
    "References",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
    "List-Id",
];
/// Never signed, even when a key's `headers` names them: they change in transit or are
/// ours alone.
const NEVER: &[&str] = &[
    "Received",
    "Return-Path",
    "Bcc",
    "X-MSYS-Reinjected",
    "X-MSYS-Route",
    "X-MSYS-Sandbox",
    "DKIM-Signature",
];

/// A key ready to sign.
pub struct LoadedKey {
    pub name: String,
    pub domain: String,
    pub selector: String,
    /// The key's own list of header names (instead of the default set).
    pub headers: Option<Vec<String>>,
    key: DkimKey,
    pub algorithm: &'static str,
    /// The DNS TXT record to publish at `<selector>._domainkey.<domain>`.
    pub txt: String,
}

impl std::fmt::Debug for LoadedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "LoadedKey({} {}._domainkey.{} {})",
            self.name, self.selector, self.domain, self.algorithm
        )
    }
}

/// The configured keys by name.
#[derive(Clone, Default)]
pub struct Keys(pub Arc<HashMap<String, LoadedKey>>);

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0.values()).finish()
    }
}

// Keys are loaded from the same configuration: two configurations that name the same
// files compare equal.
impl PartialEq for Keys {
    fn eq(&self, other: &Self) -> bool {
        let mut a: Vec<_> = self.0.keys().collect();
        let mut b: Vec<_> = other.0.keys().collect();
        a.sort();
        b.sort();
        a == b
    }
}
impl Eq for Keys {}

/// Why a key cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} holds no PEM private key (PKCS#1 RSA or PKCS#8 RSA/Ed25519)")]
    NotPem { path: String },
    #[error("{path}: {detail}")]
    Invalid { path: String, detail: String },
    #[error("{path}: RSA key of {bits} bits is too weak: use {MIN_RSA_BITS} or more (or Ed25519)")]
    Weak { path: String, bits: usize },
}

/// A key read from its file: the key, its algorithm and its DNS TXT record.
pub struct ReadKey {
    pub key: DkimKey,
    pub algorithm: &'static str,
    pub txt: String,
}

/// Read a PEM private key: RSA (PKCS#1 or PKCS#8, at least 2048 bits) or Ed25519.
pub fn read_key(path: &Path) -> Result<ReadKey, KeyError> {
    let shown = path.display().to_string();
    let pem = std::fs::read(path).map_err(|source| KeyError::Read {
        path: shown.clone(),
        source,
    })?;
    let der = PrivateKeyDer::from_pem_slice(&pem).map_err(|_| KeyError::NotPem {
        path: shown.clone(),
    })?;
    let invalid = |detail: String| KeyError::Invalid {
        path: shown.clone(),
        detail,
    };
    if let PrivateKeyDer::Pkcs8(p8) = &der
        && let Ok(key) = Ed25519Key::from_pkcs8_der(p8.secret_pkcs8_der())
    {
        let txt = txt("ed25519", &key.public_key());
        return Ok(ReadKey {
            key: DkimKey::Ed25519(key),
            algorithm: "ed25519",
            txt,
        });
    }
    let rsa_key = rsa_key(&der).map_err(invalid)?;
    let bits = {
        use rsa::traits::PublicKeyParts as _;
        rsa_key.n().bits()
    };
    if bits < MIN_RSA_BITS {
        return Err(KeyError::Weak { path: shown, bits });
    }
    // DKIM publishes RSA keys as SubjectPublicKeyInfo (what `openssl rsa -pubout` writes).
    let spki = {
        use rsa::pkcs8::EncodePublicKey as _;
        rsa::RsaPublicKey::from(&rsa_key)
            .to_public_key_der()
            .map_err(|e| invalid(e.to_string()))?
    };
    let key = RsaKey::<Sha256>::from_key_der(der).map_err(|e| invalid(e.to_string()))?;
    Ok(ReadKey {
        key: DkimKey::Rsa(key),
        algorithm: "rsa",
        txt: txt("rsa", spki.as_bytes()),
    })
}

fn txt(k: &str, public: &[u8]) -> String {
    use base64::Engine as _;
    format!(
        "v=DKIM1; k={k}; p={}",
        base64::engine::general_purpose::STANDARD.encode(public)
    )
}

fn rsa_key(der: &PrivateKeyDer<'_>) -> Result<rsa::RsaPrivateKey, String> {
    use rsa::pkcs1::DecodeRsaPrivateKey as _;
    use rsa::pkcs8::DecodePrivateKey as _;
    match der {
        PrivateKeyDer::Pkcs1(k) => rsa::RsaPrivateKey::from_pkcs1_der(k.secret_pkcs1_der()),
        PrivateKeyDer::Pkcs8(k) => rsa::RsaPrivateKey::from_pkcs8_der(k.secret_pkcs8_der())
            .map_err(rsa::pkcs1::Error::Pkcs8),
        _ => return Err("not an RSA or Ed25519 key".into()),
    }
    .map_err(|e| format!("not a usable RSA key: {e}"))
}

impl Keys {
    pub fn new(keys: Vec<LoadedKey>) -> Keys {
        Keys(Arc::new(
            keys.into_iter().map(|k| (k.name.clone(), k)).collect(),
        ))
    }

    pub fn get(&self, name: &str) -> Option<&LoadedKey> {
        self.0.get(name)
    }
}

impl LoadedKey {
    pub fn new(
        name: &str,
        domain: &str,
        selector: &str,
        headers: Option<Vec<String>>,
        key: ReadKey,
    ) -> LoadedKey {
        LoadedKey {
            name: name.to_owned(),
            domain: domain.to_owned(),
            selector: selector.to_owned(),
            headers,
            key: key.key,
            algorithm: key.algorithm,
            txt: key.txt,
        }
    }

    /// The `h=` list for a message with these header names: each present name of the
    /// set once (mail-auth signs every instance), the oversigned ones once more.
    pub fn header_list<'a>(&self, present: impl Iterator<Item = &'a str> + Clone) -> Vec<String> {
        let has = |name: &str| present.clone().any(|p| p.eq_ignore_ascii_case(name));
        let never = |name: &str| NEVER.iter().any(|n| n.eq_ignore_ascii_case(name));
        let mut out = Vec::new();
        match &self.headers {
            Some(names) => {
                for name in names.iter().filter(|n| !never(n)) {
                    out.push(name.clone());
                }
            }
            None => {
                for name in OVERSIGNED {
                    if has(name) {
                        out.push((*name).to_owned());
                    }
                    out.push((*name).to_owned());
                }
                for name in SIGNED.iter().filter(|n| has(n)) {
                    out.push((*name).to_owned());
                }
            }
        }
        out
    }

    /// Sign `message` (headers and body as they will leave); the `DKIM-Signature`
    /// header's value, unfolded.
    pub fn sign(&self, message: &[u8]) -> Result<String, String> {
        let names = header_names(message);
        let signer = DkimSigner::from_key(Borrowed(&self.key))
            .domain(self.domain.clone())
            .selector(self.selector.clone())
            .headers(self.header_list(names.iter().map(String::as_str)))
            .header_canonicalization(Canonicalization::Relaxed)
            .body_canonicalization(Canonicalization::Relaxed);
        let signature = signer.sign(message).map_err(|e| e.to_string())?;
        let header = signature.to_header();
        let value = header
            .split_once(':')
            .map_or(header.as_str(), |(_, v)| v)
            .replace("\r\n", "");
        Ok(value.trim().to_owned())
    }
}

/// A new private key as PEM: RSA-2048 (PKCS#8) or Ed25519 (PKCS#8).
pub fn generate_pem(ed25519: bool) -> Result<String, String> {
    use mail_auth::dkim::generate::DkimKeyPair;
    let pair = if ed25519 {
        DkimKeyPair::generate_ed25519()
    } else {
        DkimKeyPair::generate_rsa(MIN_RSA_BITS)
    }
    .map_err(|e| e.to_string())?;
    let der = if ed25519 {
        pair.private_key().to_vec()
    } else {
        // mail-auth gives PKCS#1; PKCS#8 is what `openssl genpkey` writes.
        use rsa::pkcs1::DecodeRsaPrivateKey as _;
        use rsa::pkcs8::EncodePrivateKey as _;
        rsa::RsaPrivateKey::from_pkcs1_der(pair.private_key())
            .and_then(|k| k.to_pkcs8_der().map_err(rsa::pkcs1::Error::Pkcs8))
            .map_err(|e| e.to_string())?
            .as_bytes()
            .to_vec()
    };
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).unwrap_or_default());
        pem.push('\n');
    }
    pem.push_str("-----END PRIVATE KEY-----\n");
    Ok(pem)
}

/// The names of a message's header fields, in order.
fn header_names(message: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    for line in message.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            break;
        }
        if line[0] == b' ' || line[0] == b'\t' {
            continue;
        }
        if let Some(colon) = line.iter().position(|&b| b == b':') {
            out.push(String::from_utf8_lossy(&line[..colon]).trim().to_owned());
        }
    }
    out
}

/// mail-auth's signer owns its key; ours are shared across messages.
struct Borrowed<'a>(&'a DkimKey);

impl SigningKey for Borrowed<'_> {
    type Hasher = Sha256;

    fn sign(&self, input: impl Writable) -> mail_auth::Result<Vec<u8>> {
        self.0.sign(input)
    }

    fn algorithm(&self) -> Algorithm {
        self.0.algorithm()
    }
}

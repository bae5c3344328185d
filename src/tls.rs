//! TLS material: the cluster CA, this node's server certificate, and the
//! rustls configurations built from them.
//!
//! On first start with an empty data dir Cradle creates a CA and a server
//! certificate signed by it (rcgen) and keeps them in the data dir; an operator
//! may instead bring their own certificate and key. Clients pin the CA by its
//! SHA-256 fingerprint, never by turning verification off.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: no PEM {what} found")]
    NoPem { path: PathBuf, what: &'static str },
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("rustls: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("invalid certificate: {0}")]
    Invalid(String),
}

pub const CA_CERT_FILE: &str = "ca.pem";
pub const CA_KEY_FILE: &str = "ca.key";
pub const SERVER_CERT_FILE: &str = "server.pem";
pub const SERVER_KEY_FILE: &str = "server.key";

/// Installs ring as rustls' process-wide crypto provider. Safe to call more
/// than once.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The CA and server identity this node serves HTTPS with.
#[derive(Clone)]
pub struct ServerIdentity {
    /// Server certificate first, then the CA (so clients can learn and pin it).
    pub chain: Vec<CertificateDer<'static>>,
    pub key: Arc<PrivateKeyDer<'static>>,
    /// The CA certificate in PEM, served at `/api/v1/ca`.
    pub ca_pem: String,
}

impl ServerIdentity {
    /// `sha256:<hex>` of the CA certificate's DER encoding.
    pub fn ca_fingerprint(&self) -> Result<String, TlsError> {
        fingerprint_pem(&self.ca_pem)
    }

    pub fn server_config(&self) -> Result<rustls::ServerConfig, TlsError> {
        let mut config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(self.chain.clone(), self.key.clone_key())?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(config)
    }
}

/// Loads the node's CA and server certificate from `dir`, creating them on
/// first start. `extra_sans` are added to a newly created server certificate
/// (host names and addresses clients will use).
pub fn load_or_create(
    dir: &Path,
    common_name: &str,
    extra_sans: &[String],
) -> Result<ServerIdentity, TlsError> {
    let ca_cert_path = dir.join(CA_CERT_FILE);
    let ca_key_path = dir.join(CA_KEY_FILE);
    if !ca_cert_path.exists() {
        let (ca_pem, ca_key_pem) = generate_ca("Cradle cluster CA")?;
        write_private(&ca_key_path, &ca_key_pem)?;
        write_file(&ca_cert_path, &ca_pem)?;
    }
    let server_cert_path = dir.join(SERVER_CERT_FILE);
    let server_key_path = dir.join(SERVER_KEY_FILE);
    if !server_cert_path.exists() {
        let ca_pem = read(&ca_cert_path)?;
        let ca_key_pem = read(&ca_key_path)?;
        let key = KeyPair::generate()?;
        let params = server_cert_params(common_name, extra_sans)?;
        let cert_pem = sign_with_ca(&ca_pem, &ca_key_pem, params, &key)?;
        let key_pem = key.serialize_pem();
        write_private(&server_key_path, &key_pem)?;
        write_file(&server_cert_path, &cert_pem)?;
    }
    load_files(&server_cert_path, &server_key_path, Some(&ca_cert_path))
}

/// Loads an operator-supplied certificate chain and key. The last certificate
/// of the chain (or `ca_path` if given) is treated as the CA clients pin.
pub fn load_files(
    cert_path: &Path,
    key_path: &Path,
    ca_path: Option<&Path>,
) -> Result<ServerIdentity, TlsError> {
    let cert_pem = read(cert_path)?;
    let mut chain = parse_certs(&cert_pem, cert_path)?;
    let key_pem = read(key_path)?;
    let key = rustls_pemfile::private_key(&mut key_pem.as_bytes())
        .map_err(|source| TlsError::Read {
            path: key_path.to_path_buf(),
            source,
        })?
        .ok_or_else(|| TlsError::NoPem {
            path: key_path.to_path_buf(),
            what: "private key",
        })?;
    let ca_pem = match ca_path {
        Some(path) => {
            let pem = read(path)?;
            let ca = parse_certs(&pem, path)?;
            chain.extend(ca);
            pem
        }
        None => {
            let last = chain.last().ok_or_else(|| TlsError::NoPem {
                path: cert_path.to_path_buf(),
                what: "certificate",
            })?;
            der_to_pem(last)
        }
    };
    Ok(ServerIdentity {
        chain,
        key: Arc::new(key),
        ca_pem,
    })
}

/// Creates a self-signed CA. Returns (certificate PEM, key PEM).
pub fn generate_ca(common_name: &str) -> Result<(String, String), TlsError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, "Cradle");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
    params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(3650);
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// What a node certificate says: `common_name` (`cradle-node-<id>`), the
/// local names and `extra_sans`, and that it serves both as a TLS server (API,
/// peer RPC) and as a client (peer RPC, mutual TLS).
pub fn server_cert_params(
    common_name: &str,
    extra_sans: &[String],
) -> Result<CertificateParams, TlsError> {
    let mut names: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
    if let Ok(host) = std::fs::read_to_string("/etc/hostname") {
        let host = host.trim();
        if !host.is_empty() {
            names.push(host.to_string());
        }
    }
    names.extend(extra_sans.iter().cloned());
    names.sort();
    names.dedup();

    let mut params = CertificateParams::new(Vec::<String>::new())?;
    for name in &names {
        let san = match name.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(
                name.clone()
                    .try_into()
                    .map_err(|e: rcgen::Error| TlsError::Invalid(format!("SAN {name:?}: {e}")))?,
            ),
        };
        params.subject_alt_names.push(san);
    }
    set_node_identity(&mut params, common_name);
    Ok(params)
}

/// The parts of a node certificate the CA decides, whatever a CSR asked.
pub fn set_node_identity(params: &mut CertificateParams, common_name: &str) {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::NoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.not_before = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
    params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(825);
}

/// Signs `params` for the holder of `key` with the CA. Returns the PEM.
pub fn sign_with_ca(
    ca_pem: &str,
    ca_key_pem: &str,
    params: CertificateParams,
    key: &impl rcgen::PublicKeyData,
) -> Result<String, TlsError> {
    let ca_key = KeyPair::from_pem(ca_key_pem)?;
    let ca_params = CertificateParams::from_ca_cert_pem(ca_pem)?;
    let ca_cert = ca_params.self_signed(&ca_key)?;
    Ok(params.signed_by(key, &ca_cert, &ca_key)?.pem())
}

/// Signs a joining node's CSR: its key and names, but the CA decides its
/// common name (its node id), usages and lifetime.
pub fn sign_csr(
    ca_pem: &str,
    ca_key_pem: &str,
    csr_pem: &str,
    common_name: &str,
) -> Result<String, TlsError> {
    let mut csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)?;
    set_node_identity(&mut csr.params, common_name);
    let ca_key = KeyPair::from_pem(ca_key_pem)?;
    let ca_params = CertificateParams::from_ca_cert_pem(ca_pem)?;
    let ca_cert = ca_params.self_signed(&ca_key)?;
    Ok(csr.signed_by(&ca_cert, &ca_key)?.pem())
}

/// A new key and a CSR for `names`. Returns (CSR PEM, key PEM).
pub fn new_csr(names: &[String]) -> Result<(String, String), TlsError> {
    let key = KeyPair::generate()?;
    let params = server_cert_params("cradle-node-pending", names)?;
    let csr = params.serialize_request(&key)?;
    Ok((csr.pem()?, key.serialize_pem()))
}

/// The subject common name of a DER certificate.
pub fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_string)
}

/// `sha256:<hex>` of the first certificate in `pem`.
pub fn fingerprint_pem(pem: &str) -> Result<String, TlsError> {
    let certs = parse_certs(pem, Path::new("<pem>"))?;
    let first = certs
        .first()
        .ok_or_else(|| TlsError::Invalid("no certificate in PEM".into()))?;
    Ok(fingerprint_der(first))
}

pub fn fingerprint_der(der: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(der)))
}

/// A rustls client configuration that trusts only the given CA.
pub fn client_config_for_ca(ca_pem: &str) -> Result<rustls::ClientConfig, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in parse_certs(ca_pem, Path::new("<ca>"))? {
        roots
            .add(cert)
            .map_err(|e| TlsError::Invalid(format!("CA certificate: {e}")))?;
    }
    Ok(rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth())
}

pub fn parse_certs(pem: &str, origin: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|source| TlsError::Read {
            path: origin.to_path_buf(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoPem {
            path: origin.to_path_buf(),
            what: "certificate",
        });
    }
    Ok(certs)
}

pub fn der_to_pem(der: &[u8]) -> String {
    use base64::Engine as _;
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in body.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

fn read(path: &Path) -> Result<String, TlsError> {
    std::fs::read_to_string(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn write_file(path: &Path, contents: &str) -> Result<(), TlsError> {
    std::fs::write(path, contents).map_err(|source| TlsError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// Private keys are created readable by the owner only.
fn write_private(path: &Path, contents: &str) -> Result<(), TlsError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let wrap = |source| TlsError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(wrap)?;
    file.write_all(contents.as_bytes()).map_err(wrap)?;
    file.sync_all().map_err(wrap)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_once_and_reloads_the_same_ca() {
        install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create(dir.path(), "cradle-node-1", &["node1.example".into()]).unwrap();
        let second = load_or_create(dir.path(), "cradle-node-1", &[]).unwrap();
        assert_eq!(first.ca_pem, second.ca_pem);
        assert_eq!(first.chain.len(), 2);
        let fp = first.ca_fingerprint().unwrap();
        assert!(fp.starts_with("sha256:") && fp.len() == 7 + 64, "{fp}");
        first.server_config().unwrap();
        client_config_for_ca(&first.ca_pem).unwrap();
        assert_eq!(
            common_name(&first.chain[0]).as_deref(),
            Some("cradle-node-1")
        );
    }

    #[test]
    fn csrs_are_signed_with_the_ca_choosing_the_name() {
        let (ca_pem, ca_key) = generate_ca("test CA").unwrap();
        let (csr, _key) = new_csr(&["198.18.0.2".into()]).unwrap();
        let cert = sign_csr(&ca_pem, &ca_key, &csr, "cradle-node-7").unwrap();
        let der = parse_certs(&cert, Path::new("x")).unwrap();
        assert_eq!(common_name(&der[0]).as_deref(), Some("cradle-node-7"));
        assert!(sign_csr(&ca_pem, &ca_key, "garbage", "cradle-node-7").is_err());
        assert!(sign_csr(&ca_pem, "garbage", &csr, "cradle-node-7").is_err());
    }

    #[test]
    fn garbage_pem_is_a_clear_error() {
        assert!(matches!(
            fingerprint_pem("not a pem"),
            Err(TlsError::NoPem { .. })
        ));
        assert!(client_config_for_ca(
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
        )
        .is_err());
    }
}

//! TLS termination: the crypto provider (aws-lc-rs, installed once), the
//! certificate chatgate serves (swappable for a reload without dropping
//! connections), ALPN `h2` + `http/1.1`, and the development certificate.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::TlsConfig;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{key}: {path}: {message}")]
    File {
        key: &'static str,
        path: PathBuf,
        message: String,
    },
    #[error("generating a certificate: {0}")]
    Generate(String),
}

/// Installs aws-lc-rs as the process's one rustls provider. Safe to call
/// more than once (tests start many servers in one process).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// The hosts a development certificate covers when none are named.
pub const DEV_HOSTS: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// With `dev_self_signed = true` and neither file present, writes a
/// self-signed localhost certificate to `tls.cert` / `tls.key`. Returns
/// whether it generated one.
pub fn ensure_certificate(config: &TlsConfig) -> Result<bool, TlsError> {
    let cert_exists = config.cert.exists();
    let key_exists = config.key.exists();
    if cert_exists || key_exists || !config.dev_self_signed {
        return Ok(false);
    }
    let hosts: Vec<String> = DEV_HOSTS.iter().map(|h| (*h).to_owned()).collect();
    write_self_signed(&config.cert, &config.key, &hosts)?;
    Ok(true)
}

/// Writes a new self-signed certificate (ECDSA P-256) for `hosts`; the key
/// file is readable by its owner only.
pub fn write_self_signed(
    cert_path: &Path,
    key_path: &Path,
    hosts: &[String],
) -> Result<(), TlsError> {
    let generated = rcgen::generate_simple_self_signed(hosts.to_vec())
        .map_err(|e| TlsError::Generate(e.to_string()))?;
    for path in [cert_path, key_path] {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir).map_err(|e| file_error("tls.cert", dir, e))?;
        }
    }
    fs::write(cert_path, generated.cert.pem()).map_err(|e| file_error("tls.cert", cert_path, e))?;
    write_private(key_path, generated.key_pair.serialize_pem().as_bytes())
        .map_err(|e| file_error("tls.key", key_path, e))?;
    Ok(())
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)
}

fn file_error(key: &'static str, path: &Path, error: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        key,
        path: path.to_owned(),
        message: error.to_string(),
    }
}

/// Reads the PEM certificate chain and private key.
pub fn load_certified_key(config: &TlsConfig) -> Result<CertifiedKey, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&config.cert)
        .map_err(|e| file_error("tls.cert", &config.cert, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_error("tls.cert", &config.cert, e))?;
    if certs.is_empty() {
        return Err(file_error(
            "tls.cert",
            &config.cert,
            "no certificate in the file",
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&config.key)
        .map_err(|e| file_error("tls.key", &config.key, e))?;
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| file_error("tls.key", &config.key, e))?;
    let certified = CertifiedKey::new(certs, signing_key);
    certified.keys_match().map_err(|e| {
        file_error(
            "tls.key",
            &config.key,
            format!("does not match tls.cert: {e}"),
        )
    })?;
    Ok(certified)
}

/// The certificate being served; `reload` swaps it for new connections while
/// established ones keep theirs.
#[derive(Debug)]
pub struct CertResolver {
    current: ArcSwap<CertifiedKey>,
}

impl CertResolver {
    pub fn new(key: CertifiedKey) -> Self {
        Self {
            current: ArcSwap::from_pointee(key),
        }
    }

    pub fn reload(&self, config: &TlsConfig) -> Result<(), TlsError> {
        self.set(load_certified_key(config)?);
        Ok(())
    }

    pub fn set(&self, key: CertifiedKey) {
        self.current.store(Arc::new(key));
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// rustls server settings: TLS 1.2 and 1.3, ALPN `h2` then `http/1.1`.
pub fn server_config(resolver: Arc<CertResolver>) -> rustls::ServerConfig {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap_or_else(|_| unreachable!("aws-lc-rs supports the default protocol versions"))
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls_config(dir: &Path, dev: bool) -> TlsConfig {
        TlsConfig {
            cert: dir.join("certs/cert.pem"),
            key: dir.join("certs/key.pem"),
            dev_self_signed: dev,
        }
    }

    #[test]
    fn a_dev_certificate_is_generated_once_and_loads() {
        install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let config = tls_config(dir.path(), true);
        assert!(ensure_certificate(&config).unwrap());
        assert!(
            !ensure_certificate(&config).unwrap(),
            "existing files are kept"
        );
        load_certified_key(&config).unwrap();
        let mode = fs::metadata(&config.key).unwrap().permissions();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(mode.mode() & 0o777, 0o600);
    }

    #[test]
    fn a_missing_certificate_without_dev_mode_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let config = tls_config(dir.path(), false);
        assert!(!ensure_certificate(&config).unwrap());
        let message = load_certified_key(&config).unwrap_err().to_string();
        assert!(message.starts_with("tls.cert: "), "{message}");
        assert!(message.contains("cert.pem"), "{message}");
    }

    #[test]
    fn a_key_that_does_not_match_is_refused() {
        install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let a = tls_config(&dir.path().join("a"), true);
        let b = tls_config(&dir.path().join("b"), true);
        ensure_certificate(&a).unwrap();
        ensure_certificate(&b).unwrap();
        let mixed = TlsConfig {
            cert: a.cert.clone(),
            key: b.key.clone(),
            dev_self_signed: false,
        };
        let message = load_certified_key(&mixed).unwrap_err().to_string();
        assert!(message.starts_with("tls.key: "), "{message}");
    }
}

//! TLS for the worker link: loading PEM files into a rustls acceptor (supervisor) or connector
//! (worker). Both pin the aws-lc-rs provider explicitly, since more than one rustls provider is
//! compiled into the workspace and the process-wide default would be ambiguous.
//!
//! TLS wraps the socket and nothing else: the framed connection, the HMAC handshake and the link
//! run unchanged on top of it (the token still never crosses the wire, even encrypted).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore, ServerConfig};

pub use rustls_pki_types::ServerName;
pub use tokio_rustls::{TlsAcceptor, TlsConnector};

/// Why a TLS configuration could not be built. Each names the file or value at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the {what} from {}: {source}", path.display())]
    Pem {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error("{} holds no certificate", path.display())]
    NoCertificate { path: PathBuf },
    #[error("{}: {source}", path.display())]
    BadCertificate {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("TLS configuration: {0}")]
    Config(#[source] rustls::Error),
    #[error("{0:?} is not a valid TLS server name (a DNS name or an IP address)")]
    ServerName(String),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn certificates(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TlsError::Pem {
            what,
            path: path.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// The supervisor's side: a certificate chain (leaf first) and its private key, both PEM.
pub fn acceptor(cert_path: &Path, key_path: &Path) -> Result<TlsAcceptor, TlsError> {
    let chain = certificates(cert_path, "certificate chain")?;
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|source| TlsError::Pem {
        what: "private key",
        path: key_path.to_owned(),
        source,
    })?;
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Config)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(TlsError::Config)?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The worker's side: trust only the certificates in `ca_path` (PEM), not the system roots.
pub fn connector(ca_path: &Path) -> Result<TlsConnector, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certificates(ca_path, "trusted certificates")? {
        roots.add(cert).map_err(|source| TlsError::BadCertificate {
            path: ca_path.to_owned(),
            source,
        })?;
    }
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Config)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

/// The name the supervisor's certificate must carry: a DNS name or an IP address.
pub fn server_name(name: &str) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(name.to_owned()).map_err(|_| TlsError::ServerName(name.to_owned()))
}

/// The host part of a `host:port` address (`[::1]:7070` gives `::1`), for the default server name.
pub fn host_of(addr: &str) -> &str {
    if let Some(rest) = addr.strip_prefix('[') {
        if let Some((host, _)) = rest.split_once(']') {
            return host;
        }
    }
    match addr.rsplit_once(':') {
        // A bare IPv6 address without a port has more than one colon: keep it whole.
        Some((host, _)) if !host.contains(':') => host,
        Some(_) => addr,
        None => addr,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_of_takes_the_host_part() {
        assert_eq!(host_of("127.0.0.1:7070"), "127.0.0.1");
        assert_eq!(host_of("supervisor.internal:7070"), "supervisor.internal");
        assert_eq!(host_of("[::1]:7070"), "::1");
        assert_eq!(host_of("supervisor"), "supervisor");
    }

    #[test]
    fn server_names_are_dns_names_or_ip_addresses() {
        assert!(server_name("supervisor.internal").is_ok());
        assert!(server_name("127.0.0.1").is_ok());
        assert!(server_name("::1").is_ok());
        assert!(server_name("not a name").is_err());
    }

    #[test]
    fn missing_files_are_named() {
        let Err(err) = connector(Path::new("/nonexistent/ca.pem")) else {
            panic!("a missing CA file must fail");
        };
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
        let Err(err) = acceptor(Path::new("/nonexistent/c.pem"), Path::new("/x/k.pem")) else {
            panic!("a missing certificate file must fail");
        };
        assert!(err.to_string().contains("/nonexistent/c.pem"), "{err}");
    }
}

//! TLS settings shared by the AMI client, the replay server and the AMQP
//! connection: loading PEM files into rustls configurations, and turning a
//! failed handshake into one line that names the cause.
//!
//! Everything uses rustls with the aws-lc-rs provider, the stack lapin 4
//! already builds, chosen explicitly (never the process-wide default) so
//! the behaviour does not depend on which crate installed a provider first.
//! Server certificates are verified against the system's roots (the
//! platform's CA bundle, read with rustls-native-certs) or, when a CA file
//! is configured, against that file only. There is no "skip verification"
//! switch, and a failed handshake is never retried in plain text.

use std::io;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{AlertDescription, CertificateError, RootCertStore};

/// The crypto provider every configuration here uses.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// What a TLS client needs besides the server's name: where to find the
/// CA(s) to trust and, optionally, a client certificate and its key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientFiles {
    /// PEM file of the CA certificate(s) to trust; `None`: the system's.
    pub ca_file: Option<std::path::PathBuf>,
    /// PEM file of the client certificate (chain), sent when the server asks.
    pub cert_file: Option<std::path::PathBuf>,
    /// PEM file of the client certificate's private key.
    pub key_file: Option<std::path::PathBuf>,
}

/// Reads every certificate of a PEM file; an error when there is none.
pub fn load_certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let data = std::fs::read(path).map_err(|e| format!("{what} {}: {e}", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&data)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{what} {}: not a PEM certificate file: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{what} {}: no certificate in it (expected PEM, -----BEGIN CERTIFICATE-----)",
            path.display()
        ));
    }
    Ok(certs)
}

/// Reads the first private key (PKCS#8, PKCS#1 or SEC1) of a PEM file.
pub fn load_key(path: &Path, what: &str) -> Result<PrivateKeyDer<'static>, String> {
    let data = std::fs::read(path).map_err(|e| format!("{what} {}: {e}", path.display()))?;
    PrivateKeyDer::from_pem_slice(&data).map_err(|e| {
        format!(
            "{what} {}: no usable private key in it (expected PEM: {e})",
            path.display()
        )
    })
}

/// The roots to trust: the CA file's certificates, or the system's.
fn roots(ca_file: Option<&Path>, ca_key: &str) -> Result<RootCertStore, String> {
    let mut store = RootCertStore::empty();
    match ca_file {
        Some(p) => {
            for c in load_certs(p, ca_key)? {
                store.add(c).map_err(|e| {
                    format!("{ca_key} {}: unusable CA certificate: {e}", p.display())
                })?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _ignored) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(format!(
                    "no system CA certificates found (install the ca-certificates package or set {ca_key})"
                ));
            }
        }
    }
    Ok(store)
}

/// A client configuration: server verification against `files.ca_file`
/// (or the system roots) and the client certificate, if any. The `*_key`
/// names are the configuration keys, for the error texts.
pub fn client_config(files: &ClientFiles, keys: [&str; 3]) -> Result<rustls::ClientConfig, String> {
    let [ca_key, cert_key, key_key] = keys;
    let roots = roots(files.ca_file.as_deref(), ca_key)?;
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_root_certificates(roots);
    match (&files.cert_file, &files.key_file) {
        (None, None) => Ok(builder.with_no_client_auth()),
        (Some(c), Some(k)) => {
            let chain = load_certs(c, cert_key)?;
            let key = load_key(k, key_key)?;
            builder.with_client_auth_cert(chain, key).map_err(|e| {
                format!(
                    "{cert_key} {} / {key_key} {}: {e}",
                    c.display(),
                    k.display()
                )
            })
        }
        (Some(_), None) => Err(format!("{cert_key} is set without {key_key}")),
        (None, Some(_)) => Err(format!("{key_key} is set without {cert_key}")),
    }
}

/// A server configuration from a certificate (chain) and key file (the
/// replay's `--tls-cert` / `--tls-key`). With `client_ca` every client
/// must present a certificate signed by a CA of that file
/// (`--tls-client-ca`); without, clients are not asked for one.
pub fn server_config(
    cert_file: &Path,
    key_file: &Path,
    client_ca: Option<&Path>,
) -> Result<rustls::ServerConfig, String> {
    server_config_named(
        cert_file,
        key_file,
        client_ca,
        ["--tls-cert", "--tls-key", "--tls-client-ca"],
    )
}

/// [`server_config`], naming the files in errors as the caller's options
/// or keys do (`[cert, key, client_ca]`).
pub fn server_config_named(
    cert_file: &Path,
    key_file: &Path,
    client_ca: Option<&Path>,
    names: [&str; 3],
) -> Result<rustls::ServerConfig, String> {
    let [cert_name, key_name, ca_name] = names;
    let chain = load_certs(cert_file, cert_name)?;
    let key = load_key(key_file, key_name)?;
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(p) => {
            let roots = roots(Some(p), ca_name)?;
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider(),
            )
            .build()
            .map_err(|e| format!("{ca_name} {}: {e}", p.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    builder.with_single_cert(chain, key).map_err(|e| {
        format!(
            "{cert_name} {} / {key_name} {}: {e}",
            cert_file.display(),
            key_file.display()
        )
    })
}

/// Parses the name the server's certificate must carry (a DNS name or an
/// IP address).
pub fn server_name(name: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(name.to_string()).map_err(|_| {
        format!(
            "\"{}\" is not a valid TLS server name (a DNS name or an IP address)",
            crate::logs::clip(name)
        )
    })
}

/// The host part of `host:port` (brackets of an IPv6 literal removed).
pub fn host_of(address: &str) -> &str {
    let host = address.rsplit_once(':').map_or(address, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// One line naming why a TLS handshake (or the first read after it) failed,
/// for an error that came out of rustls wrapped in an `io::Error`; other
/// errors keep their text.
pub fn describe_io(e: &io::Error) -> String {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(r) => describe(r),
        None => e.to_string(),
    }
}

/// One line naming the cause of a rustls error: unknown CA, name mismatch,
/// expired, a rejected client certificate, a peer that does not speak TLS.
pub fn describe(e: &rustls::Error) -> String {
    use rustls::Error as E;
    match e {
        E::InvalidCertificate(c) => match c {
            CertificateError::UnknownIssuer => {
                "TLS: unknown CA: the server's certificate is not signed by a trusted CA (check the CA file)".into()
            }
            CertificateError::NotValidForName => {
                "TLS: name mismatch: the server's certificate is not valid for the name connected to (set the server name to one it is issued for)".into()
            }
            CertificateError::NotValidForNameContext { expected, presented } => format!(
                "TLS: name mismatch: the server's certificate is not valid for {:?} (it names {}; set the server name to one of them)",
                expected.to_str(),
                if presented.is_empty() {
                    "no name".to_string()
                } else {
                    presented.join(", ")
                }
            ),
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "TLS: expired: the server's certificate has expired".into()
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "TLS: not yet valid: the server's certificate is not valid yet (check the clocks)".into()
            }
            CertificateError::Revoked => "TLS: the server's certificate is revoked".into(),
            other => format!("TLS: invalid server certificate: {other:?}"),
        },
        E::AlertReceived(a) => match a {
            AlertDescription::CertificateRequired => {
                "TLS: the server requires a client certificate (set the client certificate and key)".into()
            }
            AlertDescription::UnknownCA
            | AlertDescription::BadCertificate
            | AlertDescription::CertificateUnknown
            | AlertDescription::CertificateExpired
            | AlertDescription::AccessDenied => format!(
                "TLS: the server rejected our client certificate (alert {a:?})"
            ),
            other => format!("TLS: the server ended the handshake (alert {other:?})"),
        },
        E::InvalidMessage(_) | E::InappropriateMessage { .. } | E::InappropriateHandshakeMessage { .. } => format!(
            "TLS: the peer does not speak TLS here (a plain-text port?): {e}"
        ),
        E::NoCertificatesPresented => "TLS: the server sent no certificate".into(),
        other => format!("TLS: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_of_strips_port_and_brackets() {
        assert_eq!(host_of("pbx.example:5039"), "pbx.example");
        assert_eq!(host_of("127.0.0.1:5039"), "127.0.0.1");
        assert_eq!(host_of("[::1]:5039"), "::1");
        assert_eq!(host_of("pbx"), "pbx");
    }

    #[test]
    fn causes_are_named() {
        let ca = describe(&rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer,
        ));
        assert!(ca.contains("unknown CA"), "{ca}");
        let name = describe(&rustls::Error::InvalidCertificate(
            CertificateError::NotValidForNameContext {
                expected: server_name("a.example").unwrap(),
                presented: vec!["DnsName(\"b.example\")".into()],
            },
        ));
        assert!(
            name.contains("name mismatch") && name.contains("a.example"),
            "{name}"
        );
        let exp = describe(&rustls::Error::InvalidCertificate(
            CertificateError::Expired,
        ));
        assert!(exp.contains("expired"), "{exp}");
        let wrapped = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
        );
        assert!(describe_io(&wrapped).contains("unknown CA"));
        for s in [ca, name, exp] {
            assert!(!s.contains('\n'));
        }
    }

    #[test]
    fn missing_and_empty_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.pem");
        let e = client_config(
            &ClientFiles {
                ca_file: Some(missing.clone()),
                ..ClientFiles::default()
            },
            ["tls_ca_file", "tls_cert_file", "tls_key_file"],
        )
        .unwrap_err();
        assert!(
            e.starts_with("tls_ca_file ") && e.contains("nope.pem"),
            "{e}"
        );
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "hello\n").unwrap();
        let e = load_certs(&empty, "tls_ca_file").unwrap_err();
        assert!(e.contains("no certificate"), "{e}");
        let e = load_key(&empty, "tls_key_file").unwrap_err();
        assert!(e.contains("no usable private key"), "{e}");
        assert!(server_name("bad name!").is_err());
    }
}

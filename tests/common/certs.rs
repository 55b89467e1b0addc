//! Test certificates made at test time with rcgen: a CA, server and client
//! certificates it signs, written as PEM files into a directory.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, date_time_ymd,
};

/// A certificate and its key, written to `<name>.crt` / `<name>.key`.
#[derive(Clone, Debug)]
pub struct Pem {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A test CA that can sign server and client certificates.
pub struct TestCa {
    pub cert: PathBuf,
    issuer: Issuer<'static, KeyPair>,
    dir: PathBuf,
}

fn write(dir: &Path, name: &str, cert: &str, key: &str) -> Pem {
    let p = Pem {
        cert: dir.join(format!("{name}.crt")),
        key: dir.join(format!("{name}.key")),
    };
    std::fs::write(&p.cert, cert).expect("write cert");
    std::fs::write(&p.key, key).expect("write key");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&p.key, std::fs::Permissions::from_mode(0o600)).expect("chmod key");
    p
}

impl TestCa {
    /// A new CA named `name`, its certificate written to `dir/<name>.crt`.
    pub fn new(dir: &Path, name: &str) -> TestCa {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).expect("self-sign the CA");
        let pem = write(dir, name, &cert.pem(), &key.serialize_pem());
        TestCa {
            cert: pem.cert,
            issuer: Issuer::new(params, key),
            dir: dir.to_path_buf(),
        }
    }

    fn leaf(&self, name: &str, sans: &[&str], client: bool, expired: bool) -> Pem {
        let key = KeyPair::generate().expect("key");
        let mut params =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .expect("params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![if client {
            ExtendedKeyUsagePurpose::ClientAuth
        } else {
            ExtendedKeyUsagePurpose::ServerAuth
        }];
        if expired {
            params.not_before = date_time_ymd(2020, 1, 1);
            params.not_after = date_time_ymd(2021, 1, 1);
        }
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        write(&self.dir, name, &cert.pem(), &key.serialize_pem())
    }

    /// A server certificate for `sans` (DNS names or IP addresses).
    pub fn server(&self, name: &str, sans: &[&str]) -> Pem {
        self.leaf(name, sans, false, false)
    }

    /// A server certificate for `sans` that expired in 2021.
    pub fn expired_server(&self, name: &str, sans: &[&str]) -> Pem {
        self.leaf(name, sans, false, true)
    }

    /// A client certificate whose common name is `cn` (RabbitMQ's EXTERNAL
    /// mechanism takes the user name from it).
    pub fn client(&self, cn: &str) -> Pem {
        self.leaf(cn, &[], true, false)
    }
}

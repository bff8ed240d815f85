//! Relay configuration and its validation.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use lettre::message::dkim::{
    DkimCanonicalization, DkimCanonicalizationType, DkimConfig as LettreDkimConfig,
    DkimSigningAlgorithm, DkimSigningKey,
};
use lettre::message::header::HeaderName;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

/// How the connection to the relay is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SmtpTls {
    /// Connect in plaintext, then require `STARTTLS` (RFC 3207) before anything else is
    /// sent. A relay that does not offer it fails the send (nothing goes out in plaintext).
    /// The usual submission port is 587.
    #[default]
    StartTls,
    /// TLS from the first byte ("SMTPS", RFC 8314). The usual port is 465.
    Implicit,
    /// Plaintext only: addresses, content and credentials cross the network readable.
    /// Accepted only with [`SmtpConfig::allow_insecure`], for a relay on the same host or a
    /// trusted private network.
    None,
}

/// DKIM signing (RFC 6376) of every outgoing message.
#[derive(Clone)]
pub struct DkimConfig {
    /// The selector: the key is published at `{selector}._domainkey.{domain}`.
    pub selector: String,
    /// The signing domain (`d=`). Receivers' DMARC checks want it to be the domain of the
    /// `From` addresses (or a parent of it).
    pub domain: String,
    /// The private key, PEM: RSA (`BEGIN RSA PRIVATE KEY` or PKCS#8 `BEGIN PRIVATE KEY`,
    /// at least 1024 bits, 2048 recommended) or Ed25519 (PKCS#8 `BEGIN PRIVATE KEY`,
    /// RFC 8463).
    pub private_key_pem: String,
}

impl fmt::Debug for DkimConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DkimConfig")
            .field("selector", &self.selector)
            .field("domain", &self.domain)
            .field("private_key_pem", &"<redacted>")
            .finish()
    }
}

/// One relay ("route") that email is handed to.
///
/// Build one with [`SmtpConfig::new`] and adjust the fields; [`crate::EmailChannel::new`]
/// validates it.
#[derive(Clone)]
pub struct SmtpConfig {
    /// The route name, as reported in [`haven_channel::Submitted::route`], statuses, logs
    /// and metrics (for example `"relay"`).
    pub name: String,
    /// The relay's host name or IP address.
    pub host: String,
    /// The relay's port (587 for STARTTLS submission, 465 for implicit TLS, 25 for MX).
    pub port: u16,
    /// How the connection is secured. Default [`SmtpTls::StartTls`].
    pub tls: SmtpTls,
    /// Must be `true` for [`SmtpTls::None`]; has no other effect.
    pub allow_insecure: bool,
    /// An extra trust anchor (PEM, one or more certificates) for a relay whose certificate
    /// comes from a private CA. It is added to the system's trust store, not used instead
    /// of it.
    pub ca_file: Option<PathBuf>,
    /// The name the relay's certificate must carry, when it is not [`SmtpConfig::host`]
    /// (for example when `host` is an IP address). A DNS name or an IP address.
    pub tls_server_name: Option<String>,
    /// AUTH user name (PLAIN or LOGIN, whichever the relay offers). Never logged.
    pub username: Option<String>,
    /// AUTH password. Never logged. Both or neither of `username` and `password`.
    pub password: Option<String>,
    /// Bound on one whole send: connecting, TLS, AUTH and the mail transaction. Default 30 s.
    pub timeout: Duration,
    /// At most this many connections to the relay at once, kept open between sends (for
    /// [`crate::IDLE_TIMEOUT`]) so that a burst does not pay for TCP, TLS and AUTH for every
    /// message. Default 4.
    pub pool_size: u32,
    /// The name given in `EHLO`: a fully qualified domain name or an IP address. Default:
    /// this machine's host name. Relays that check `EHLO` names want a real one.
    pub helo_name: Option<String>,
    /// DKIM-sign every message with this key, when set.
    pub dkim: Option<DkimConfig>,
}

impl SmtpConfig {
    /// A configuration for the relay `host` under the route name `name`, with the defaults:
    /// port 587, STARTTLS required, system trust store, no AUTH, 30 s timeout, 4 pooled
    /// connections, no DKIM.
    pub fn new(name: impl Into<String>, host: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            host: host.into(),
            port: 587,
            tls: SmtpTls::StartTls,
            allow_insecure: false,
            ca_file: None,
            tls_server_name: None,
            username: None,
            password: None,
            timeout: Duration::from_secs(30),
            pool_size: 4,
            helo_name: None,
            dkim: None,
        }
    }
}

impl fmt::Debug for SmtpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Credentials and keys never appear in Debug output.
        f.debug_struct("SmtpConfig")
            .field("name", &self.name)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls)
            .field("allow_insecure", &self.allow_insecure)
            .field("ca_file", &self.ca_file)
            .field("tls_server_name", &self.tls_server_name)
            .field("username", &self.username.as_ref().map(|_| "<set>"))
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("timeout", &self.timeout)
            .field("pool_size", &self.pool_size)
            .field("helo_name", &self.helo_name)
            .field("dkim", &self.dkim)
            .finish()
    }
}

/// Why an [`SmtpConfig`] was refused. Every variant names the route; none carries a
/// password or key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EmailConfigError {
    /// A field has a value that cannot work.
    #[error("smtp route {route:?}: invalid {field}: {reason}")]
    Invalid {
        /// [`SmtpConfig::name`].
        route: String,
        /// The field's name, as in [`SmtpConfig`].
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// [`SmtpTls::None`] without [`SmtpConfig::allow_insecure`].
    #[error(
        "smtp route {route:?}: tls = none sends mail and credentials in plaintext; set allow_insecure to accept that"
    )]
    InsecureNotAllowed {
        /// [`SmtpConfig::name`].
        route: String,
    },
    /// The `ca_file` cannot be read or holds no usable certificate.
    #[error("smtp route {route:?}: ca_file {path}: {reason}")]
    CaFile {
        /// [`SmtpConfig::name`].
        route: String,
        /// The file, as configured.
        path: String,
        /// Why it cannot be used.
        reason: String,
    },
    /// The TLS client could not be set up (for example: no trust anchors at all, when the
    /// system store is empty and there is no `ca_file`).
    #[error("smtp route {route:?}: tls setup: {reason}")]
    Tls {
        /// [`SmtpConfig::name`].
        route: String,
        /// The TLS library's error.
        reason: String,
    },
    /// The DKIM settings or key are unusable.
    #[error("smtp route {route:?}: dkim: {reason}")]
    Dkim {
        /// [`SmtpConfig::name`].
        route: String,
        /// What is wrong (never the key itself).
        reason: String,
    },
}

/// A validated configuration, in the form the transport uses.
pub(crate) struct Prepared {
    pub name: String,
    pub host: String,
    pub port: u16,
    pub tls: PreparedTls,
    pub credentials: Option<Credentials>,
    pub timeout: Duration,
    pub pool_size: usize,
    pub client_id: ClientId,
    pub dkim: Option<Arc<LettreDkimConfig>>,
}

pub(crate) enum PreparedTls {
    StartTls(TlsParameters),
    Implicit(TlsParameters),
    None,
}

/// The smallest RSA key RFC 8301 lets a signer use.
const MIN_RSA_BITS: usize = 1024;

impl SmtpConfig {
    pub(crate) fn prepare(&self) -> Result<Prepared, EmailConfigError> {
        let route = self.name.clone();
        let invalid = |field: &'static str, reason: &str| EmailConfigError::Invalid {
            route: route.clone(),
            field,
            reason: reason.to_owned(),
        };
        if self.name.trim().is_empty() {
            return Err(invalid("name", "must not be empty"));
        }
        if self.host.trim().is_empty() {
            return Err(invalid("host", "must not be empty"));
        }
        if self.port == 0 {
            return Err(invalid("port", "must not be 0"));
        }
        if self.timeout.is_zero() {
            return Err(invalid("timeout", "must be more than zero"));
        }
        if self.pool_size == 0 {
            return Err(invalid("pool_size", "must be at least 1"));
        }
        let credentials = match (&self.username, &self.password) {
            (Some(u), Some(p)) => {
                if u.is_empty() {
                    return Err(invalid("username", "must not be empty"));
                }
                Some(Credentials::new(u.clone(), p.clone()))
            }
            (None, None) => None,
            _ => {
                return Err(invalid(
                    "username/password",
                    "set both or neither of username and password",
                ));
            }
        };
        let client_id = match &self.helo_name {
            Some(name) => parse_client_id(name).ok_or_else(|| {
                invalid(
                    "helo_name",
                    "must be a domain name (letters, digits, '-', '.') or an IP address",
                )
            })?,
            None => ClientId::default(),
        };

        let tls = match self.tls {
            SmtpTls::None => {
                if !self.allow_insecure {
                    return Err(EmailConfigError::InsecureNotAllowed { route });
                }
                if self.ca_file.is_some() || self.tls_server_name.is_some() {
                    return Err(invalid(
                        "tls",
                        "ca_file and tls_server_name need tls = starttls or implicit",
                    ));
                }
                PreparedTls::None
            }
            SmtpTls::StartTls => PreparedTls::StartTls(self.tls_parameters()?),
            SmtpTls::Implicit => PreparedTls::Implicit(self.tls_parameters()?),
        };

        let dkim = match &self.dkim {
            Some(d) => Some(Arc::new(prepare_dkim(&route, d)?)),
            None => None,
        };

        Ok(Prepared {
            name: self.name.clone(),
            host: self.host.clone(),
            port: self.port,
            tls,
            credentials,
            timeout: self.timeout,
            pool_size: usize::try_from(self.pool_size).unwrap_or(usize::MAX),
            client_id,
            dkim,
        })
    }

    fn tls_parameters(&self) -> Result<TlsParameters, EmailConfigError> {
        let route = self.name.clone();
        let server_name = self
            .tls_server_name
            .clone()
            .unwrap_or_else(|| self.host.clone());
        if rustls_pki_types::ServerName::try_from(server_name.as_str()).is_err() {
            return Err(EmailConfigError::Invalid {
                route,
                field: "tls_server_name",
                reason: "must be a DNS name or an IP address".to_owned(),
            });
        }
        let mut builder = TlsParameters::builder(server_name);
        if let Some(path) = &self.ca_file {
            let ca_error = |reason: String| EmailConfigError::CaFile {
                route: route.clone(),
                path: path.display().to_string(),
                reason,
            };
            let pem = std::fs::read(path).map_err(|e| ca_error(e.to_string()))?;
            let certs = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| ca_error(format!("not PEM: {e}")))?;
            if certs.is_empty() {
                return Err(ca_error("holds no PEM certificate".to_owned()));
            }
            // Each one must parse as a trust anchor; lettre only reports that at connect time.
            let mut store = rustls::RootCertStore::empty();
            for cert in &certs {
                store
                    .add(cert.clone())
                    .map_err(|e| ca_error(format!("unusable certificate: {e}")))?;
            }
            let cert = Certificate::from_pem(&pem).map_err(|e| ca_error(e.to_string()))?;
            builder = builder.add_root_certificate(cert);
        }
        builder.build_rustls().map_err(|e| EmailConfigError::Tls {
            route,
            reason: error_chain(&e),
        })
    }
}

fn parse_client_id(name: &str) -> Option<ClientId> {
    let bare = name.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Some(match ip {
            IpAddr::V4(v4) => ClientId::Ipv4(v4),
            IpAddr::V6(v6) => ClientId::Ipv6(v6),
        });
    }
    let valid = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    valid.then(|| ClientId::Domain(name.to_owned()))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let next = s.to_string();
        if !out.contains(&next) {
            out.push_str(": ");
            out.push_str(&next);
        }
        source = s.source();
    }
    out
}

/// The headers covered by the signature: everything a receiver shows or uses to thread.
/// Not `Content-Type`: lettre writes the top-level `Content-Type` of a MIME body with the
/// body, so its signer does not see it and a signature listing it would not verify.
const DKIM_SIGNED_HEADERS: &[&str] = &[
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "MIME-Version",
    "Auto-Submitted",
];

fn prepare_dkim(route: &str, d: &DkimConfig) -> Result<LettreDkimConfig, EmailConfigError> {
    let err = |reason: String| EmailConfigError::Dkim {
        route: route.to_owned(),
        reason,
    };
    if !is_dns_name(&d.selector) {
        return Err(err("selector must be a DNS label sequence".to_owned()));
    }
    if !is_dns_name(&d.domain) {
        return Err(err("domain must be a DNS name".to_owned()));
    }
    let key = dkim_signing_key(&d.private_key_pem).map_err(err)?;
    let headers = DKIM_SIGNED_HEADERS
        .iter()
        .map(|h| HeaderName::new_from_ascii_str(h))
        .collect();
    Ok(LettreDkimConfig::new(
        d.selector.clone(),
        d.domain.to_ascii_lowercase(),
        key,
        headers,
        // relaxed/relaxed: survives relays that re-fold headers or touch whitespace.
        DkimCanonicalization {
            header: DkimCanonicalizationType::Relaxed,
            body: DkimCanonicalizationType::Relaxed,
        },
    ))
}

fn is_dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// Reads an RSA (PKCS#1 or PKCS#8) or Ed25519 (PKCS#8) PEM key into lettre's form (which
/// itself takes only PKCS#1 PEM for RSA and a base64 seed for Ed25519).
fn dkim_signing_key(pem: &str) -> Result<DkimSigningKey, String> {
    use base64::Engine as _;
    use ed25519_dalek::pkcs8::DecodePrivateKey as _;
    use rsa::pkcs1::{DecodeRsaPrivateKey as _, EncodeRsaPrivateKey as _};
    use rsa::traits::PublicKeyParts as _;

    let pem = pem.trim();
    let rsa_key = if pem.contains("BEGIN RSA PRIVATE KEY") {
        Some(
            rsa::RsaPrivateKey::from_pkcs1_pem(pem)
                .map_err(|e| format!("unreadable RSA private key: {e}"))?,
        )
    } else if pem.contains("BEGIN PRIVATE KEY") {
        // PKCS#8: RSA or Ed25519, told apart by the algorithm inside.
        rsa::RsaPrivateKey::from_pkcs8_pem(pem).ok()
    } else {
        return Err(
            "private_key_pem must be a PEM private key (BEGIN RSA PRIVATE KEY or BEGIN PRIVATE KEY)"
                .to_owned(),
        );
    };

    if let Some(key) = rsa_key {
        let bits = key.size() * 8;
        if bits < MIN_RSA_BITS {
            return Err(format!(
                "RSA key of {bits} bits is too short (at least {MIN_RSA_BITS}, 2048 recommended)"
            ));
        }
        key.validate()
            .map_err(|e| format!("invalid RSA key: {e}"))?;
        let pkcs1 = key
            .to_pkcs1_pem(rsa::pkcs1::LineEnding::LF)
            .map_err(|e| format!("RSA key: {e}"))?;
        return DkimSigningKey::new(&pkcs1, DkimSigningAlgorithm::Rsa)
            .map_err(|e| format!("RSA key: {e}"));
    }

    let ed = ed25519_dalek::SigningKey::from_pkcs8_pem(pem)
        .map_err(|_| "private_key_pem is neither an RSA nor an Ed25519 PKCS#8 key".to_owned())?;
    let seed = base64::engine::general_purpose::STANDARD.encode(ed.to_bytes());
    DkimSigningKey::new(&seed, DkimSigningAlgorithm::Ed25519)
        .map_err(|e| format!("Ed25519 key: {e}"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn base() -> SmtpConfig {
        SmtpConfig::new("relay", "127.0.0.1")
    }

    fn err(cfg: &SmtpConfig) -> EmailConfigError {
        match cfg.prepare() {
            Ok(_) => panic!("expected a config error"),
            Err(e) => e,
        }
    }

    #[test]
    fn defaults_are_secure() {
        let c = base();
        assert_eq!(c.tls, SmtpTls::StartTls);
        assert_eq!(c.port, 587);
        assert_eq!(c.timeout, Duration::from_secs(30));
        assert_eq!(c.pool_size, 4);
        assert!(!c.allow_insecure);
    }

    #[test]
    fn plaintext_needs_allow_insecure() {
        let mut c = base();
        c.tls = SmtpTls::None;
        assert!(matches!(
            err(&c),
            EmailConfigError::InsecureNotAllowed { .. }
        ));
        c.allow_insecure = true;
        assert!(c.prepare().is_ok());
    }

    #[test]
    fn unreadable_or_empty_ca_file_is_refused() {
        let mut c = base();
        c.ca_file = Some("/nonexistent/haven-ca.pem".into());
        assert!(matches!(err(&c), EmailConfigError::CaFile { .. }));

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "not a certificate\n").unwrap();
        c.ca_file = Some(path.clone());
        assert!(matches!(err(&c), EmailConfigError::CaFile { .. }));

        let ca = rcgen::generate_simple_self_signed(vec!["ca.test".to_owned()]).unwrap();
        std::fs::write(&path, ca.cert.pem()).unwrap();
        assert!(c.prepare().is_ok());
    }

    #[test]
    fn other_fields_are_checked() {
        let mut c = base();
        c.pool_size = 0;
        assert!(matches!(
            err(&c),
            EmailConfigError::Invalid {
                field: "pool_size",
                ..
            }
        ));
        let mut c = base();
        c.timeout = Duration::ZERO;
        assert!(matches!(
            err(&c),
            EmailConfigError::Invalid {
                field: "timeout",
                ..
            }
        ));
        let mut c = base();
        c.username = Some("u".into());
        assert!(matches!(err(&c), EmailConfigError::Invalid { .. }));
        let mut c = base();
        c.helo_name = Some("bad name!".into());
        assert!(matches!(
            err(&c),
            EmailConfigError::Invalid {
                field: "helo_name",
                ..
            }
        ));
        c.helo_name = Some("mail.example.org".into());
        assert!(c.prepare().is_ok());
        c.helo_name = Some("[192.0.2.1]".into());
        assert!(c.prepare().is_ok());
        let mut c = base();
        c.host = String::new();
        assert!(matches!(
            err(&c),
            EmailConfigError::Invalid { field: "host", .. }
        ));
        let mut c = base();
        c.tls_server_name = Some("not a name".into());
        assert!(matches!(err(&c), EmailConfigError::Invalid { .. }));
    }

    #[test]
    fn debug_hides_secrets() {
        let mut c = base();
        c.username = Some("user".into());
        c.password = Some("SECRET-PASSWORD".into());
        c.dkim = Some(DkimConfig {
            selector: "s".into(),
            domain: "example.org".into(),
            private_key_pem: "SECRET-KEY".into(),
        });
        let s = format!("{c:?}");
        assert!(!s.contains("SECRET"), "{s}");
    }

    fn dkim_cfg(pem: String) -> SmtpConfig {
        let mut c = base();
        c.dkim = Some(DkimConfig {
            selector: "sel".into(),
            domain: "example.org".into(),
            private_key_pem: pem,
        });
        c
    }

    #[test]
    fn dkim_keys_rsa_pkcs1_pkcs8_and_ed25519() {
        use rsa::pkcs1::EncodeRsaPrivateKey as _;
        use rsa::pkcs8::DecodePrivateKey as _;

        let rsa8 = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
        assert!(dkim_cfg(rsa8.serialize_pem()).prepare().is_ok());

        let rsa1 = rsa::RsaPrivateKey::from_pkcs8_pem(&rsa8.serialize_pem())
            .unwrap()
            .to_pkcs1_pem(rsa::pkcs1::LineEnding::LF)
            .unwrap();
        assert!(rsa1.contains("BEGIN RSA PRIVATE KEY"));
        assert!(dkim_cfg(rsa1.to_string()).prepare().is_ok());

        let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        assert!(dkim_cfg(ed.serialize_pem()).prepare().is_ok());
    }

    #[test]
    fn bad_dkim_is_refused() {
        let e = err(&dkim_cfg("garbage".into()));
        assert!(matches!(e, EmailConfigError::Dkim { .. }));
        let e = err(&dkim_cfg(
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".into(),
        ));
        assert!(matches!(e, EmailConfigError::Dkim { .. }));
        // An EC key is neither RSA nor Ed25519.
        let ec = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        assert!(matches!(
            err(&dkim_cfg(ec.serialize_pem())),
            EmailConfigError::Dkim { .. }
        ));
        let mut c = dkim_cfg(
            rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)
                .unwrap()
                .serialize_pem(),
        );
        if let Some(d) = c.dkim.as_mut() {
            d.selector = "bad selector".into();
        }
        assert!(matches!(err(&c), EmailConfigError::Dkim { .. }));
    }
}

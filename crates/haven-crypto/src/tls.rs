//! The self-signed certificate made on first start when no certificate is configured.

use crate::CryptoError;
use rcgen::{
    CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};

/// PEM certificate and PKCS#8 key for `localhost`, `127.0.0.1` and `::1`, valid for two years.
/// It is a self-signed end-entity certificate, so clients can trust it directly as a CA file.
pub fn self_signed_localhost() -> Result<(String, String), CryptoError> {
    let err = |e: rcgen::Error| CryptoError::Certificate(e.to_string());
    let mut params = CertificateParams::new(vec!["localhost".to_owned()]).map_err(err)?;
    params
        .subject_alt_names
        .push(SanType::IpAddress([127, 0, 0, 1].into()));
    params
        .subject_alt_names
        .push(SanType::IpAddress(std::net::Ipv6Addr::LOCALHOST.into()));
    params
        .distinguished_name
        .push(DnType::CommonName, "Haven self-signed (localhost)");
    params
        .distinguished_name
        .push(DnType::OrganizationName, "Haven");
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(730);
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(err)?;
    let cert = params.self_signed(&key).map_err(err)?;
    Ok((cert.pem(), key.serialize_pem()))
}

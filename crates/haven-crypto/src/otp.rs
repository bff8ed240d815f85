//! One-time passwords: HOTP (RFC 4226) and TOTP (RFC 6238) with HMAC-SHA-1, the algorithm every
//! authenticator app supports (SHA-1's collision weakness does not touch HMAC).

use aws_lc_rs::hmac;

/// The HOTP value of `counter` under `secret`, `digits` long (6 to 8).
pub fn hotp(secret: &[u8], counter: u64, digits: u32) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret);
    let tag = hmac::sign(&key, &counter.to_be_bytes());
    let mac = tag.as_ref();
    // Dynamic truncation (RFC 4226 §5.3).
    let offset = usize::from(mac[mac.len() - 1] & 0x0f);
    let bin = (u32::from(mac[offset] & 0x7f) << 24)
        | (u32::from(mac[offset + 1]) << 16)
        | (u32::from(mac[offset + 2]) << 8)
        | u32::from(mac[offset + 3]);
    let digits = digits.clamp(6, 8);
    let modulus = 10u32.pow(digits);
    format!("{:0width$}", bin % modulus, width = digits as usize)
}

/// The TOTP time step of a Unix time in seconds.
pub fn totp_step(unix_seconds: u64, period: u64) -> u64 {
    unix_seconds / period.max(1)
}

/// Base32 (RFC 4648, no padding) as authenticator apps take secrets.
pub fn base32(bytes: &[u8]) -> String {
    data_encoding::BASE32_NOPAD.encode(bytes)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn rfc_4226_appendix_d() {
        let secret = b"12345678901234567890";
        let want = [
            "755224", "287082", "359152", "969429", "338314", "254676", "287922", "162583",
            "399871", "520489",
        ];
        for (i, w) in want.iter().enumerate() {
            assert_eq!(hotp(secret, i as u64, 6), *w);
        }
    }

    #[test]
    fn rfc_6238_appendix_b_sha1() {
        let secret = b"12345678901234567890";
        for (t, w) in [
            (59u64, "94287082"),
            (1_111_111_109, "07081804"),
            (1_111_111_111, "14050471"),
            (1_234_567_890, "89005924"),
            (2_000_000_000, "69279037"),
            (20_000_000_000, "65353130"),
        ] {
            assert_eq!(hotp(secret, totp_step(t, 30), 8), w, "T={t}");
        }
        assert_eq!(
            base32(b"12345678901234567890"),
            "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"
        );
    }
}

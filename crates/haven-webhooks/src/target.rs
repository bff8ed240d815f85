//! The SSRF guard: which addresses a webhook may be sent to. Checked on the resolved
//! addresses at connection time (so a name that later resolves inward is caught), with no
//! redirects followed and no proxy used.

use ipnet::IpNet;
use std::net::{IpAddr, Ipv4Addr};
use url::{Host, Url};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("the URL is not valid")]
    BadUrl,
    #[error("the URL must use https")]
    NotHttps,
    #[error("the URL must not contain credentials")]
    Credentials,
    #[error("{0} is a {1} address, which webhooks may not target")]
    Forbidden(IpAddr, &'static str),
}

/// Why an address is not public, or `None` if it is.
pub fn classify(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return classify_v4(v4);
            }
            let s = v6.segments();
            // NAT64 (64:ff9b::/96) embeds an IPv4 address.
            if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                let v4 =
                    Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
                return classify_v4(v4);
            }
            if v6.is_loopback() {
                Some("loopback")
            } else if v6.is_unspecified() {
                Some("unspecified")
            } else if v6.is_multicast() {
                Some("multicast")
            } else if (s[0] & 0xffc0) == 0xfe80 {
                Some("link-local")
            } else if (s[0] & 0xfe00) == 0xfc00 {
                // Includes fd00:ec2::254, the AWS metadata service over IPv6.
                Some("private")
            } else if s[0] == 0x2001 && s[1] == 0x0db8 {
                Some("documentation")
            } else if s[..6] == [0, 0, 0, 0, 0, 0] {
                Some("IPv4-compatible")
            } else {
                None
            }
        }
    }
}

fn classify_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    if ip.is_loopback() {
        Some("loopback")
    } else if o == [169, 254, 169, 254] || o == [100, 100, 100, 200] {
        Some("cloud metadata")
    } else if ip.is_link_local() {
        Some("link-local")
    } else if ip.is_private() {
        Some("private")
    } else if o[0] == 100 && (o[1] & 0xc0) == 64 {
        Some("shared (CGNAT)")
    } else if o[0] == 0 || ip.is_unspecified() {
        Some("unspecified")
    } else if ip.is_broadcast()
        || ip.is_multicast()
        || o[0] >= 240
        || ip.is_documentation()
        || (o[0] == 198 && (o[1] & 0xfe) == 18)
        || (o[0] == 192 && o[1] == 0 && o[2] == 0)
    {
        Some("reserved")
    } else {
        None
    }
}

/// The operator's policy: public addresses over HTTPS, plus the allowlisted blocks (over HTTP
/// too).
#[derive(Debug, Clone, Default)]
pub struct TargetPolicy {
    pub allow: Vec<IpNet>,
}

impl TargetPolicy {
    pub fn allowlisted(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        self.allow.iter().any(|n| n.contains(&ip))
    }

    /// Whether a connection to `ip` is permitted (`https`: any public address too).
    pub fn check_ip(&self, ip: IpAddr, https: bool) -> Result<(), TargetError> {
        if self.allowlisted(ip) {
            return Ok(());
        }
        match classify(ip) {
            Some(why) => Err(TargetError::Forbidden(ip, why)),
            None if https => Ok(()),
            None => Err(TargetError::NotHttps),
        }
    }

    /// Checks what can be checked without DNS: scheme, credentials, a literal address.
    pub fn check_url(&self, raw: &str) -> Result<Url, TargetError> {
        let url = Url::parse(raw).map_err(|_| TargetError::BadUrl)?;
        if raw.len() > 2048 || url.host_str().is_none_or(str::is_empty) {
            return Err(TargetError::BadUrl);
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(TargetError::Credentials);
        }
        let https = match url.scheme() {
            "https" => true,
            "http" if !self.allow.is_empty() => false,
            _ => return Err(TargetError::NotHttps),
        };
        if let Some(ip) = literal_ip(&url) {
            self.check_ip(ip, https)?;
        }
        Ok(url)
    }
}

/// The literal address of a URL's host, if it is one.
pub(crate) fn literal_ip(url: &Url) -> Option<IpAddr> {
    match url.host()? {
        Host::Ipv4(v4) => Some(IpAddr::V4(v4)),
        Host::Ipv6(v6) => Some(IpAddr::V6(v6)),
        Host::Domain(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allow: &[&str]) -> TargetPolicy {
        TargetPolicy {
            allow: allow.iter().filter_map(|a| a.parse().ok()).collect(),
        }
    }

    #[test]
    fn internal_addresses_are_refused() {
        let p = policy(&[]);
        for bad in [
            "https://127.0.0.1/x",
            "https://10.1.2.3/",
            "https://172.16.0.1/",
            "https://192.168.1.1/",
            "https://169.254.169.254/latest/meta-data",
            "https://100.64.0.1/",
            "https://0.0.0.0/",
            "https://[::1]/",
            "https://[::ffff:127.0.0.1]/",
            "https://[::ffff:a9fe:a9fe]/",
            "https://[fe80::1]/",
            "https://[fd00:ec2::254]/",
            "https://[64:ff9b::a00:1]/",
        ] {
            assert!(
                matches!(p.check_url(bad), Err(TargetError::Forbidden(..))),
                "{bad}"
            );
        }
        assert_eq!(
            p.check_url("http://example.org/").err(),
            Some(TargetError::NotHttps)
        );
        assert_eq!(
            p.check_url("ftp://example.org/").err(),
            Some(TargetError::NotHttps)
        );
        assert_eq!(
            p.check_url("https://u:p@example.org/").err(),
            Some(TargetError::Credentials)
        );
        assert_eq!(p.check_url("not a url").err(), Some(TargetError::BadUrl));
        assert!(p.check_url("https://hooks.example.org/haven").is_ok());
        assert!(p.check_url("https://8.8.8.8/").is_ok());
        assert!(p.check_url("https://[2606:4700::1111]/").is_ok());
    }

    #[test]
    fn the_allowlist_opens_internal_targets_and_plain_http() {
        let p = policy(&["127.0.0.1/32"]);
        assert!(p.check_url("http://127.0.0.1:8080/hook").is_ok());
        assert!(p.check_url("https://[::ffff:127.0.0.1]/").is_ok());
        assert!(matches!(
            p.check_url("http://127.0.0.2/"),
            Err(TargetError::Forbidden(..))
        ));
        // Plain HTTP to a public address is still refused.
        assert!(
            p.check_ip(
                "8.8.8.8".parse().unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST)),
                false
            )
            .is_err()
        );
    }
}

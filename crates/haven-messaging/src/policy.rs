//! An account's messaging policy: first contact only with an approved template, links only to
//! the account's own domains (anti-smishing), and quiet hours in the recipient's local time.

use crate::{Messaging, MessagingError, MessagingResult};
use haven_identity::{FieldError, Principal, RequestMeta, Right, Scope};
use haven_platform::audit::{AuditAction, AuditEvent, Outcome};
use haven_platform::clock::now_ms;
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

const READ: Scope = Scope::new("messages", Right::Read);
const ADMIN: Scope = Scope::new("messages", Right::Admin);
const MAX_DOMAINS: usize = 100;
/// How long a node trusts the policy it read; a change made on another node applies there
/// within this time (on the node that made it, at once).
pub const POLICY_CACHE_TTL: Duration = Duration::from_secs(5);

/// Quiet hours: between `start` and `end` (local wall-clock times, `end` may be the next day)
/// non-urgent messages are held until `end`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuietHours {
    /// `HH:MM`, 24-hour.
    pub start: String,
    pub end: String,
    /// The IANA time zone used when the message gives none for its recipient.
    pub timezone: String,
}

/// The policy as stored and as the API shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MessagingPolicy {
    /// Free text only to recipients the account exchanged messages with before; a first
    /// message must use an approved template.
    pub require_template_for_first_contact: bool,
    /// When set, every link in a message must point to one of these domains (or a subdomain);
    /// an empty list allows no links at all. Unset: links are not restricted.
    pub link_domains: Option<Vec<String>>,
    pub quiet_hours: Option<QuietHours>,
}

/// Parses `HH:MM` into minutes after midnight.
fn minutes(s: &str) -> Option<u16> {
    let (h, m) = s.split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
    (h < 24 && m < 60).then_some(h * 60 + m)
}

/// An IANA time zone from the bundled database.
pub fn time_zone(name: &str) -> Option<jiff::tz::TimeZone> {
    if name.is_empty() || name.len() > 64 {
        return None;
    }
    jiff::tz::TimeZone::get(name).ok()
}

fn domain_ok(d: &str) -> bool {
    let labels: Vec<&str> = d.split('.').collect();
    d.len() <= 253
        && labels.len() >= 2
        && labels.iter().all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

impl MessagingPolicy {
    /// Checks and normalizes a policy, reporting every problem at once.
    pub fn parse(mut self) -> Result<Self, Vec<FieldError>> {
        let mut errors = Vec::new();
        if let Some(ds) = &mut self.link_domains {
            if ds.len() > MAX_DOMAINS {
                errors.push(FieldError::new(
                    "link_domains",
                    format!("at most {MAX_DOMAINS} domains"),
                ));
            }
            for (i, d) in ds.iter_mut().enumerate() {
                *d = d.trim().trim_end_matches('.').to_ascii_lowercase();
                if !domain_ok(d) {
                    errors.push(FieldError::new(
                        format!("link_domains[{i}]"),
                        "must be a domain name such as clinic.example.org",
                    ));
                }
            }
            ds.sort();
            ds.dedup();
        }
        if let Some(q) = &self.quiet_hours {
            let (s, e) = (minutes(&q.start), minutes(&q.end));
            if s.is_none() {
                errors.push(FieldError::new("quiet_hours.start", "must be HH:MM"));
            }
            if e.is_none() {
                errors.push(FieldError::new("quiet_hours.end", "must be HH:MM"));
            }
            if s.is_some() && s == e {
                errors.push(FieldError::new("quiet_hours.end", "must differ from start"));
            }
            if time_zone(&q.timezone).is_none() {
                errors.push(FieldError::new(
                    "quiet_hours.timezone",
                    "must be an IANA time zone such as America/New_York",
                ));
            }
        }
        if errors.is_empty() {
            Ok(self)
        } else {
            Err(errors)
        }
    }

    /// The first link whose host is outside the allowed domains.
    pub fn forbidden_link(&self, texts: &[&str]) -> Option<String> {
        let allowed = self.link_domains.as_ref()?;
        texts.iter().flat_map(|t| link_hosts(t)).find(|host| {
            !allowed
                .iter()
                .any(|d| host == d || host.ends_with(&format!(".{d}")))
        })
    }

    /// When a non-urgent message accepted at `now_ms` may go, if quiet hours hold it.
    pub fn hold_until(&self, now_ms: i64, recipient_tz: Option<&str>) -> Option<i64> {
        let q = self.quiet_hours.as_ref()?;
        let tz = recipient_tz
            .and_then(time_zone)
            .or_else(|| time_zone(&q.timezone))?;
        let (start, end) = (minutes(&q.start)?, minutes(&q.end)?);
        let now = jiff::Timestamp::from_millisecond(now_ms)
            .ok()?
            .to_zoned_datetime(tz);
        let at = u16::try_from(now.hour()).ok()? * 60 + u16::try_from(now.minute()).ok()?;
        let quiet = if start < end {
            (start..end).contains(&at)
        } else {
            at >= start || at < end
        };
        if !quiet {
            return None;
        }
        let end_time = jiff::civil::Time::new(
            i8::try_from(end / 60).ok()?,
            i8::try_from(end % 60).ok()?,
            0,
            0,
        )
        .ok()?;
        // The end today, or tomorrow when it is already past (a window over midnight, seen
        // before midnight).
        let mut day = now.date();
        if at >= end {
            day = day.tomorrow().ok()?;
        }
        let until = jiff::civil::DateTime::from_parts(day, end_time)
            .to_zoned_datetime(now.time_zone().clone())
            .ok()?;
        Some(until.timestamp().as_millisecond())
    }
}

fn is_tld(s: &str) -> bool {
    const COMMON: &[&str] = &[
        "com", "net", "org", "info", "biz", "io", "co", "ly", "me", "app", "xyz", "link", "click",
        "top", "site", "online", "shop", "live", "health", "care", "clinic", "us", "uk", "de",
        "fr", "es", "it", "nl", "ca", "au", "in", "ru", "cn", "br", "mx", "tk", "ml", "ga", "cf",
        "gq", "cc", "tv", "ws", "to", "gl", "gd", "be", "ch", "at", "se", "no", "dk", "pl", "pt",
        "ie", "nz", "za", "jp", "kr", "eu", "gov", "edu",
    ];
    COMMON.contains(&s)
}

/// What follows `scheme://` in a token (also inside `href=https://…`).
fn after_scheme(token: &str) -> Option<&str> {
    let i = token.find("://")?;
    let start = token[..i]
        .rfind(|c: char| !c.is_ascii_alphanumeric())
        .map_or(0, |j| j + 1);
    (start < i).then(|| &token[i + 3..])
}

/// The hosts of the links in a text, lowercased: anything with a scheme (`https://…`), `www.`,
/// and bare domains (`bit.ly/x`, `example.com`) when a path follows or the top-level domain
/// is a common one. Email addresses are not links.
pub fn link_hosts(text: &str) -> Vec<String> {
    let mut hosts = Vec::new();
    let is_sep = |c: char| c.is_whitespace() || "<>\"'()[]{},;|`".contains(c);
    for token in text.split(is_sep) {
        let t = token.trim_matches(|c: char| ".!?:*".contains(c));
        if t.is_empty() {
            continue;
        }
        let lower = t.to_ascii_lowercase();
        let (rest, explicit) = match after_scheme(&lower) {
            Some(r) => (r, true),
            None => (lower.as_str(), false),
        };
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let mut host = &rest[..end];
        let has_path = end < rest.len();
        if let Some(at) = host.rfind('@') {
            if !explicit {
                // An email address, not a link.
                continue;
            }
            host = &host[at + 1..];
        }
        if let Some((h, port)) = host.rsplit_once(':')
            && port.chars().all(|c| c.is_ascii_digit())
        {
            host = h;
        }
        let host = host.trim_end_matches('.');
        if host.is_empty() || !host.contains('.') {
            continue;
        }
        let tld = host.rsplit('.').next().unwrap_or_default();
        let looks_like_host = host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
            && tld.chars().all(|c| c.is_ascii_alphabetic())
            && tld.len() >= 2;
        let is_ip = host.parse::<std::net::Ipv4Addr>().is_ok();
        if !(looks_like_host || is_ip) {
            continue;
        }
        if explicit || host.starts_with("www.") || has_path || is_ip || is_tld(tld) {
            hosts.push(host.to_owned());
        }
    }
    hosts
}

impl Messaging {
    /// The account's policy, through a short per-node cache (every send asks).
    pub(crate) async fn policy_of(&self, account_id: &str) -> MessagingResult<MessagingPolicy> {
        if let Ok(cache) = self.policy_cache.lock()
            && let Some((p, at)) = cache.get(account_id)
            && at.elapsed() < POLICY_CACHE_TTL
        {
            return Ok(p.clone());
        }
        let p = match self.store.get_policy(account_id).await? {
            Some(raw) => serde_json::from_str::<MessagingPolicy>(&raw).map_err(|_| {
                haven_platform::store::StoreError::Backend(
                    "stored messaging policy is not readable".into(),
                )
            })?,
            None => MessagingPolicy::default(),
        };
        if let Ok(mut cache) = self.policy_cache.lock() {
            if cache.len() > 50_000 {
                cache.clear();
            }
            cache.insert(account_id.to_owned(), (p.clone(), Instant::now()));
        }
        Ok(p)
    }

    pub async fn policy(&self, p: &Principal) -> MessagingResult<MessagingPolicy> {
        p.require(READ)?;
        self.policy_of(&p.account_id).await
    }

    /// Replaces the account's policy.
    pub async fn set_policy(
        &self,
        p: &Principal,
        meta: &RequestMeta,
        policy: MessagingPolicy,
    ) -> MessagingResult<MessagingPolicy> {
        p.require(ADMIN)?;
        let policy = policy.parse().map_err(MessagingError::Invalid)?;
        let raw = serde_json::to_string(&policy).map_err(|_| {
            haven_platform::store::StoreError::Backend("policy not serializable".into())
        })?;
        self.store.put_policy(&p.account_id, &raw, now_ms()).await?;
        if let Ok(mut cache) = self.policy_cache.lock() {
            cache.remove(&p.account_id);
        }
        self.audit
            .record(
                AuditEvent::new(
                    AuditAction::MessagingPolicyChanged,
                    Outcome::Success,
                    p.actor(meta),
                )
                .resource("account", &p.account_id),
            )
            .await;
        Ok(policy)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn finds_links_but_not_names_or_addresses() {
        let t = "Visit https://Portal.Clinic.example.org/x?y=1, or www.evil.com. Dr.Smith at \
                 pat@example.org; bit.ly/abc and evil.io and 10.0.0.1/login, e.g. 10:00.";
        assert_eq!(
            link_hosts(t),
            [
                "portal.clinic.example.org",
                "www.evil.com",
                "bit.ly",
                "evil.io",
                "10.0.0.1"
            ]
        );
        assert_eq!(
            link_hosts(r#"<a href="https://x.example.net/a">go</a> href=http://y.example.org"#),
            ["x.example.net", "y.example.org"]
        );
        assert!(link_hosts("Your appointment is at 10.30 tomorrow.").is_empty());
        assert_eq!(
            link_hosts("https://user@host.example.com/"),
            ["host.example.com"]
        );
    }

    #[test]
    fn allowlist_covers_subdomains_only() {
        let p = MessagingPolicy {
            link_domains: Some(vec!["clinic.example.org".into()]),
            ..Default::default()
        };
        assert_eq!(
            p.forbidden_link(&["see https://portal.clinic.example.org"]),
            None
        );
        assert_eq!(
            p.forbidden_link(&["see https://clinic.example.org.evil.com/"]),
            Some("clinic.example.org.evil.com".into())
        );
        assert_eq!(
            p.forbidden_link(&["see https://evilclinic.example.org/"]),
            Some("evilclinic.example.org".into())
        );
        let none = MessagingPolicy::default();
        assert_eq!(none.forbidden_link(&["https://anything.example"]), None);
    }

    fn ms(rfc3339: &str) -> i64 {
        rfc3339.parse::<jiff::Timestamp>().unwrap().as_millisecond()
    }

    #[test]
    fn quiet_hours_over_midnight_in_the_recipients_zone() {
        let p = MessagingPolicy {
            quiet_hours: Some(QuietHours {
                start: "21:00".into(),
                end: "08:00".into(),
                timezone: "America/New_York".into(),
            }),
            ..Default::default()
        }
        .parse()
        .unwrap();
        // 22:30 in New York (EST, UTC-5) → held until 08:00 the next morning.
        assert_eq!(
            p.hold_until(ms("2026-12-02T03:30:00Z"), None),
            Some(ms("2026-12-02T13:00:00Z"))
        );
        // 03:00 in New York → held until 08:00 the same day.
        assert_eq!(
            p.hold_until(ms("2026-12-02T08:00:00Z"), None),
            Some(ms("2026-12-02T13:00:00Z"))
        );
        // Noon in New York → not held.
        assert_eq!(p.hold_until(ms("2026-12-02T17:00:00Z"), None), None);
        // The same instant is 18:00 in Paris when the recipient's zone is given → not held;
        // 03:30 UTC is 04:30 in Paris → held until 08:00 Paris time.
        assert_eq!(
            p.hold_until(ms("2026-12-02T17:00:00Z"), Some("Europe/Paris")),
            None
        );
        assert_eq!(
            p.hold_until(ms("2026-12-02T03:30:00Z"), Some("Europe/Paris")),
            Some(ms("2026-12-02T07:00:00Z"))
        );
    }

    #[test]
    fn daytime_window_and_bad_policies() {
        let p = MessagingPolicy {
            quiet_hours: Some(QuietHours {
                start: "12:00".into(),
                end: "13:00".into(),
                timezone: "UTC".into(),
            }),
            ..Default::default()
        };
        assert_eq!(
            p.hold_until(ms("2026-12-02T12:15:00Z"), None),
            Some(ms("2026-12-02T13:00:00Z"))
        );
        assert_eq!(p.hold_until(ms("2026-12-02T13:00:00Z"), None), None);
        let bad = MessagingPolicy {
            link_domains: Some(vec!["not a domain".into(), "ok.example".into()]),
            quiet_hours: Some(QuietHours {
                start: "25:00".into(),
                end: "8:00".into(),
                timezone: "Mars/Olympus".into(),
            }),
            ..Default::default()
        };
        let fields: Vec<String> = bad
            .parse()
            .unwrap_err()
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(
            fields,
            [
                "link_domains[0]",
                "quiet_hours.start",
                "quiet_hours.end",
                "quiet_hours.timezone"
            ]
        );
    }
}

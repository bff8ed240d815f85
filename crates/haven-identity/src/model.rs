//! The identity domain's types. Constructors parse: a value of these types is valid by
//! construction, so nothing downstream checks again.

use haven_platform::id;
use ipnet::IpNet;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

pub const ACCOUNT_PREFIX: &str = "acc";
pub const KEY_PREFIX: &str = "hk";
pub const TOKEN_PREFIX: &str = "tok";
pub const SIGNING_KEY_PREFIX: &str = "sig";
/// API key secrets look like `hks_` + 43 base64url characters.
pub const SECRET_PREFIX: &str = "hks_";

/// A field-level problem in a request, reported together with the others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountStatus {
    Active,
    Suspended,
}

impl AccountStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Suspended => "suspended",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "active" => Some(Self::Active),
            "suspended" => Some(Self::Suspended),
            _ => None,
        }
    }
}

/// A tenant: the master account (no parent) or one of its subaccounts (a department).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub id: String,
    pub parent_id: Option<String>,
    pub name: String,
    pub status: AccountStatus,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

/// A display name: 1–100 characters, trimmed, no control characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DisplayName(String);

impl DisplayName {
    pub fn parse(field: &str, raw: &str) -> Result<Self, FieldError> {
        let s = raw.trim();
        if s.is_empty() || s.chars().count() > 100 {
            return Err(FieldError::new(field, "must be 1 to 100 characters"));
        }
        if s.chars().any(char::is_control) {
            return Err(FieldError::new(
                field,
                "must not contain control characters",
            ));
        }
        Ok(Self(s.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The APIs a scope can name.
pub const APIS: &[&str] = &[
    "accounts",
    "keys",
    "audit",
    "webhooks",
    "messages",
    "senders",
    "contacts",
    "templates",
    "dispatch",
    "verify",
    "voice",
    "video",
    "numbers",
    "insight",
    "reports",
    "insights",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Right {
    Read,
    Write,
    Admin,
}

impl Right {
    fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::Admin => "admin",
        }
    }
}

/// `api:right`, for example `messages:write`. `admin` implies `write`, which implies `read`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Scope {
    api: &'static str,
    right: Right,
}

impl Scope {
    pub const fn new(api: &'static str, right: Right) -> Self {
        Self { api, right }
    }
    /// Whether holding `self` grants `wanted`.
    pub fn grants(&self, wanted: &Scope) -> bool {
        self.api == wanted.api && self.right >= wanted.right
    }
    /// Every scope there is, at its highest right: what the bootstrap admin key holds.
    pub fn all_admin() -> Vec<Scope> {
        APIS.iter()
            .map(|a| Scope {
                api: a,
                right: Right::Admin,
            })
            .collect()
    }
}

impl FromStr for Scope {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        let (api, right) = s.split_once(':').ok_or(())?;
        let api = APIS.iter().find(|a| **a == api).ok_or(())?;
        let right = match right {
            "read" => Right::Read,
            "write" => Right::Write,
            "admin" => Right::Admin,
            _ => return Err(()),
        };
        Ok(Self { api, right })
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.api, self.right.as_str())
    }
}

/// A normalized set of scopes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScopeSet(Vec<Scope>);

impl ScopeSet {
    pub fn new(mut scopes: Vec<Scope>) -> Self {
        scopes.sort();
        scopes.dedup();
        Self(scopes)
    }

    /// Parses a list, naming every unknown entry.
    pub fn parse<'a>(
        field: &str,
        raw: impl IntoIterator<Item = &'a str>,
    ) -> Result<Self, FieldError> {
        let mut out = Vec::new();
        let mut bad = Vec::new();
        for s in raw {
            match s.parse::<Scope>() {
                Ok(sc) => out.push(sc),
                Err(()) => bad.push(s.chars().take(64).collect::<String>()),
            }
        }
        if !bad.is_empty() {
            return Err(FieldError::new(
                field,
                format!("unknown scope(s): {}", bad.join(", ")),
            ));
        }
        Ok(Self::new(out))
    }

    /// Parses what was stored or signed by this server; unknown entries are dropped (an older
    /// server version's scope that no longer exists grants nothing).
    pub fn from_stored<'a>(raw: impl IntoIterator<Item = &'a str>) -> Self {
        Self::new(raw.into_iter().filter_map(|s| s.parse().ok()).collect())
    }

    pub fn allows(&self, wanted: &Scope) -> bool {
        self.0.iter().any(|s| s.grants(wanted))
    }

    /// The scopes of `requested` that this set grants.
    pub fn narrow(&self, requested: &ScopeSet) -> ScopeSet {
        ScopeSet::new(
            requested
                .0
                .iter()
                .copied()
                .filter(|s| self.allows(s))
                .collect(),
        )
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn iter(&self) -> impl Iterator<Item = &Scope> {
        self.0.iter()
    }
    pub fn to_strings(&self) -> Vec<String> {
        self.0.iter().map(ToString::to_string).collect()
    }
    /// The OAuth form: space-separated.
    pub fn to_oauth(&self) -> String {
        self.to_strings().join(" ")
    }
}

/// A source-address allowlist entry; a bare address means that one host.
pub fn parse_cidr(raw: &str) -> Option<IpNet> {
    let s = raw.trim();
    s.parse::<IpNet>()
        .ok()
        .map(|n| n.trunc())
        .or_else(|| s.parse::<IpAddr>().ok().map(IpNet::from))
}

/// An API key as stored. The secret itself is never stored, only its keyed hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    pub id: String,
    pub account_id: String,
    pub name: String,
    pub scopes: ScopeSet,
    pub allowed_cidrs: Vec<IpNet>,
    pub expires_at_ms: Option<i64>,
    pub created_at_ms: i64,
    pub last_used_at_ms: Option<i64>,
    pub revoked_at_ms: Option<i64>,
    pub rotated_at_ms: Option<i64>,
    pub secret_hash: Vec<u8>,
    pub previous_secret_hash: Option<Vec<u8>>,
    pub previous_secret_expires_at_ms: Option<i64>,
}

impl ApiKey {
    pub fn status(&self, now_ms: i64) -> KeyStatus {
        if self.revoked_at_ms.is_some() {
            KeyStatus::Revoked
        } else if self.expires_at_ms.is_some_and(|e| e <= now_ms) {
            KeyStatus::Expired
        } else {
            KeyStatus::Active
        }
    }

    pub fn address_allowed(&self, addr: Option<IpAddr>) -> bool {
        address_allowed(&self.allowed_cidrs, addr)
    }
}

pub(crate) fn address_allowed(cidrs: &[IpNet], addr: Option<IpAddr>) -> bool {
    if cidrs.is_empty() {
        return true;
    }
    let Some(addr) = addr else { return false };
    // An IPv4 client seen through an IPv6 socket arrives as ::ffff:a.b.c.d.
    let addr = match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(addr),
        v4 => v4,
    };
    cidrs.iter().any(|n| n.contains(&addr))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyStatus {
    Active,
    Expired,
    Revoked,
}

impl KeyStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Expired => "expired",
            Self::Revoked => "revoked",
        }
    }
}

/// A validated request to create a key.
#[derive(Debug, Clone)]
pub struct NewKey {
    pub name: DisplayName,
    pub scopes: ScopeSet,
    pub allowed_cidrs: Vec<IpNet>,
    pub expires_at_ms: Option<i64>,
}

impl NewKey {
    /// Checks every field and reports all problems together.
    pub fn parse(
        name: &str,
        scopes: &[String],
        allowed_cidrs: &[String],
        expires_at: Option<&str>,
        now_ms: i64,
    ) -> Result<Self, Vec<FieldError>> {
        let mut errors = Vec::new();
        let name = DisplayName::parse("name", name)
            .map_err(|e| errors.push(e))
            .ok();
        let scopes = if scopes.is_empty() || scopes.len() > 64 {
            errors.push(FieldError::new("scopes", "must list 1 to 64 scopes"));
            None
        } else {
            ScopeSet::parse("scopes", scopes.iter().map(String::as_str))
                .map_err(|e| errors.push(e))
                .ok()
        };
        if allowed_cidrs.len() > 100 {
            errors.push(FieldError::new("allowed_cidrs", "at most 100 entries"));
        }
        let mut cidrs = Vec::new();
        for (i, raw) in allowed_cidrs.iter().enumerate() {
            match parse_cidr(raw) {
                Some(n) => cidrs.push(n),
                None => errors.push(FieldError::new(
                    format!("allowed_cidrs[{i}]"),
                    "not a CIDR block or IP address",
                )),
            }
        }
        let expires_at_ms = match expires_at {
            None => None,
            Some(s) => match haven_platform::clock::parse_rfc3339(s) {
                Some(ms) if ms > now_ms => Some(ms),
                Some(_) => {
                    errors.push(FieldError::new("expires_at", "must be in the future"));
                    None
                }
                None => {
                    errors.push(FieldError::new(
                        "expires_at",
                        "must be an RFC 3339 timestamp",
                    ));
                    None
                }
            },
        };
        match (name, scopes) {
            (Some(name), Some(scopes)) if errors.is_empty() => Ok(Self {
                name,
                scopes,
                allowed_cidrs: cidrs,
                expires_at_ms,
            }),
            _ => Err(errors),
        }
    }
}

/// Checks that a path segment is an id of the given kind; anything else names nothing.
pub fn is_id(prefix: &str, s: &str) -> bool {
    id::is_valid(prefix, s)
}

/// A JWT signing key as stored: the private half sealed under the master key.
#[derive(Debug, Clone)]
pub struct SigningKeyRecord {
    pub kid: String,
    pub public_key: Vec<u8>,
    pub sealed_private_key: Vec<u8>,
    pub created_at_ms: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_parse_and_imply() {
        let admin: Scope = "keys:admin".parse().unwrap_or_else(|()| panic!());
        let read: Scope = "keys:read".parse().unwrap_or_else(|()| panic!());
        assert!(admin.grants(&read));
        assert!(!read.grants(&admin));
        assert!("keys:root".parse::<Scope>().is_err());
        assert!("nope:read".parse::<Scope>().is_err());
        let set = ScopeSet::parse("s", ["messages:write", "keys:read"])
            .unwrap_or_else(|e| panic!("{e:?}"));
        let req = ScopeSet::parse("s", ["messages:read", "keys:admin", "audit:read"])
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(set.narrow(&req).to_oauth(), "messages:read");
        assert!(ScopeSet::parse("s", ["bad"]).is_err());
    }

    #[test]
    fn new_key_reports_every_problem() {
        let errs = NewKey::parse(
            "",
            &["x:y".into()],
            &["300.1.1.1/8".into()],
            Some("yesterday"),
            0,
        )
        .err()
        .unwrap_or_default();
        let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            vec!["name", "scopes", "allowed_cidrs[0]", "expires_at"]
        );
    }

    #[test]
    fn allowlist_matches_mapped_addresses() {
        let cidrs = vec![parse_cidr("10.1.0.0/16").unwrap_or_else(|| panic!())];
        assert!(address_allowed(&cidrs, "10.1.2.3".parse().ok()));
        assert!(address_allowed(&cidrs, "::ffff:10.1.2.3".parse().ok()));
        assert!(!address_allowed(&cidrs, "10.2.0.1".parse().ok()));
        assert!(!address_allowed(&cidrs, None));
        assert!(address_allowed(&[], None));
    }
}

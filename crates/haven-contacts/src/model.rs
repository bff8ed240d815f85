//! A contact: a data subject of an account (a patient, a relative, a caregiver), known by the
//! account's own reference (an MRN, a CRM id). Every field but the id is PHI.

use haven_identity::FieldError;
use serde_json::{Map, Value};

pub const CONTACT_PREFIX: &str = "con";
const MAX_REFERENCE: usize = 128;
const MAX_NAME: usize = 200;
const MAX_ATTRIBUTES_BYTES: usize = 8 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContactStatus {
    Active,
    /// The subject's key was destroyed; nothing about it can be read any more.
    Erased,
}

impl ContactStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Erased => "erased",
        }
    }
}

/// A contact as the API shows it. For an erased contact every PHI field is `None`.
#[derive(Debug, Clone)]
pub struct Contact {
    pub id: String,
    pub account_id: String,
    pub status: ContactStatus,
    pub reference: Option<String>,
    pub name: Option<String>,
    pub phone_number: Option<String>,
    pub email: Option<String>,
    pub attributes: Option<Map<String, Value>>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub erased_at_ms: Option<i64>,
}

/// The PHI of a contact, validated and normalized.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ContactFields {
    pub reference: String,
    pub name: Option<String>,
    pub phone_number: Option<String>,
    pub email: Option<String>,
    pub attributes: Option<Map<String, Value>>,
}

/// A change: `None` keeps a field; `Some(None)` clears an optional one.
#[derive(Debug, Clone, Default)]
pub struct ContactPatch {
    pub reference: Option<String>,
    pub name: Option<Option<String>>,
    pub phone_number: Option<Option<String>>,
    pub email: Option<Option<String>>,
    pub attributes: Option<Option<Map<String, Value>>>,
}

/// Equality lookups, through the blind indexes.
#[derive(Debug, Clone, Default)]
pub struct ContactSearch {
    pub reference: Option<String>,
    pub phone_number: Option<String>,
    pub email: Option<String>,
}

fn no_controls(s: &str) -> bool {
    !s.chars().any(char::is_control)
}

pub fn reference(field: &str, raw: &str, errors: &mut Vec<FieldError>) -> String {
    let v = raw.trim();
    if v.is_empty() || v.chars().count() > MAX_REFERENCE || !no_controls(v) {
        errors.push(FieldError::new(
            field,
            format!("must be 1 to {MAX_REFERENCE} characters without control characters"),
        ));
    }
    v.to_owned()
}

pub fn name(field: &str, raw: &str, errors: &mut Vec<FieldError>) -> String {
    let v = raw.trim();
    if v.is_empty() || v.chars().count() > MAX_NAME || !no_controls(v) {
        errors.push(FieldError::new(
            field,
            format!("must be 1 to {MAX_NAME} characters without control characters"),
        ));
    }
    v.to_owned()
}

/// E.164: `+`, a country code not starting with 0, at most 15 digits. Spaces, dots, hyphens
/// and parentheses are removed first.
pub fn phone_number(field: &str, raw: &str, errors: &mut Vec<FieldError>) -> String {
    let v: String = raw
        .chars()
        .filter(|c| !matches!(c, ' ' | '-' | '.' | '(' | ')'))
        .collect();
    let digits = v.strip_prefix('+').unwrap_or("");
    let ok = (8..=15).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0');
    if !ok {
        errors.push(FieldError::new(
            field,
            "must be an E.164 number such as +14155550100",
        ));
    }
    v
}

/// A pragmatic address check (one `@`, a dotted domain, RFC 5321 lengths); the domain is
/// lower-cased.
pub fn email(field: &str, raw: &str, errors: &mut Vec<FieldError>) -> String {
    let v = raw.trim();
    let ok = match v.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && local.len() <= 64
                && domain.len() <= 253
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !domain.contains('@')
                && v.len() <= 254
                && v.chars().all(|c| !c.is_whitespace() && !c.is_control())
        }
        None => false,
    };
    if !ok {
        errors.push(FieldError::new(field, "must be an email address"));
        return v.to_owned();
    }
    let (local, domain) = v.split_once('@').unwrap_or((v, ""));
    format!("{local}@{}", domain.to_ascii_lowercase())
}

pub fn attributes(
    field: &str,
    raw: Map<String, Value>,
    errors: &mut Vec<FieldError>,
) -> Map<String, Value> {
    let size = serde_json::to_vec(&raw)
        .map(|v| v.len())
        .unwrap_or(usize::MAX);
    if size > MAX_ATTRIBUTES_BYTES {
        errors.push(FieldError::new(
            field,
            format!("must be at most {MAX_ATTRIBUTES_BYTES} bytes of JSON"),
        ));
    }
    raw
}

/// The blind-index key of an email: the whole address, lower-cased.
pub fn email_index_value(email: &str) -> String {
    email.to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phone_numbers_normalize_to_e164() {
        let mut e = Vec::new();
        assert_eq!(
            phone_number("p", "+1 (415) 555-0100", &mut e),
            "+14155550100"
        );
        assert!(e.is_empty());
        for bad in [
            "14155550100",
            "+0123456789",
            "+1415",
            "+1415555010012345",
            "+1-abc-555",
        ] {
            let mut e = Vec::new();
            phone_number("p", bad, &mut e);
            assert_eq!(e.len(), 1, "{bad}");
        }
    }

    #[test]
    fn emails_are_checked_and_domain_lowercased() {
        let mut e = Vec::new();
        assert_eq!(email("e", " Ada@Example.ORG ", &mut e), "Ada@example.org");
        assert!(e.is_empty());
        for bad in [
            "ada",
            "ada@",
            "@x.org",
            "a b@x.org",
            "a@x",
            "a@.x.org",
            "a@@x.org",
        ] {
            let mut e = Vec::new();
            email("e", bad, &mut e);
            assert_eq!(e.len(), 1, "{bad}");
        }
    }
}

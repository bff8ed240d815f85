//! The fraud guard in front of every code sent by SMS: where the number is (the account's
//! country allowlist), what it is (premium-rate and shared-cost numbers, satellite and other
//! high-risk ranges are refused), how often it and its prefix and the end user's address were
//! sent to (velocity limits), and whether codes sent to its prefix are ever used (SMS pumping:
//! a prefix whose conversion rate collapses is blocked until the account unblocks it).

use serde::{Deserialize, Serialize};

/// Ranges refused whatever the account says: the international networks, satellite services
/// and premium numbering that toll-fraud (IRSF) and SMS pumping use most.
pub const HIGH_RISK_PREFIXES: &[&str] = &[
    "+870", // Inmarsat
    "+878", // Universal Personal Telecommunications
    "+879", // reserved for national non-commercial purposes
    "+881", // Global Mobile Satellite System
    "+882", // International Networks
    "+883", // International Networks
    "+888", // OCHA
    "+979", // International Premium Rate Service
];

/// How many digits after `+` make the prefix that velocity limits and pumping statistics are
/// kept by (a country code and the start of the national range).
pub const PREFIX_DIGITS: usize = 6;

/// What is known of a destination number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    /// ISO 3166-1 alpha-2, when the number's region is known.
    pub country: Option<String>,
    /// Premium-rate or shared-cost by the numbering plan (libphonenumber's metadata).
    pub premium: bool,
    /// `+` and the first [`PREFIX_DIGITS`] digits.
    pub prefix: String,
}

/// Classifies an E.164 number.
pub fn classify(e164: &str) -> Destination {
    let digits: String = e164.chars().filter(char::is_ascii_digit).collect();
    let prefix = format!("+{}", &digits[..digits.len().min(PREFIX_DIGITS)]);
    match phonenumber::parse(None, e164) {
        Ok(n) => {
            let kind = n.number_type(&phonenumber::metadata::DATABASE);
            Destination {
                country: n.country().id().map(|id| id.as_ref().to_owned()),
                premium: matches!(
                    kind,
                    phonenumber::Type::PremiumRate | phonenumber::Type::SharedCost
                ),
                prefix,
            }
        }
        Err(_) => Destination {
            country: None,
            premium: false,
            prefix,
        },
    }
}

/// An account's Verify policy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VerifyPolicy {
    /// When set, SMS codes go only to numbers of these countries (ISO alpha-2).
    pub allowed_countries: Option<Vec<String>>,
    /// Prefixes (`+` and digits) refused on top of the built-in high-risk ranges.
    pub blocked_prefixes: Vec<String>,
}

impl VerifyPolicy {
    pub fn parse(mut self) -> Result<Self, Vec<haven_identity::FieldError>> {
        let mut errors = Vec::new();
        if let Some(cs) = &mut self.allowed_countries {
            for (i, c) in cs.iter_mut().enumerate() {
                *c = c.trim().to_ascii_uppercase();
                if c.len() != 2 || !c.chars().all(|ch| ch.is_ascii_uppercase()) {
                    errors.push(haven_identity::FieldError::new(
                        format!("allowed_countries[{i}]"),
                        "must be an ISO 3166-1 alpha-2 code such as US",
                    ));
                }
            }
            cs.sort();
            cs.dedup();
        }
        for (i, p) in self.blocked_prefixes.iter_mut().enumerate() {
            *p = p.trim().to_owned();
            let digits = p.strip_prefix('+').unwrap_or_default();
            if digits.is_empty() || digits.len() > 15 || !digits.bytes().all(|b| b.is_ascii_digit())
            {
                errors.push(haven_identity::FieldError::new(
                    format!("blocked_prefixes[{i}]"),
                    "must be + and 1 to 15 digits",
                ));
            }
        }
        self.blocked_prefixes.sort();
        self.blocked_prefixes.dedup();
        if errors.is_empty() {
            Ok(self)
        } else {
            Err(errors)
        }
    }

    /// Why a number may not be sent a code, if it may not.
    pub fn refusal(&self, e164: &str, d: &Destination) -> Option<&'static str> {
        if HIGH_RISK_PREFIXES.iter().any(|p| e164.starts_with(p)) {
            return Some("high_risk_range");
        }
        if d.premium {
            return Some("premium_rate");
        }
        if self
            .blocked_prefixes
            .iter()
            .any(|p| e164.starts_with(p.as_str()))
        {
            return Some("blocked_prefix");
        }
        if let Some(allowed) = &self.allowed_countries
            && !d.country.as_ref().is_some_and(|c| allowed.contains(c))
        {
            return Some("country_not_allowed");
        }
        None
    }
}

/// Whether codes sent to a prefix look pumped: enough sends, too few of them used.
pub fn pumped(sends: i64, conversions: i64, min_sends: i64, min_conversion: f64) -> bool {
    if sends < min_sends || sends <= 0 {
        return false;
    }
    // i64 counts of a window fit f64 exactly.
    #[allow(clippy::cast_precision_loss)]
    let rate = conversions as f64 / sends as f64;
    rate < min_conversion
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn regions_and_premium_numbers() {
        let us = classify("+14155550100");
        assert_eq!(us.country.as_deref(), Some("US"));
        assert_eq!(us.prefix, "+141555");
        assert!(!us.premium);
        let jm = classify("+18765550123");
        assert_eq!(
            jm.country.as_deref(),
            Some("JM"),
            "NANP numbers by area code"
        );
        let gb_premium = classify("+449098790123");
        assert_eq!(gb_premium.country.as_deref(), Some("GB"));
        assert!(gb_premium.premium, "UK 09 numbers are premium rate");
        let fr = classify("+33612345678");
        assert_eq!(fr.country.as_deref(), Some("FR"));
        assert!(!fr.premium);
    }

    #[test]
    fn refusals() {
        let p = VerifyPolicy {
            allowed_countries: Some(vec!["us".into(), "CA".into()]),
            blocked_prefixes: vec!["+1415666".into()],
        }
        .parse()
        .unwrap();
        let r = |n: &str| p.refusal(n, &classify(n));
        assert_eq!(r("+14155550100"), None);
        assert_eq!(r("+18765550123"), Some("country_not_allowed"));
        assert_eq!(r("+33612345678"), Some("country_not_allowed"));
        assert_eq!(r("+881612345678"), Some("high_risk_range"));
        assert_eq!(r("+449098790123"), Some("premium_rate"));
        assert_eq!(r("+14156660100"), Some("blocked_prefix"));
        assert_eq!(r("+19005550100"), Some("premium_rate"), "US 900 numbers");
        let open = VerifyPolicy::default();
        assert_eq!(
            open.refusal("+33612345678", &classify("+33612345678")),
            None
        );
        assert!(
            VerifyPolicy {
                allowed_countries: Some(vec!["USA".into()]),
                blocked_prefixes: vec!["44".into()],
            }
            .parse()
            .unwrap_err()
            .len()
                == 2
        );
    }

    #[test]
    fn pumping_needs_a_sample_and_a_collapse() {
        assert!(!pumped(5, 0, 20, 0.2), "too few to judge");
        assert!(pumped(40, 2, 20, 0.2));
        assert!(!pumped(40, 20, 20, 0.2));
    }
}

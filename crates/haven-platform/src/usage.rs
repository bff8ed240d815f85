//! The usage ledger's record: what a domain writes, in the same transaction as the send it
//! counts, so that a message taken by a carrier is counted exactly once and never without
//! being sent. Reading and summing records is the Reports API's (`haven-reports`).
//!
//! Prices come from the operator's rate card (`[usage]` in the configuration) at the moment
//! of the send, in millionths of the currency unit, so that a later change of the rate card
//! does not rewrite history.

use serde::{Deserialize, Serialize};

/// The products a usage record can belong to.
pub const PRODUCTS: &[&str] = &["messages", "dispatch", "verify"];

/// One billable use: one message taken by a carrier, with the units it cost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageRecord {
    /// `usg_…`.
    pub id: String,
    pub account_id: String,
    /// `messages`, `dispatch` or `verify`: the API the send was made through.
    pub product: String,
    /// `sms`, `email`…
    pub channel: String,
    /// What was used: the message id. One record per resource.
    pub resource_id: String,
    /// The verification or dispatch the message was sent for.
    pub reference_id: Option<String>,
    /// ISO 3166-1 alpha-2 of the destination, when it is a phone number of a known region.
    pub country: Option<String>,
    /// How many units: SMS segments, or 1 per email.
    pub units: i64,
    /// `sms_segment` or `email`.
    pub unit: String,
    /// The price of one unit on the rate card, in millionths of `currency`; `None` when the
    /// rate card has no rate for it.
    pub unit_price_micros: Option<i64>,
    pub currency: Option<String>,
    pub created_at_ms: i64,
}

impl UsageRecord {
    /// The record's total price in millionths of its currency.
    pub fn price_micros(&self) -> Option<i64> {
        self.unit_price_micros.map(|p| p.saturating_mul(self.units))
    }
}

/// The product a message belongs to, from the workflow it is a step of (by id prefix).
pub fn product_of(workflow_id: Option<&str>) -> &'static str {
    match workflow_id {
        Some(w) if w.starts_with("ver_") => "verify",
        Some(w) if w.starts_with("dsp_") => "dispatch",
        _ => "messages",
    }
}

/// One line of the rate card.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    /// `sms` or `email`.
    pub channel: String,
    /// ISO 3166-1 alpha-2; absent for the channel's default rate.
    #[serde(default)]
    pub country: Option<String>,
    /// The price of one unit, as a decimal string with up to six decimals (`"0.0079"`).
    pub price: String,
}

/// The operator's prices: the most specific rate (channel and country, then channel) wins.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UsageConfig {
    /// ISO 4217 code of every price (`"USD"`); required when `rates` is not empty.
    pub currency: Option<String>,
    pub rates: Vec<Rate>,
}

impl UsageConfig {
    /// Problems with the rate card, as `(path, message)`.
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut p = Vec::new();
        match &self.currency {
            Some(c) if !(c.len() == 3 && c.bytes().all(|b| b.is_ascii_uppercase())) => p.push((
                "usage.currency".to_owned(),
                "must be an ISO 4217 code such as \"USD\"".to_owned(),
            )),
            None if !self.rates.is_empty() => p.push((
                "usage.currency".to_owned(),
                "is required when rates are set".to_owned(),
            )),
            _ => {}
        }
        let mut seen = std::collections::HashSet::new();
        for (i, r) in self.rates.iter().enumerate() {
            if !matches!(r.channel.as_str(), "sms" | "email") {
                p.push((
                    format!("usage.rates[{i}].channel"),
                    "must be \"sms\" or \"email\"".to_owned(),
                ));
            }
            if let Some(c) = &r.country
                && !(c.len() == 2 && c.bytes().all(|b| b.is_ascii_uppercase()))
            {
                p.push((
                    format!("usage.rates[{i}].country"),
                    "must be an ISO 3166-1 alpha-2 code such as \"US\"".to_owned(),
                ));
            }
            if parse_micros(&r.price).is_none() {
                p.push((
                    format!("usage.rates[{i}].price"),
                    "must be a non-negative decimal with at most six decimals, such as \"0.0079\""
                        .to_owned(),
                ));
            }
            if !seen.insert((r.channel.clone(), r.country.clone())) {
                p.push((
                    format!("usage.rates[{i}]"),
                    "repeats the rate of an earlier line for the same channel and country"
                        .to_owned(),
                ));
            }
        }
        p
    }

    /// The unit price for a channel and destination country, in millionths.
    pub fn unit_price(&self, channel: &str, country: Option<&str>) -> Option<i64> {
        let exact = country.and_then(|c| {
            self.rates
                .iter()
                .find(|r| r.channel == channel && r.country.as_deref() == Some(c))
        });
        exact
            .or_else(|| {
                self.rates
                    .iter()
                    .find(|r| r.channel == channel && r.country.is_none())
            })
            .and_then(|r| parse_micros(&r.price))
    }
}

/// `"0.0079"` → 7,900. Refuses signs, exponents, more than six decimals and overflow.
pub fn parse_micros(s: &str) -> Option<i64> {
    let (whole, frac) = match s.split_once('.') {
        Some((w, f)) => (w, f),
        None => (s, ""),
    };
    if whole.is_empty()
        || whole.len() > 12
        || frac.len() > 6
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
        || (s.contains('.') && frac.is_empty())
    {
        return None;
    }
    let w: i64 = whole.parse().ok()?;
    let f: i64 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<6}").parse().ok()?
    };
    w.checked_mul(1_000_000)?.checked_add(f)
}

/// 7,900 → `"0.0079"`; at least two decimals (`"1.00"`), never more than six.
pub fn format_micros(v: i64) -> String {
    let sign = if v < 0 { "-" } else { "" };
    let a = v.unsigned_abs();
    let mut frac = format!("{:06}", a % 1_000_000);
    while frac.len() > 2 && frac.ends_with('0') {
        frac.pop();
    }
    format!("{sign}{}.{frac}", a / 1_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prices_round_trip_exactly() {
        assert_eq!(parse_micros("0.0079"), Some(7_900));
        assert_eq!(parse_micros("1"), Some(1_000_000));
        assert_eq!(parse_micros("12.5"), Some(12_500_000));
        assert_eq!(parse_micros("0.000001"), Some(1));
        for bad in [
            "",
            ".5",
            "1.",
            "-1",
            "1e3",
            "0.0000001",
            "1,5",
            " 1",
            "9999999999999",
        ] {
            assert_eq!(parse_micros(bad), None, "{bad:?}");
        }
        assert_eq!(format_micros(7_900), "0.0079");
        assert_eq!(format_micros(1_000_000), "1.00");
        assert_eq!(format_micros(1), "0.000001");
        assert_eq!(format_micros(0), "0.00");
        assert_eq!(format_micros(-15_800), "-0.0158");
    }

    #[test]
    fn the_most_specific_rate_wins() {
        let card = UsageConfig {
            currency: Some("USD".into()),
            rates: vec![
                Rate {
                    channel: "sms".into(),
                    country: None,
                    price: "0.05".into(),
                },
                Rate {
                    channel: "sms".into(),
                    country: Some("US".into()),
                    price: "0.0079".into(),
                },
            ],
        };
        assert!(card.problems().is_empty());
        assert_eq!(card.unit_price("sms", Some("US")), Some(7_900));
        assert_eq!(card.unit_price("sms", Some("DE")), Some(50_000));
        assert_eq!(card.unit_price("sms", None), Some(50_000));
        assert_eq!(card.unit_price("email", None), None);
    }

    #[test]
    fn a_bad_rate_card_is_explained() {
        let card = UsageConfig {
            currency: None,
            rates: vec![
                Rate {
                    channel: "fax".into(),
                    country: Some("usa".into()),
                    price: "-1".into(),
                },
                Rate {
                    channel: "fax".into(),
                    country: Some("usa".into()),
                    price: "1".into(),
                },
            ],
        };
        let paths: Vec<String> = card.problems().into_iter().map(|(p, _)| p).collect();
        assert_eq!(
            paths,
            [
                "usage.currency",
                "usage.rates[0].channel",
                "usage.rates[0].country",
                "usage.rates[0].price",
                "usage.rates[1].channel",
                "usage.rates[1].country",
                "usage.rates[1]"
            ]
        );
    }

    #[test]
    fn products_follow_the_workflow() {
        assert_eq!(product_of(None), "messages");
        assert_eq!(product_of(Some("ver_01abc")), "verify");
        assert_eq!(product_of(Some("dsp_01abc")), "dispatch");
    }
}

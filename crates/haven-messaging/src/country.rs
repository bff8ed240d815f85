//! The country of a destination number, for its usage record, once per message sent.
//!
//! `phonenumber::parse(…).country().id()` gives it, but costs about 17 µs for a US number:
//! the parse normalises the text with regular expressions, and every pattern it matches is
//! looked up by its text (hashed with SipHash) in one least-recently-used cache of 100
//! compiled patterns, shared behind a lock (a pattern pushed out is compiled again). A plain
//! `+digits` number is resolved here straight from the same metadata, the way
//! libphonenumber resolves a parsed number's region: by its country calling code, and where
//! several regions share that code (+1, +7, +44, …), the first of them whose leading digits
//! start the national number or whose patterns give it a type. The patterns of those regions
//! are compiled once, on first use of their code. Where the parse finds a region, this finds
//! the same one (tested on every example number of every region); anything that is not plain
//! digits goes through the parse.

use phonenumber::metadata::{DATABASE, Descriptor};
use regex::{Regex, RegexBuilder};
use std::collections::HashMap;
use std::sync::OnceLock;

/// The region (ISO 3166-1 alpha-2) of an E.164 number, or None when it has none.
pub(crate) fn country_of(e164: &str) -> Option<String> {
    match e164.strip_prefix('+') {
        Some(digits)
            if (4..=17).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()) =>
        {
            region_of_digits(digits)
        }
        _ => phonenumber::parse(None, e164)
            .ok()
            .and_then(|n| n.country().id())
            .map(|id| id.as_ref().to_owned()),
    }
}

/// A metadata pattern, as phonenumber compiles it (its whitespace is layout).
fn compile(pattern: &str) -> Option<Regex> {
    RegexBuilder::new(pattern)
        .ignore_whitespace(true)
        .build()
        .ok()
}

/// One pattern of the metadata: the lengths it allows and its regular expression.
struct Pattern {
    lengths: Vec<u16>,
    re: Regex,
}

impl Pattern {
    fn of(d: &Descriptor) -> Option<Pattern> {
        Some(Pattern {
            lengths: d.possible_length().to_vec(),
            re: compile(d.national_number().as_str())?,
        })
    }

    /// As `Descriptor::is_match`: a possible length, and a match at the start.
    fn matches(&self, national: &str) -> bool {
        (self.lengths.is_empty() || self.lengths.contains(&(national.len() as u16)))
            && self.re.find(national).is_some_and(|m| m.start() == 0)
    }
}

/// One region of a shared calling code, in the metadata's order.
struct Region {
    id: String,
    /// The leading digits that claim a national number for this region, when it has them.
    leading: Option<Regex>,
    general: Option<Pattern>,
    /// Every kind of number (premium rate, toll free, …, fixed line, mobile).
    kinds: Vec<Pattern>,
}

impl Region {
    /// Whether this region claims `national` (libphonenumber's test, in its order).
    fn claims(&self, national: &str) -> bool {
        match &self.leading {
            Some(lead) => lead.find(national).is_some_and(|m| m.start() == 0),
            None => {
                self.general.as_ref().is_some_and(|g| g.matches(national))
                    && self.kinds.iter().any(|k| k.matches(national))
            }
        }
    }
}

/// The regions of each shared calling code, compiled on first use of that code.
fn shared_code(code: u16, ids: &[&str]) -> &'static [Region] {
    static CODES: OnceLock<HashMap<u16, OnceLock<Vec<Region>>>> = OnceLock::new();
    let codes = CODES.get_or_init(|| {
        (1..1000u16)
            .filter(|c| DATABASE.region(c).is_some_and(|r| r.len() > 1))
            .map(|c| (c, OnceLock::new()))
            .collect()
    });
    let Some(cell) = codes.get(&code) else {
        return &[];
    };
    cell.get_or_init(|| {
        ids.iter()
            .filter_map(|id| {
                let meta = DATABASE.by_id(*id)?;
                let d = meta.descriptors();
                Some(Region {
                    id: (*id).to_owned(),
                    leading: meta.leading_digits().and_then(|l| compile(l.as_str())),
                    general: Pattern::of(d.general()),
                    kinds: [
                        d.premium_rate(),
                        d.toll_free(),
                        d.shared_cost(),
                        d.voip(),
                        d.personal_number(),
                        d.pager(),
                        d.uan(),
                        d.voicemail(),
                        d.fixed_line(),
                        d.mobile(),
                    ]
                    .into_iter()
                    .flatten()
                    .filter_map(Pattern::of)
                    .collect(),
                })
            })
            .collect()
    })
}

/// `country_of` for the digits of an E.164 number (country calling code first).
fn region_of_digits(digits: &str) -> Option<String> {
    // Country calling codes are prefix-free: at most one of the first 1–3 digits is one.
    let (code, ids, national) = (1..=3).find_map(|len| {
        let code: u16 = digits.get(..len)?.parse().ok()?;
        let ids = DATABASE.region(&code)?;
        Some((code, ids, digits.get(len..)?))
    })?;
    if let [only] = ids.as_slice() {
        // "001": a non-geographic code (satellite, international networks).
        return (*only != "001").then(|| (*only).to_owned());
    }
    // As the parsed number has it: its national number is an integer (no leading zeros).
    let national = national.parse::<u64>().ok()?.to_string();
    shared_code(code, &ids)
        .iter()
        .find(|r| r.claims(&national))
        .map(|r| r.id.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_have_their_country() {
        assert_eq!(country_of("+14155550100").as_deref(), Some("US"));
        assert_eq!(country_of("+447400123456").as_deref(), Some("GB"));
        assert_eq!(country_of("+4915123456789").as_deref(), Some("DE"));
        assert_eq!(country_of("not a number"), None);
        assert_eq!(country_of("+16135550100").as_deref(), Some("CA"));
        assert_eq!(country_of("+12684641234").as_deref(), Some("AG"));
        assert_eq!(country_of("+79123456789").as_deref(), Some("RU"));
        assert_eq!(country_of("+77012345678").as_deref(), Some("KZ"));
        assert_eq!(country_of("+393123456789").as_deref(), Some("IT"));
        assert_eq!(country_of("+80012345678"), None);
        assert_eq!(country_of("+999123456"), None);
        assert_eq!(country_of("+1 415 555 0100").as_deref(), Some("US"));
    }

    /// The fast path agrees with `phonenumber::parse` on every example number of every
    /// region in the metadata (each kind: fixed line, mobile, toll free, …).
    #[test]
    fn the_fast_country_lookup_agrees_with_the_parse_on_every_example_number() {
        use phonenumber::metadata::DATABASE;
        let mut checked = 0;
        let mut disagree = Vec::new();
        for code in 1..1000u16 {
            let Some(metas) = DATABASE.by_code(&code) else {
                continue;
            };
            for meta in metas {
                let d = meta.descriptors();
                let kinds = [
                    Some(d.general()),
                    d.fixed_line(),
                    d.mobile(),
                    d.toll_free(),
                    d.premium_rate(),
                    d.shared_cost(),
                    d.personal_number(),
                    d.voip(),
                    d.pager(),
                    d.uan(),
                    d.voicemail(),
                ];
                for example in kinds.into_iter().flatten().filter_map(|k| k.example()) {
                    let number = format!("+{code}{example}");
                    let parsed = phonenumber::parse(None, &number)
                        .ok()
                        .and_then(|n| n.country().id())
                        .map(|id| id.as_ref().to_owned());
                    let fast = region_of_digits(&number[1..]);
                    checked += 1;
                    if parsed.is_some() && parsed != fast {
                        disagree.push(format!("{number}: parse {parsed:?}, fast {fast:?}"));
                    }
                }
            }
        }
        assert!(checked > 1000, "only {checked} example numbers");
        assert!(
            disagree.is_empty(),
            "{} of {checked}: {disagree:#?}",
            disagree.len()
        );
    }
}

//! SMSC delivery receipts: detection by `esm_class`, the de-facto text format
//! (`id:… sub:… dlvrd:… submit date:… done date:… stat:DELIVRD err:000 text:…`, SMPP 3.4
//! Appendix B) and the `receipted_message_id` / `message_state` TLVs, which win when present.

use haven_channel::ReceiptState;

use crate::encoding;
use crate::pdu::{Sm, TlvList};

/// `esm_class` message-type value (bits 2–5) of an SMSC delivery receipt.
pub const ESM_SMSC_RECEIPT: u8 = 0x04;

/// Whether a deliver_sm with this `esm_class` is an SMSC delivery receipt (bits 2–5 = 0x04).
pub fn is_receipt(esm_class: u8) -> bool {
    esm_class & 0x3C == ESM_SMSC_RECEIPT
}

/// The fields of a receipt's text, each present only when the text had it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReceiptText {
    pub id: Option<String>,
    pub sub: Option<String>,
    pub dlvrd: Option<String>,
    pub submit_date: Option<String>,
    pub done_date: Option<String>,
    pub stat: Option<String>,
    pub err: Option<String>,
    pub text: Option<String>,
}

const KEYS: [&str; 10] = [
    "id",
    "sub",
    "dlvrd",
    "submit date",
    "submit_date",
    "done date",
    "done_date",
    "stat",
    "err",
    "text",
];

/// Parse the receipt text format. Keys are case-insensitive, any may be missing, and values
/// run to the next key (so `text:` may hold spaces).
pub fn parse_text(s: &str) -> ReceiptText {
    let lower = s.to_ascii_lowercase();
    let lb = lower.as_bytes();
    // (start of key, start of value, key index)
    let mut found: Vec<(usize, usize, usize)> = Vec::new();
    for (ki, key) in KEYS.iter().enumerate() {
        let mut from = 0;
        while let Some(rel) = lower.get(from..).and_then(|h| h.find(key)) {
            let at = from + rel;
            let after = at + key.len();
            let boundary_ok = at == 0 || lb.get(at - 1).is_some_and(|b| b.is_ascii_whitespace());
            if boundary_ok && lb.get(after) == Some(&b':') {
                // The first occurrence of each key counts; anything later is inside a value
                // (typically text:).
                if !found.iter().any(|f| f.2 == ki) {
                    found.push((at, after + 1, ki));
                }
                break;
            }
            from = at + 1;
        }
    }
    found.sort_unstable();
    // A key that starts inside an earlier `text:` value is part of that text.
    if let Some(text_at) = found.iter().find(|f| KEYS[f.2] == "text").map(|f| f.1) {
        found.retain(|f| f.0 < text_at || KEYS[f.2] == "text");
    }
    let mut out = ReceiptText::default();
    for (i, &(_, vstart, ki)) in found.iter().enumerate() {
        let vend = found.get(i + 1).map_or(s.len(), |n| n.0);
        let Some(raw) = s.get(vstart..vend) else {
            continue;
        };
        let v = raw.trim();
        let v = (!v.is_empty()).then(|| v.to_string());
        match KEYS[ki] {
            "id" => out.id = v,
            "sub" => out.sub = v,
            "dlvrd" => out.dlvrd = v,
            "submit date" | "submit_date" => out.submit_date = v,
            "done date" | "done_date" => out.done_date = v,
            "stat" => out.stat = v,
            "err" => out.err = v,
            _ => out.text = v,
        }
    }
    out
}

/// Map a receipt `stat:` value.
pub fn map_stat(stat: &str) -> ReceiptState {
    match stat.trim().to_ascii_uppercase().as_str() {
        "DELIVRD" | "DELIVERED" => ReceiptState::Delivered,
        "EXPIRED" => ReceiptState::Expired,
        "UNDELIV" | "UNDELIVERABLE" | "DELETED" => ReceiptState::Failed,
        "REJECTD" | "REJECTED" => ReceiptState::Rejected,
        "ACCEPTD" | "ACCEPTED" | "ENROUTE" | "SCHEDULED" => ReceiptState::EnRoute,
        _ => ReceiptState::Unknown,
    }
}

/// Map a `message_state` TLV value (SMPP 3.4 §5.2.28); `None` for values outside the table.
pub fn map_message_state(v: u8) -> Option<ReceiptState> {
    Some(match v {
        0 | 1 | 6 => ReceiptState::EnRoute, // SCHEDULED (5.0), ENROUTE, ACCEPTED
        2 => ReceiptState::Delivered,
        3 => ReceiptState::Expired,
        4 | 5 => ReceiptState::Failed, // DELETED, UNDELIVERABLE
        7 => ReceiptState::Unknown,
        8 => ReceiptState::Rejected,
        9 => ReceiptState::Failed, // SKIPPED (5.0)
        _ => return None,
    })
}

/// A delivery receipt, combined from TLVs and text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// The SMSC's message id, as in submit_sm_resp.
    pub message_id: String,
    pub state: ReceiptState,
    /// The `err:` field, or the `network_error_code` TLV as `NNN:EEEEE` when there is no text.
    pub error_code: Option<String>,
    /// The raw `stat:` value, when the text had one.
    pub stat: Option<String>,
}

/// Read a receipt from a deliver_sm (whose `esm_class` says it is one). `None` when it names
/// no message id at all.
pub fn from_deliver_sm(sm: &Sm) -> Option<Receipt> {
    let body = sm.content();
    let body = if sm.has_udh() {
        encoding::split_udh(body).1
    } else {
        body
    };
    let text = parse_text(&encoding::decode_text(sm.data_coding, body));
    let message_id = sm
        .receipted_message_id()
        .or_else(|| text.id.clone())
        .filter(|s| !s.is_empty())?;
    let state = sm
        .message_state()
        .and_then(map_message_state)
        .or_else(|| text.stat.as_deref().map(map_stat))
        .unwrap_or(ReceiptState::Unknown);
    let error_code = text.err.clone().or_else(|| {
        sm.network_error_code()
            .filter(|(_, code)| *code != 0)
            .map(|(t, code)| format!("{t:03}:{code:05}"))
    });
    Some(Receipt {
        message_id,
        state,
        error_code,
        stat: text.stat,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::pdu::{Tlv, tag};

    const STD: &str = "id:0123456789 sub:001 dlvrd:001 submit date:2405011200 done date:2405011201 stat:DELIVRD err:000 text:Hello world id:x";

    #[test]
    fn parses_standard_text() {
        let r = parse_text(STD);
        assert_eq!(r.id.as_deref(), Some("0123456789"));
        assert_eq!(r.sub.as_deref(), Some("001"));
        assert_eq!(r.dlvrd.as_deref(), Some("001"));
        assert_eq!(r.submit_date.as_deref(), Some("2405011200"));
        assert_eq!(r.done_date.as_deref(), Some("2405011201"));
        assert_eq!(r.stat.as_deref(), Some("DELIVRD"));
        assert_eq!(r.err.as_deref(), Some("000"));
        assert_eq!(r.text.as_deref(), Some("Hello world id:x"));
    }

    #[test]
    fn tolerant_of_case_and_missing_fields() {
        let r = parse_text("ID:abc STAT:undeliv Err:001");
        assert_eq!(r.id.as_deref(), Some("abc"));
        assert_eq!(r.stat.as_deref(), Some("undeliv"));
        assert_eq!(r.err.as_deref(), Some("001"));
        assert_eq!(r.done_date, None);
        assert_eq!(parse_text(""), ReceiptText::default());
        assert_eq!(parse_text("garbage without keys"), ReceiptText::default());
        // 'id' inside another word does not count
        assert_eq!(parse_text("valid:1").id, None);
    }

    #[test]
    fn stat_mapping() {
        assert_eq!(map_stat("DELIVRD"), ReceiptState::Delivered);
        assert_eq!(map_stat("expired"), ReceiptState::Expired);
        assert_eq!(map_stat("UNDELIV"), ReceiptState::Failed);
        assert_eq!(map_stat("DELETED"), ReceiptState::Failed);
        assert_eq!(map_stat("REJECTD"), ReceiptState::Rejected);
        assert_eq!(map_stat("ACCEPTD"), ReceiptState::EnRoute);
        assert_eq!(map_stat("ENROUTE"), ReceiptState::EnRoute);
        assert_eq!(map_stat("UNKNOWN"), ReceiptState::Unknown);
        assert_eq!(map_stat("???"), ReceiptState::Unknown);
        assert_eq!(map_message_state(2), Some(ReceiptState::Delivered));
        assert_eq!(map_message_state(5), Some(ReceiptState::Failed));
        assert_eq!(map_message_state(200), None);
    }

    #[test]
    fn detection() {
        assert!(is_receipt(0x04));
        assert!(is_receipt(0x44));
        assert!(!is_receipt(0x00));
        assert!(!is_receipt(0x40));
        assert!(!is_receipt(0x08));
    }

    #[test]
    fn tlvs_win_over_text() {
        let sm = Sm {
            esm_class: 0x04,
            short_message: STD.as_bytes().to_vec(),
            data_coding: 1,
            tlvs: vec![
                Tlv::cstring(tag::RECEIPTED_MESSAGE_ID, "A1B2"),
                Tlv::u8(tag::MESSAGE_STATE, 5),
            ],
            ..Default::default()
        };
        let r = from_deliver_sm(&sm).unwrap();
        assert_eq!(r.message_id, "A1B2");
        assert_eq!(r.state, ReceiptState::Failed);
        assert_eq!(r.error_code.as_deref(), Some("000"));

        let sm = Sm {
            esm_class: 0x04,
            short_message: STD.as_bytes().to_vec(),
            ..Default::default()
        };
        let r = from_deliver_sm(&sm).unwrap();
        assert_eq!(r.message_id, "0123456789");
        assert_eq!(r.state, ReceiptState::Delivered);

        let sm = Sm {
            esm_class: 0x04,
            short_message: b"nothing useful".to_vec(),
            ..Default::default()
        };
        assert_eq!(from_deliver_sm(&sm), None);

        let sm = Sm {
            esm_class: 0x04,
            tlvs: vec![
                Tlv::cstring(tag::RECEIPTED_MESSAGE_ID, "X"),
                Tlv {
                    tag: tag::NETWORK_ERROR_CODE,
                    value: vec![3, 0, 27],
                },
            ],
            ..Default::default()
        };
        let r = from_deliver_sm(&sm).unwrap();
        assert_eq!(r.state, ReceiptState::Unknown);
        assert_eq!(r.error_code.as_deref(), Some("003:00027"));
    }
}

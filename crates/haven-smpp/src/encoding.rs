//! Text encodings and segmentation for SMS.
//!
//! Outbound text goes out as GSM 03.38 (default alphabet plus the extension table behind the
//! 0x1B escape, unpacked: one septet per octet, `data_coding` 0x00) when every character is
//! representable, else as UCS-2 (UTF-16BE, `data_coding` 0x08; characters outside the BMP travel
//! as surrogate pairs). Long text is split into parts carrying a concatenation UDH
//! (`05 00 03 ref total seq`), never splitting an escape pair or a surrogate pair.
//!
//! Inbound text is decoded by `data_coding` (GSM, IA5, Latin-1, UCS-2; anything else lossily
//! as Latin-1), and UDHs are parsed for concatenation (IEI 0x00 with an 8-bit reference, 0x08
//! with a 16-bit reference). Nothing here fails on hostile input.

/// SMPP `data_coding` values used here.
pub mod data_coding {
    /// SMSC default alphabet, taken as GSM 03.38 unpacked.
    pub const GSM: u8 = 0x00;
    /// IA5 (ASCII).
    pub const IA5: u8 = 0x01;
    /// 8-bit binary.
    pub const BINARY: u8 = 0x04;
    /// ISO-8859-1.
    pub const LATIN1: u8 = 0x03;
    /// UCS-2 (UTF-16BE).
    pub const UCS2: u8 = 0x08;
}

/// GSM 03.38 default alphabet, indexed by septet.
const GSM_BASIC: [char; 128] = [
    '@', '£', '$', '¥', 'è', 'é', 'ù', 'ì', 'ò', 'Ç', '\n', 'Ø', 'ø', '\r', 'Å', 'å', //
    'Δ', '_', 'Φ', 'Γ', 'Λ', 'Ω', 'Π', 'Ψ', 'Σ', 'Θ', 'Ξ', '\u{1B}', 'Æ', 'æ', 'ß', 'É', //
    ' ', '!', '"', '#', '¤', '%', '&', '\'', '(', ')', '*', '+', ',', '-', '.', '/', //
    '0', '1', '2', '3', '4', '5', '6', '7', '8', '9', ':', ';', '<', '=', '>', '?', //
    '¡', 'A', 'B', 'C', 'D', 'E', 'F', 'G', 'H', 'I', 'J', 'K', 'L', 'M', 'N', 'O', //
    'P', 'Q', 'R', 'S', 'T', 'U', 'V', 'W', 'X', 'Y', 'Z', 'Ä', 'Ö', 'Ñ', 'Ü', '§', //
    '¿', 'a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 'i', 'j', 'k', 'l', 'm', 'n', 'o', //
    'p', 'q', 'r', 's', 't', 'u', 'v', 'w', 'x', 'y', 'z', 'ä', 'ö', 'ñ', 'ü', 'à', //
];

/// The escape septet.
pub const GSM_ESCAPE: u8 = 0x1B;

/// GSM 03.38 extension table: (septet after the escape, character).
const GSM_EXTENSION: [(u8, char); 10] = [
    (0x0A, '\u{0C}'),
    (0x14, '^'),
    (0x28, '{'),
    (0x29, '}'),
    (0x2F, '\\'),
    (0x3C, '['),
    (0x3D, '~'),
    (0x3E, ']'),
    (0x40, '|'),
    (0x65, '€'),
];

/// The septets for one character: one for the basic table, two (escape + code) for the
/// extension table, `None` when GSM cannot carry it.
pub fn gsm_septets(c: char) -> Option<GsmChar> {
    if c == '\u{1B}' {
        return None;
    }
    if let Some(i) = GSM_BASIC.iter().position(|&b| b == c) {
        return u8::try_from(i).ok().map(GsmChar::Basic);
    }
    GSM_EXTENSION
        .iter()
        .find(|(_, e)| *e == c)
        .map(|(code, _)| GsmChar::Extended(*code))
}

/// One character in GSM 03.38.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GsmChar {
    Basic(u8),
    Extended(u8),
}

impl GsmChar {
    /// Septets this character takes.
    pub fn len(self) -> usize {
        match self {
            GsmChar::Basic(_) => 1,
            GsmChar::Extended(_) => 2,
        }
    }

    /// Always false: a character takes at least one septet.
    pub fn is_empty(self) -> bool {
        false
    }

    fn push_to(self, out: &mut Vec<u8>) {
        match self {
            GsmChar::Basic(b) => out.push(b),
            GsmChar::Extended(b) => {
                out.push(GSM_ESCAPE);
                out.push(b);
            }
        }
    }
}

/// Encode to unpacked GSM 03.38 septets, or `None` when some character is not representable.
pub fn gsm_encode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len());
    for c in text.chars() {
        gsm_septets(c)?.push_to(&mut out);
    }
    Some(out)
}

/// Decode unpacked GSM 03.38 septets. An escape before an unknown code yields the code's basic
/// character (3GPP 23.038); a trailing escape is dropped; octets above 0x7F become U+FFFD.
pub fn gsm_decode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    let mut iter = bytes.iter().copied();
    while let Some(b) = iter.next() {
        if b == GSM_ESCAPE {
            match iter.next() {
                None => break,
                Some(code) => match GSM_EXTENSION.iter().find(|(k, _)| *k == code) {
                    Some((_, c)) => out.push(*c),
                    None => out.push(basic_char(code)),
                },
            }
        } else {
            out.push(basic_char(b));
        }
    }
    out
}

fn basic_char(b: u8) -> char {
    match GSM_BASIC.get(usize::from(b)) {
        // An escape escaped again (0x1B 0x1B) is reserved: show a space.
        Some('\u{1B}') => ' ',
        Some(c) => *c,
        None => char::REPLACEMENT_CHARACTER,
    }
}

/// Encode UCS-2 (UTF-16BE).
pub fn ucs2_encode(text: &str) -> Vec<u8> {
    text.encode_utf16().flat_map(u16::to_be_bytes).collect()
}

/// Decode UCS-2/UTF-16BE: surrogate pairs are joined, lone surrogates and an odd trailing
/// byte become U+FFFD.
pub fn ucs2_decode(bytes: &[u8]) -> String {
    let units = bytes
        .chunks_exact(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]));
    let mut s: String = char::decode_utf16(units)
        .map(|r| r.unwrap_or(char::REPLACEMENT_CHARACTER))
        .collect();
    if bytes.len() % 2 == 1 {
        s.push(char::REPLACEMENT_CHARACTER);
    }
    s
}

/// Decode a message body by its `data_coding`: 0x00 GSM (unpacked), 0x01 IA5/ASCII, 0x03
/// Latin-1, 0x08 UCS-2, the 0xF0 message-class group by its alphabet bit; everything else
/// lossily as Latin-1.
pub fn decode_text(dc: u8, bytes: &[u8]) -> String {
    match dc {
        data_coding::GSM => gsm_decode(bytes),
        data_coding::UCS2 => ucs2_decode(bytes),
        // IA5 is 7-bit ASCII; octets above 0x7F are taken as Latin-1 rather than dropped.
        data_coding::IA5 | data_coding::LATIN1 => crate::pdu::latin1(bytes),
        dc if dc & 0xF0 == 0xF0 => {
            if dc & 0x04 == 0 {
                gsm_decode(bytes)
            } else {
                crate::pdu::latin1(bytes)
            }
        }
        _ => crate::pdu::latin1(bytes),
    }
}

/// The alphabet chosen for an outbound message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alphabet {
    Gsm,
    Ucs2,
}

impl Alphabet {
    /// The SMPP `data_coding` for this alphabet.
    pub fn data_coding(self) -> u8 {
        match self {
            Alphabet::Gsm => data_coding::GSM,
            Alphabet::Ucs2 => data_coding::UCS2,
        }
    }
}

/// Septets in a single GSM message.
pub const GSM_SINGLE: usize = 160;
/// Septets per part of a concatenated GSM message.
pub const GSM_PART: usize = 153;
/// UTF-16 code units in a single UCS-2 message.
pub const UCS2_SINGLE: usize = 70;
/// UTF-16 code units per part of a concatenated UCS-2 message.
pub const UCS2_PART: usize = 67;
/// Most parts a concatenated message can have (the total travels in one octet).
pub const MAX_PARTS: usize = 255;

/// The `esm_class` bit announcing a user data header.
pub const ESM_UDHI: u8 = 0x40;

/// A message ready to submit: its alphabet and the encoded payload of each part (without the
/// UDH).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segmented {
    /// GSM or UCS-2.
    pub alphabet: Alphabet,
    /// Each part's encoded payload, without UDH.
    pub parts: Vec<Vec<u8>>,
}

/// Why text cannot be sent as SMS.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SegmentError {
    #[error("the text needs {0} parts; at most {MAX_PARTS} fit in a concatenated SMS")]
    TooManyParts(usize),
}

/// Choose the alphabet (GSM when every character fits, else UCS-2) and split into parts.
pub fn segment(text: &str) -> Result<Segmented, SegmentError> {
    let gsm: Option<Vec<GsmChar>> = text.chars().map(gsm_septets).collect();
    let (alphabet, parts) = match gsm {
        Some(chars) => (Alphabet::Gsm, segment_gsm(&chars)),
        None => (Alphabet::Ucs2, segment_ucs2(text)),
    };
    if parts.len() > MAX_PARTS {
        return Err(SegmentError::TooManyParts(parts.len()));
    }
    Ok(Segmented { alphabet, parts })
}

fn segment_gsm(chars: &[GsmChar]) -> Vec<Vec<u8>> {
    let total: usize = chars.iter().map(|c| c.len()).sum();
    if total <= GSM_SINGLE {
        let mut out = Vec::with_capacity(total);
        chars.iter().for_each(|c| c.push_to(&mut out));
        return vec![out];
    }
    let mut parts = Vec::new();
    let mut cur = Vec::with_capacity(GSM_PART);
    for c in chars {
        if cur.len() + c.len() > GSM_PART {
            parts.push(std::mem::take(&mut cur));
        }
        c.push_to(&mut cur);
    }
    if !cur.is_empty() {
        parts.push(cur);
    }
    parts
}

fn segment_ucs2(text: &str) -> Vec<Vec<u8>> {
    let units: usize = text.chars().map(char::len_utf16).sum();
    if units <= UCS2_SINGLE {
        return vec![ucs2_encode(text)];
    }
    let mut parts = Vec::new();
    let mut cur: Vec<u8> = Vec::with_capacity(UCS2_PART * 2);
    let mut buf = [0u16; 2];
    for c in text.chars() {
        let enc = c.encode_utf16(&mut buf);
        if cur.len() / 2 + enc.len() > UCS2_PART {
            parts.push(std::mem::take(&mut cur));
        }
        for u in enc.iter() {
            cur.extend_from_slice(&u.to_be_bytes());
        }
    }
    if !cur.is_empty() {
        parts.push(cur);
    }
    parts
}

/// The 6-byte concatenation UDH (IEI 0x00, 8-bit reference).
pub fn concat_udh(reference: u8, total: u8, seq: u8) -> [u8; 6] {
    [0x05, 0x00, 0x03, reference, total, seq]
}

/// The `short_message` of each part (UDH prepended when there is more than one part) and the
/// `esm_class` bits to OR in.
pub fn build_short_messages(seg: &Segmented, reference: u8) -> Vec<(u8, Vec<u8>)> {
    let total = seg.parts.len();
    if total <= 1 {
        return seg.parts.iter().map(|p| (0, p.clone())).collect();
    }
    let total8 = u8::try_from(total).unwrap_or(u8::MAX);
    seg.parts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let seq = u8::try_from(i + 1).unwrap_or(u8::MAX);
            let mut sm = Vec::with_capacity(6 + p.len());
            sm.extend_from_slice(&concat_udh(reference, total8, seq));
            sm.extend_from_slice(p);
            (ESM_UDHI, sm)
        })
        .collect()
}

/// Concatenation information from a UDH.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Concat {
    /// Reference shared by all parts of one message (8- or 16-bit).
    pub reference: u16,
    /// Number of parts.
    pub total: u8,
    /// This part's number, from 1.
    pub seq: u8,
}

impl Concat {
    /// Whether the numbers make sense (1 ≤ seq ≤ total, total ≥ 1).
    pub fn is_valid(&self) -> bool {
        self.total >= 1 && self.seq >= 1 && self.seq <= self.total
    }
}

/// Split a UDH-carrying body into its concatenation info (if any) and the payload after the
/// UDH. A UDH whose length overruns the body is ignored (the whole body is payload);
/// malformed information elements are skipped.
pub fn split_udh(body: &[u8]) -> (Option<Concat>, &[u8]) {
    let Some((&udhl, rest)) = body.split_first() else {
        return (None, body);
    };
    let udhl = usize::from(udhl);
    let (Some(udh), Some(payload)) = (rest.get(..udhl), rest.get(udhl..)) else {
        return (None, body);
    };
    let mut concat = None;
    let mut i = 0;
    while let (Some(&iei), Some(&len)) = (udh.get(i), udh.get(i + 1)) {
        let len = usize::from(len);
        let Some(data) = udh.get(i + 2..i + 2 + len) else {
            break;
        };
        match (iei, data) {
            (0x00, [r, total, seq]) => {
                concat = Some(Concat {
                    reference: u16::from(*r),
                    total: *total,
                    seq: *seq,
                })
            }
            (0x08, [hi, lo, total, seq]) => {
                concat = Some(Concat {
                    reference: u16::from_be_bytes([*hi, *lo]),
                    total: *total,
                    seq: *seq,
                })
            }
            _ => {}
        }
        i += 2 + len;
    }
    (concat.filter(Concat::is_valid), payload)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn gsm_tables_round_trip() {
        let all: String = GSM_BASIC
            .iter()
            .filter(|&&c| c != '\u{1B}')
            .chain(GSM_EXTENSION.iter().map(|(_, c)| c))
            .collect();
        let enc = gsm_encode(&all).unwrap();
        assert_eq!(gsm_decode(&enc), all);
        assert_eq!(gsm_encode("€").unwrap(), vec![0x1B, 0x65]);
        assert_eq!(gsm_encode("@"), Some(vec![0]));
        assert_eq!(gsm_encode("ç"), None); // lower-case c-cedilla is not in GSM
        assert_eq!(gsm_encode("\u{1B}"), None);
    }

    #[test]
    fn gsm_decode_oddities() {
        assert_eq!(gsm_decode(&[0x41, 0x1B]), "A");
        assert_eq!(gsm_decode(&[0x1B, 0x41]), "A");
        assert_eq!(gsm_decode(&[0x1B, 0x1B]), " ");
        assert_eq!(gsm_decode(&[0x80]), "\u{FFFD}");
    }

    #[test]
    fn choose_alphabet() {
        assert_eq!(segment("Hello {world} €5").unwrap().alphabet, Alphabet::Gsm);
        assert_eq!(segment("Γειά σου 😀").unwrap().alphabet, Alphabet::Ucs2);
        assert_eq!(segment("Ωραία ΑΒΓ").unwrap().alphabet, Alphabet::Ucs2); // lower-case Greek
        assert_eq!(segment("").unwrap().parts, vec![Vec::<u8>::new()]);
    }

    #[test]
    fn gsm_boundaries() {
        assert_eq!(segment(&"a".repeat(160)).unwrap().parts.len(), 1);
        let s = segment(&"a".repeat(161)).unwrap();
        assert_eq!(s.parts.len(), 2);
        assert_eq!(s.parts[0].len(), 153);
        assert_eq!(segment(&"a".repeat(306)).unwrap().parts.len(), 2);
        assert_eq!(segment(&"a".repeat(307)).unwrap().parts.len(), 3);
        // 80 euro signs = 160 septets: single
        assert_eq!(segment(&"€".repeat(80)).unwrap().parts.len(), 1);
        // escape pair never split: 152 'a' then '€' must move the euro to part two
        let s = segment(&format!("{}€{}", "a".repeat(152), "b".repeat(10))).unwrap();
        assert_eq!(s.parts[0].len(), 152);
        assert_eq!(s.parts[1][..2], [0x1B, 0x65]);
    }

    #[test]
    fn ucs2_boundaries() {
        assert_eq!(segment(&"Ω".repeat(70)).unwrap().parts.len(), 1);
        let s = segment(&"ω".repeat(71)).unwrap();
        assert_eq!(s.parts.len(), 2);
        assert_eq!(s.parts[0].len(), 134);
        // a surrogate pair straddling unit 67 moves whole to the next part
        let text = format!("{}😀{}", "ω".repeat(66), "ω".repeat(10));
        let s = segment(&text).unwrap();
        assert_eq!(s.parts[0].len(), 132);
        let joined: Vec<u8> = s.parts.concat();
        assert_eq!(ucs2_decode(&joined), text);
        for p in &s.parts {
            assert!(!ucs2_decode(p).contains('\u{FFFD}'));
        }
    }

    #[test]
    fn too_many_parts() {
        assert!(segment(&"a".repeat(153 * 255)).is_ok());
        assert_eq!(
            segment(&"a".repeat(153 * 255 + 1)),
            Err(SegmentError::TooManyParts(256))
        );
    }

    #[test]
    fn udh_build_and_split() {
        let seg = segment(&"x".repeat(200)).unwrap();
        let sms = build_short_messages(&seg, 0xAB);
        assert_eq!(sms.len(), 2);
        assert_eq!(sms[1].0, ESM_UDHI);
        assert_eq!(&sms[1].1[..6], &[5, 0, 3, 0xAB, 2, 2]);
        let (c, payload) = split_udh(&sms[0].1);
        assert_eq!(
            c,
            Some(Concat {
                reference: 0xAB,
                total: 2,
                seq: 1
            })
        );
        assert_eq!(payload, &seg.parts[0][..]);
        // 16-bit reference
        let body = [6, 8, 4, 0x12, 0x34, 3, 2, b'h', b'i'];
        let (c, payload) = split_udh(&body);
        assert_eq!(
            c,
            Some(Concat {
                reference: 0x1234,
                total: 3,
                seq: 2
            })
        );
        assert_eq!(payload, b"hi");
        // overrunning UDH length: whole body is payload
        let body = [9, 0, 3];
        assert_eq!(split_udh(&body), (None, &body[..]));
        // seq 0 is invalid
        let body = [5, 0, 3, 1, 2, 0, b'x'];
        assert_eq!(split_udh(&body).0, None);
        assert_eq!(split_udh(&[]), (None, &[][..]));
    }

    #[test]
    fn decode_by_data_coding() {
        assert_eq!(decode_text(0x00, &[0x48, 0x69, 0x00]), "Hi@");
        assert_eq!(decode_text(0x01, b"Hi"), "Hi");
        assert_eq!(decode_text(0x03, &[0xE9]), "é");
        assert_eq!(decode_text(0x08, &[0x03, 0xA9]), "Ω");
        assert_eq!(decode_text(0x08, &[0xD8, 0x3D]), "\u{FFFD}");
        assert_eq!(decode_text(0x08, &[0x00]), "\u{FFFD}");
        assert_eq!(decode_text(0x04, &[0xE9]), "é");
        assert_eq!(decode_text(0xF0, &[0x00]), "@");
    }
}

//! Turning an [`Outbound`] into an RFC 5322 message, and reading the relay's replies.

use std::str::FromStr;

use haven_channel::Outbound;
use lettre::Message;
use lettre::address::Envelope;
use lettre::message::header::{HeaderName, HeaderValue};
use lettre::message::{Mailbox, Mailboxes, MultiPart, SinglePart};

/// Used in `Message-ID` when the sender's domain cannot be (an address literal, or a
/// non-ASCII domain).
pub const FALLBACK_MESSAGE_ID_DOMAIN: &str = "haven.local";

/// Why a message could not be built. Permanent: retrying builds the same message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BuildError {
    /// `to` is not exactly one valid address.
    Recipient,
    /// `from` is not exactly one valid address.
    Sender,
    /// lettre refused the message (should not happen once both addresses parsed).
    Message(String),
}

/// A built, not yet signed message.
pub(crate) struct Built {
    pub message: Message,
    pub envelope: Envelope,
    /// The `Message-ID` header value, with its angle brackets.
    pub message_id: String,
}

/// Builds the message for `m`:
/// - `From`, `To`, `Subject` (empty when absent), `Date`;
/// - `text` as `text/plain`, or `multipart/alternative` of `text` and `html` when `html`
///   is set (plain first, so clients that prefer the last part they understand show HTML);
/// - `Message-ID: <{message_id}@{from's domain}>`, the same on every retry, so receivers
///   can de-duplicate;
/// - `X-Haven-Message-Id: {message_id}` and `Auto-Submitted: auto-generated` (RFC 3834,
///   which tells receivers' autoresponders not to answer).
pub(crate) fn build(m: &Outbound) -> Result<Built, BuildError> {
    let from = single_mailbox(&m.from).ok_or(BuildError::Sender)?;
    let to = single_mailbox(&m.to).ok_or(BuildError::Recipient)?;
    let message_id = message_id_header(&m.message_id, from.email.domain());
    let envelope = Envelope::new(Some(from.email.clone()), vec![to.email.clone()])
        .map_err(|e| BuildError::Message(e.to_string()))?;

    let builder = Message::builder()
        .from(from)
        .to(to)
        .subject(clean_header_text(m.subject.as_deref().unwrap_or_default()))
        .message_id(Some(message_id.clone()))
        .raw_header(HeaderValue::new(
            HeaderName::new_from_ascii_str("X-Haven-Message-Id"),
            clean_header_text(&m.message_id),
        ))
        .raw_header(HeaderValue::new(
            HeaderName::new_from_ascii_str("Auto-Submitted"),
            "auto-generated".to_owned(),
        ))
        .envelope(envelope.clone());

    let message = match &m.html {
        Some(html) => builder.multipart(MultiPart::alternative_plain_html(
            m.text.clone(),
            html.clone(),
        )),
        None => builder.singlepart(SinglePart::plain(m.text.clone())),
    }
    .map_err(|e| BuildError::Message(e.to_string()))?;

    Ok(Built {
        message,
        envelope,
        message_id,
    })
}

/// Exactly one mailbox (`user@example.org` or `Name <user@example.org>`); lists are refused
/// rather than cut short.
fn single_mailbox(s: &str) -> Option<Mailbox> {
    let list = Mailboxes::from_str(s.trim()).ok()?;
    let mut iter = list.into_iter();
    let first = iter.next()?;
    iter.next().is_none().then_some(first)
}

/// `<{id}@{domain}>`: `id` with anything outside RFC 5322 `dot-atom-text` replaced by `_`
/// (deterministically, so the header stays stable across retries), the domain lowercased,
/// or [`FALLBACK_MESSAGE_ID_DOMAIN`] when it is not a plain ASCII domain.
pub(crate) fn message_id_header(id: &str, from_domain: &str) -> String {
    let mut left: String = id
        .chars()
        .map(|c| if is_atext(c) || c == '.' { c } else { '_' })
        .collect();
    // dot-atom-text: no leading, trailing or doubled dots.
    while left.contains("..") {
        left = left.replace("..", "._");
    }
    if left.starts_with('.') {
        left.replace_range(0..1, "_");
    }
    if left.ends_with('.') {
        let n = left.len();
        left.replace_range(n - 1..n, "_");
    }
    if left.is_empty() {
        left.push_str("haven");
    }
    let domain = from_domain.to_ascii_lowercase();
    let domain_ok = !domain.is_empty()
        && domain
            .split('.')
            .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    let domain = if domain_ok {
        domain
    } else {
        FALLBACK_MESSAGE_ID_DOMAIN.to_owned()
    };
    format!("<{left}@{domain}>")
}

fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c)
}

/// Header text without control characters: a CR or LF in a subject must not start a new
/// header line.
fn clean_header_text(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// The relay's queue id from its final `250` reply, when it names one in a known way:
/// Postfix `Ok: queued as 4F3A2B1C`, Exim `OK id=1rAbCd-000Xyz-Ab`, Amazon SES
/// `Ok 0100018c…`.
pub(crate) fn queue_id(reply_lines: &[&str]) -> Option<String> {
    let text = reply_lines.join(" ");
    let lower = text.to_ascii_lowercase();
    let after = |needle: &str| -> Option<String> {
        let at = lower.find(needle)? + needle.len();
        token(&text[at..])
    };
    if let Some(id) = after("queued as ") {
        return Some(id);
    }
    if let Some(id) = after("id=") {
        return Some(id);
    }
    // "Ok <id>": the whole reply is the word OK and one long token.
    let words: Vec<&str> = text.split_whitespace().collect();
    if let [ok, id] = words.as_slice()
        && ok.trim_end_matches(':').eq_ignore_ascii_case("ok")
        && id.len() >= 12
    {
        return token(id);
    }
    None
}

fn token(s: &str) -> Option<String> {
    let t: String = s
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .take(128)
        .collect();
    let t = t.trim_end_matches('.').to_owned();
    (!t.is_empty()).then_some(t)
}

/// A relay's reply text made safe to store, return and log: no addresses (relays echo the
/// recipient, which is PHI), nothing in angle brackets, printable ASCII only, at most 160
/// characters.
pub(crate) fn sanitize_reason(text: &str) -> String {
    let mut out = String::new();
    let mut in_brackets = false;
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        if word.is_empty() {
            return;
        }
        if !out.is_empty() {
            out.push(' ');
        }
        if word.contains('@') {
            out.push_str("[address]");
        } else {
            out.push_str(word);
        }
        word.clear();
    };
    for c in text.chars() {
        match c {
            '<' => {
                flush(&mut word, &mut out);
                in_brackets = true;
            }
            '>' if in_brackets => {
                in_brackets = false;
                if !out.is_empty() {
                    out.push(' ');
                }
                out.push_str("[address]");
            }
            _ if in_brackets => {}
            c if c.is_whitespace() || c.is_control() => flush(&mut word, &mut out),
            c if c.is_ascii_graphic() => word.push(c),
            _ => word.push('?'),
        }
    }
    flush(&mut word, &mut out);
    if out.chars().count() > 160 {
        out = out.chars().take(157).collect();
        out.push_str("...");
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn outbound(html: Option<&str>) -> Outbound {
        Outbound {
            message_id: "msg_01HZX".into(),
            account_id: "acc_1".into(),
            to: "patient@example.com".into(),
            from: "Clinic <clinic@Example.ORG>".into(),
            subject: Some("Your appointment".into()),
            text: "See you at 10:00.".into(),
            html: html.map(str::to_owned),
            want_receipt: false,
            expires_at_ms: None,
        }
    }

    fn render(m: &Outbound) -> (Built, String) {
        let built = build(m).unwrap();
        let raw = String::from_utf8(built.message.formatted()).unwrap();
        (built, raw)
    }

    fn header<'a>(raw: &'a str, name: &str) -> Vec<&'a str> {
        let head = raw.split("\r\n\r\n").next().unwrap();
        head.split("\r\n")
            .filter_map(|l| {
                let (n, v) = l.split_once(':')?;
                n.eq_ignore_ascii_case(name).then(|| v.trim())
            })
            .collect()
    }

    #[test]
    fn plain_message_headers() {
        let (built, raw) = render(&outbound(None));
        assert_eq!(built.message_id, "<msg_01HZX@example.org>");
        assert_eq!(header(&raw, "Message-ID"), vec!["<msg_01HZX@example.org>"]);
        assert_eq!(header(&raw, "X-Haven-Message-Id"), vec!["msg_01HZX"]);
        assert_eq!(header(&raw, "Auto-Submitted"), vec!["auto-generated"]);
        assert_eq!(header(&raw, "Subject"), vec!["Your appointment"]);
        assert_eq!(header(&raw, "To"), vec!["patient@example.com"]);
        assert_eq!(header(&raw, "From"), vec!["Clinic <clinic@Example.ORG>"]);
        assert_eq!(header(&raw, "Date").len(), 1);
        assert!(header(&raw, "Content-Type")[0].starts_with("text/plain"));
        assert!(raw.contains("See you at 10:00."));
        assert_eq!(
            built.envelope.from().map(|a| a.to_string()),
            Some("clinic@Example.ORG".to_owned())
        );
        assert_eq!(built.envelope.to().len(), 1);
    }

    #[test]
    fn html_makes_multipart_alternative() {
        let (_, raw) = render(&outbound(Some("<p>See you at <b>10:00</b>.</p>")));
        let ct = header(&raw, "Content-Type")[0];
        assert!(ct.starts_with("multipart/alternative"), "{ct}");
        let plain = raw.find("text/plain").unwrap();
        let html = raw.find("text/html").unwrap();
        assert!(plain < html, "plain part first");
        assert!(raw.contains("<b>10:00</b>"));
        assert!(raw.contains("See you at 10:00."));
    }

    #[test]
    fn message_id_is_stable_across_builds() {
        let m = outbound(None);
        let (a, _) = render(&m);
        let (b, _) = render(&m);
        assert_eq!(a.message_id, b.message_id);
    }

    #[test]
    fn missing_subject_is_empty_and_crlf_cannot_inject_headers() {
        let mut m = outbound(None);
        m.subject = None;
        let (_, raw) = render(&m);
        assert_eq!(header(&raw, "Subject"), vec![""]);

        m.subject = Some("hi\r\nBcc: evil@example.net".into());
        let (_, raw) = render(&m);
        assert!(header(&raw, "Bcc").is_empty(), "{raw}");
    }

    #[test]
    fn non_ascii_content_is_encoded_7bit_safe() {
        let mut m = outbound(Some("<p>Grüße, 予約</p>"));
        m.subject = Some("Termin bestätigt".into());
        m.text = "Grüße — 予約 ✓".into();
        let built = build(&m).unwrap();
        assert!(built.message.formatted().is_ascii());
    }

    #[test]
    fn bad_addresses_are_refused() {
        let mut m = outbound(None);
        m.to = "not an address".into();
        assert_eq!(build(&m).err(), Some(BuildError::Recipient));
        m.to = "a@example.com, b@example.com".into();
        assert_eq!(build(&m).err(), Some(BuildError::Recipient));
        let mut m = outbound(None);
        m.from = String::new();
        assert_eq!(build(&m).err(), Some(BuildError::Sender));
    }

    #[test]
    fn message_id_shapes() {
        assert_eq!(
            message_id_header("msg_1", "Example.org"),
            "<msg_1@example.org>"
        );
        assert_eq!(message_id_header("a b<c>", "x.org"), "<a_b_c_@x.org>");
        assert_eq!(message_id_header(".a..b.", "x.org"), "<_a._b_@x.org>");
        assert_eq!(message_id_header("m", "[192.0.2.1]"), "<m@haven.local>");
        assert_eq!(message_id_header("m", "bücher.de"), "<m@haven.local>");
        assert_eq!(message_id_header("", "x.org"), "<haven@x.org>");
    }

    #[test]
    fn queue_ids() {
        assert_eq!(
            queue_id(&["2.0.0 Ok: queued as 4F3A2B1C0D"]).as_deref(),
            Some("4F3A2B1C0D")
        );
        assert_eq!(
            queue_id(&["OK id=1rAbCd-000Xyz-Ab"]).as_deref(),
            Some("1rAbCd-000Xyz-Ab")
        );
        assert_eq!(
            queue_id(&["Ok 0100018c2b3a4d5e-abcdef-000000"]).as_deref(),
            Some("0100018c2b3a4d5e-abcdef-000000")
        );
        assert_eq!(queue_id(&["OK"]), None);
        assert_eq!(queue_id(&["2.0.0 Message accepted"]), None);
    }

    #[test]
    fn reasons_never_carry_addresses() {
        let r =
            sanitize_reason("5.1.1 <bob@example.com>: Recipient address rejected: User unknown");
        assert_eq!(
            r,
            "5.1.1 [address] : Recipient address rejected: User unknown"
        );
        let r = sanitize_reason("mailbox bob@example.com is full\r\nsecond line");
        assert!(!r.contains("bob") && !r.contains('\r'), "{r}");
        let r = sanitize_reason("no <closing bracket bob@example.com");
        assert!(!r.contains("bob"), "{r}");
        assert!(sanitize_reason(&"x".repeat(500)).len() <= 160);
    }
}

//! Message templates: the organisation's own wording with `{{parameter}}` slots, reviewed
//! before use. An approved template is what an account may send to a patient it never wrote
//! to before (when its policy asks for that), and the only content that is the same for
//! everyone: the parameters are filled in per message and sealed with it.

use crate::model::{self, MAX_EMAIL_HTML, MAX_EMAIL_TEXT, MAX_SMS_TEXT, MAX_SUBJECT};
use crate::store::TemplateRow;
use crate::{Messaging, MessagingError, MessagingResult};
use haven_channel::ChannelKind;
use haven_identity::{FieldError, Principal, RequestMeta, Right, Scope};
use haven_platform::audit::{AuditAction, AuditEvent, Outcome};
use haven_platform::clock::now_ms;
use haven_platform::events::OutboxEvent;
use haven_platform::id::new_id;
use haven_platform::page::{Page, PageRequest};
use haven_platform::store::StoreError;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};

pub const TEMPLATE_PREFIX: &str = "tpl";
const READ: Scope = Scope::new("templates", Right::Read);
const WRITE: Scope = Scope::new("templates", Right::Write);
/// Approving or rejecting: a reviewer's right, apart from writing templates.
const ADMIN: Scope = Scope::new("templates", Right::Admin);
const MAX_NAME: usize = 100;
const MAX_PARAM_NAME: usize = 40;
/// Longest value of one parameter.
pub const MAX_PARAM_VALUE: usize = 500;
const MAX_NOTE: usize = 500;

/// A piece of a template body: literal text or a parameter slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Text(String),
    Param(String),
}

/// Parses `Hello {{ name }}, …`. Slot names are 1 to 40 characters of `a-z`, `0-9` and `_`,
/// starting with a letter; `{{` must close.
pub fn parse(field: &str, src: &str, errors: &mut Vec<FieldError>) -> Vec<Piece> {
    let mut pieces = Vec::new();
    let mut rest = src;
    while let Some(open) = rest.find("{{") {
        if open > 0 {
            pieces.push(Piece::Text(rest[..open].to_owned()));
        }
        let after = &rest[open + 2..];
        let Some(close) = after.find("}}") else {
            errors.push(FieldError::new(field, "has a `{{` that is never closed"));
            return pieces;
        };
        let name = after[..close].trim();
        let ok = !name.is_empty()
            && name.len() <= MAX_PARAM_NAME
            && name.starts_with(|c: char| c.is_ascii_lowercase())
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !ok {
            errors.push(FieldError::new(
                field,
                format!(
                    "parameter names are 1 to {MAX_PARAM_NAME} characters of a-z, 0-9 and _, starting with a letter"
                ),
            ));
            return pieces;
        }
        pieces.push(Piece::Param(name.to_owned()));
        rest = &after[close + 2..];
    }
    if !rest.is_empty() {
        pieces.push(Piece::Text(rest.to_owned()));
    }
    pieces
}

fn slots(pieces: &[Piece], into: &mut BTreeSet<String>) {
    for p in pieces {
        if let Piece::Param(n) = p {
            into.insert(n.clone());
        }
    }
}

fn escape_html(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Fills the slots. In HTML the values are escaped, so a parameter cannot inject markup.
pub fn render(pieces: &[Piece], values: &BTreeMap<String, String>, html: bool) -> String {
    let mut out = String::new();
    for p in pieces {
        match p {
            Piece::Text(t) => out.push_str(t),
            Piece::Param(n) => {
                let v = values.get(n).map(String::as_str).unwrap_or_default();
                if html {
                    out.push_str(&escape_html(v));
                } else {
                    out.push_str(v);
                }
            }
        }
    }
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TemplateStatus {
    Pending,
    Approved,
    Rejected,
}

impl TemplateStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Approved => "approved",
            Self::Rejected => "rejected",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Pending, Self::Approved, Self::Rejected]
            .into_iter()
            .find(|v| v.as_str() == s)
    }
}

/// A template as shown.
#[derive(Debug, Clone)]
pub struct Template {
    pub id: String,
    pub account_id: String,
    pub name: String,
    pub channel: ChannelKind,
    pub locale: Option<String>,
    pub subject: Option<String>,
    pub text: String,
    pub html: Option<String>,
    /// Every slot of subject, text and HTML.
    pub parameters: Vec<String>,
    pub status: TemplateStatus,
    pub review_note: Option<String>,
    pub reviewed_by: Option<String>,
    pub created_at_ms: i64,
    pub reviewed_at_ms: Option<i64>,
}

/// A template as submitted for review.
#[derive(Debug, Clone, Default)]
pub struct NewTemplate {
    pub name: String,
    pub channel: String,
    pub locale: Option<String>,
    pub subject: Option<String>,
    pub text: String,
    pub html: Option<String>,
}

fn locale_ok(l: &str) -> bool {
    // BCP 47 in its common shapes: `en`, `es-MX`, `zh-Hant-TW`.
    let mut parts = l.split('-');
    let lang_ok = parts
        .next()
        .is_some_and(|p| (2..=3).contains(&p.len()) && p.chars().all(|c| c.is_ascii_alphabetic()));
    lang_ok
        && l.len() <= 35
        && parts.all(|p| (2..=8).contains(&p.len()) && p.chars().all(|c| c.is_ascii_alphanumeric()))
}

fn template_event(event_type: &'static str, t: &TemplateRow) -> OutboxEvent {
    OutboxEvent::new(
        event_type,
        &t.account_id,
        json!({ "template_id": t.id, "status": t.status, "channel": t.channel }),
    )
}

impl Messaging {
    fn template_view(row: &TemplateRow) -> MessagingResult<Template> {
        let bad = || StoreError::Backend("stored template is not readable".into());
        let mut ignored = Vec::new();
        let mut names = BTreeSet::new();
        for src in [Some(&row.body), row.subject.as_ref(), row.html.as_ref()]
            .into_iter()
            .flatten()
        {
            slots(&parse("", src, &mut ignored), &mut names);
        }
        Ok(Template {
            id: row.id.clone(),
            account_id: row.account_id.clone(),
            name: row.name.clone(),
            channel: ChannelKind::parse(&row.channel).ok_or_else(bad)?,
            locale: row.locale.clone(),
            subject: row.subject.clone(),
            text: row.body.clone(),
            html: row.html.clone(),
            parameters: names.into_iter().collect(),
            status: TemplateStatus::parse(&row.status).ok_or_else(bad)?,
            review_note: row.review_note.clone(),
            reviewed_by: row.reviewed_by.clone(),
            created_at_ms: row.created_at_ms,
            reviewed_at_ms: row.reviewed_at_ms,
        })
    }

    async fn owned_template(&self, account_id: &str, id: &str) -> MessagingResult<TemplateRow> {
        if !haven_identity::is_id(TEMPLATE_PREFIX, id) {
            return Err(MessagingError::NotFound);
        }
        match self.store.get_template(id).await? {
            Some(t) if t.account_id == account_id => Ok(t),
            _ => Err(MessagingError::NotFound),
        }
    }

    async fn audit_template(
        &self,
        p: &Principal,
        meta: &RequestMeta,
        action: AuditAction,
        id: &str,
    ) {
        self.audit
            .record(
                AuditEvent::new(action, Outcome::Success, p.actor(meta)).resource("template", id),
            )
            .await;
    }

    /// Submits a template for review; it is `pending` until a reviewer approves it.
    pub async fn create_template(
        &self,
        p: &Principal,
        meta: &RequestMeta,
        t: NewTemplate,
    ) -> MessagingResult<Template> {
        p.require(WRITE)?;
        let mut errors = Vec::new();
        let name = t.name.trim().to_owned();
        if name.is_empty() || name.chars().count() > MAX_NAME || name.contains(['\r', '\n']) {
            errors.push(FieldError::new(
                "name",
                format!("must be one line of 1 to {MAX_NAME} characters"),
            ));
        }
        let kind = model::channel("channel", &t.channel, &mut errors);
        if let Some(l) = &t.locale
            && !locale_ok(l)
        {
            errors.push(FieldError::new(
                "locale",
                "must be a language tag such as en, es-MX",
            ));
        }
        parse("text", &t.text, &mut errors);
        if t.text.trim().is_empty() {
            errors.push(FieldError::new("text", "is required"));
        }
        match kind {
            Some(ChannelKind::Sms) => {
                if t.text.chars().count() > MAX_SMS_TEXT {
                    errors.push(FieldError::new(
                        "text",
                        format!("must be at most {MAX_SMS_TEXT} characters"),
                    ));
                }
                if t.subject.is_some() {
                    errors.push(FieldError::new("subject", "is for email only"));
                }
                if t.html.is_some() {
                    errors.push(FieldError::new("html", "is for email only"));
                }
            }
            Some(ChannelKind::Email) => {
                match &t.subject {
                    None => errors.push(FieldError::new("subject", "is required for email")),
                    Some(s)
                        if s.trim().is_empty()
                            || s.chars().count() > MAX_SUBJECT
                            || s.contains(['\r', '\n']) =>
                    {
                        errors.push(FieldError::new(
                            "subject",
                            format!("must be one line of 1 to {MAX_SUBJECT} characters"),
                        ))
                    }
                    Some(s) => {
                        parse("subject", s, &mut errors);
                    }
                }
                if t.text.len() > MAX_EMAIL_TEXT {
                    errors.push(FieldError::new(
                        "text",
                        format!("must be at most {MAX_EMAIL_TEXT} bytes"),
                    ));
                }
                if let Some(h) = &t.html {
                    if h.len() > MAX_EMAIL_HTML {
                        errors.push(FieldError::new(
                            "html",
                            format!("must be at most {MAX_EMAIL_HTML} bytes"),
                        ));
                    }
                    parse("html", h, &mut errors);
                }
            }
            None => {}
        }
        let Some(kind) = kind.filter(|_| errors.is_empty()) else {
            return Err(MessagingError::Invalid(errors));
        };
        let row = TemplateRow {
            id: new_id(TEMPLATE_PREFIX),
            account_id: p.account_id.clone(),
            name,
            channel: kind.as_str().to_owned(),
            locale: t.locale,
            subject: t.subject,
            body: t.text,
            html: t.html,
            status: TemplateStatus::Pending.as_str().to_owned(),
            review_note: None,
            created_by: Some(p.credential_id.clone()),
            reviewed_by: None,
            created_at_ms: now_ms(),
            reviewed_at_ms: None,
        };
        self.store.insert_template(&row).await?;
        self.audit_template(p, meta, AuditAction::TemplateCreated, &row.id)
            .await;
        Self::template_view(&row)
    }

    pub async fn get_template(&self, p: &Principal, id: &str) -> MessagingResult<Template> {
        p.require(READ)?;
        Self::template_view(&self.owned_template(&p.account_id, id).await?)
    }

    pub async fn list_templates(
        &self,
        p: &Principal,
        status: Option<&str>,
        page: &PageRequest,
    ) -> MessagingResult<Page<Template>> {
        p.require(READ)?;
        if let Some(s) = status
            && TemplateStatus::parse(s).is_none()
        {
            return Err(MessagingError::Invalid(vec![FieldError::new(
                "status",
                "must be pending, approved or rejected",
            )]));
        }
        let rows = self
            .store
            .list_templates(&p.account_id, status, page)
            .await?;
        let page = Page::from_rows(rows, page, |r| &r.id);
        Ok(Page {
            items: page
                .items
                .iter()
                .map(Self::template_view)
                .collect::<MessagingResult<_>>()?,
            next_cursor: page.next_cursor,
        })
    }

    /// Approves or rejects a pending template. A template is reviewed once: to change the
    /// wording, submit a new one.
    pub async fn review_template(
        &self,
        p: &Principal,
        meta: &RequestMeta,
        id: &str,
        approve: bool,
        note: Option<String>,
    ) -> MessagingResult<Template> {
        p.require(ADMIN)?;
        if note.as_ref().is_some_and(|n| n.chars().count() > MAX_NOTE) {
            return Err(MessagingError::Invalid(vec![FieldError::new(
                "reason",
                format!("must be at most {MAX_NOTE} characters"),
            )]));
        }
        let mut row = self.owned_template(&p.account_id, id).await?;
        if row.status != TemplateStatus::Pending.as_str() {
            return Err(MessagingError::TemplateReviewed);
        }
        let status = if approve {
            TemplateStatus::Approved
        } else {
            TemplateStatus::Rejected
        };
        row.status = status.as_str().to_owned();
        row.review_note = note;
        row.reviewed_by = Some(p.credential_id.clone());
        row.reviewed_at_ms = Some(now_ms());
        let event = template_event(
            if approve {
                "template.approved"
            } else {
                "template.rejected"
            },
            &row,
        );
        if !self.store.review_template(&row, &event).await? {
            return Err(MessagingError::TemplateReviewed);
        }
        self.events_written();
        let action = if approve {
            AuditAction::TemplateApproved
        } else {
            AuditAction::TemplateRejected
        };
        self.audit_template(p, meta, action, id).await;
        Self::template_view(&row)
    }

    /// Deletes a template: it can no longer be sent. Messages sent from it keep their text.
    pub async fn delete_template(
        &self,
        p: &Principal,
        meta: &RequestMeta,
        id: &str,
    ) -> MessagingResult<()> {
        p.require(WRITE)?;
        let row = self.owned_template(&p.account_id, id).await?;
        self.store.delete_template(&row.id).await?;
        self.audit_template(p, meta, AuditAction::TemplateDeleted, id)
            .await;
        Ok(())
    }

    /// Fills a send request's content from an approved template of the account.
    pub(crate) async fn apply_template(
        &self,
        account_id: &str,
        req: &mut model::SendRequest,
    ) -> MessagingResult<()> {
        let Some(id) = req.template_id.clone() else {
            if req.parameters.is_some() {
                return Err(MessagingError::Invalid(vec![FieldError::new(
                    "template.parameters",
                    "are only for a template",
                )]));
            }
            return Ok(());
        };
        let mut errors = Vec::new();
        for (f, present) in [
            ("text", req.text.is_some()),
            ("subject", req.subject.is_some()),
            ("html", req.html.is_some()),
        ] {
            if present {
                errors.push(FieldError::new(f, "comes from the template; leave it out"));
            }
        }
        if !errors.is_empty() {
            return Err(MessagingError::Invalid(errors));
        }
        let row = match self.owned_template(account_id, &id).await {
            Err(MessagingError::NotFound) => {
                return Err(MessagingError::Invalid(vec![FieldError::new(
                    "template.id",
                    "no such template",
                )]));
            }
            other => other?,
        };
        if row.status != TemplateStatus::Approved.as_str() {
            return Err(MessagingError::TemplateNotApproved);
        }
        if row.channel != req.channel {
            return Err(MessagingError::Invalid(vec![FieldError::new(
                "template.id",
                format!("is a template for {}", row.channel),
            )]));
        }
        let t = Self::template_view(&row)?;
        let values = req.parameters.take().unwrap_or_default();
        for name in &t.parameters {
            match values.get(name) {
                None => errors.push(FieldError::new(
                    format!("template.parameters.{name}"),
                    "is required by the template",
                )),
                Some(v) if v.chars().count() > MAX_PARAM_VALUE => errors.push(FieldError::new(
                    format!("template.parameters.{name}"),
                    format!("must be at most {MAX_PARAM_VALUE} characters"),
                )),
                Some(_) => {}
            }
        }
        for name in values.keys() {
            if !t.parameters.contains(name) {
                errors.push(FieldError::new(
                    format!("template.parameters.{name}"),
                    "is not a parameter of the template",
                ));
            }
        }
        if !errors.is_empty() {
            return Err(MessagingError::Invalid(errors));
        }
        let fill = |src: &str, html: bool| render(&parse("", src, &mut Vec::new()), &values, html);
        req.text = Some(fill(&t.text, false));
        // A parameter must not smuggle a header line into the subject.
        req.subject = t.subject.as_deref().map(|s| {
            fill(s, false)
                .chars()
                .map(|c| if c == '\r' || c == '\n' { ' ' } else { c })
                .collect()
        });
        req.html = t.html.as_deref().map(|h| fill(h, true));
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_renders_slots() {
        let mut e = Vec::new();
        let p = parse("text", "Hi {{ name }}, see you at {{time}}.", &mut e);
        assert!(e.is_empty());
        let mut v = BTreeMap::new();
        v.insert("name".to_owned(), "Pat <b>".to_owned());
        v.insert("time".to_owned(), "10:00".to_owned());
        assert_eq!(render(&p, &v, false), "Hi Pat <b>, see you at 10:00.");
        assert_eq!(render(&p, &v, true), "Hi Pat &lt;b&gt;, see you at 10:00.");
    }

    #[test]
    fn refuses_bad_slots() {
        for bad in ["{{", "a {{ b", "{{ }}", "{{Name}}", "{{1x}}", "{{a-b}}"] {
            let mut e = Vec::new();
            parse("text", bad, &mut e);
            assert_eq!(e.len(), 1, "{bad}");
        }
    }

    #[test]
    fn locales() {
        for ok in ["en", "es-MX", "zh-Hant-TW", "de"] {
            assert!(locale_ok(ok), "{ok}");
        }
        for bad in ["", "e", "english-", "en_US", "12"] {
            assert!(!locale_ok(bad), "{bad}");
        }
    }
}

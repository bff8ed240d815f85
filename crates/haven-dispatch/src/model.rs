//! Dispatch's types: a workflow of steps, each a message and the condition that ends the
//! workflow, and the rules a request must meet.

use haven_identity::FieldError;
use haven_messaging::SendRequest;
use serde::{Deserialize, Serialize};

pub const DISPATCH_PREFIX: &str = "dsp";
pub const MAX_STEPS: usize = 5;
pub const MIN_TIMEOUT_SECONDS: u64 = 1;
pub const MAX_TIMEOUT_SECONDS: u64 = 7 * 86_400;
const MAX_WORDS: usize = 10;
const MAX_WORD: usize = 30;

/// What ends the workflow at a step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Until {
    /// The channel's delivery report says delivered. On channels that report no delivery
    /// (email over SMTP, SMS without a receipt), the carrier taking the message counts.
    Delivered,
    /// Any reply from the patient to the sender of the step.
    Replied,
    /// A reply whose first word is one of these (any case), such as YES.
    RepliedWith(Vec<String>),
}

impl Until {
    pub fn describe(&self) -> String {
        match self {
            Self::Delivered => "delivered".into(),
            Self::Replied => "replied".into(),
            Self::RepliedWith(w) => format!("replied {}", w.join("|")),
        }
    }

    /// Whether a reply's text meets the condition.
    pub fn accepts_reply(&self, text: &str) -> bool {
        match self {
            Self::Delivered => false,
            Self::Replied => true,
            Self::RepliedWith(words) => {
                let first = text
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .trim_matches(|c: char| c.is_ascii_punctuation())
                    .to_uppercase();
                !first.is_empty() && words.iter().any(|w| w.to_uppercase() == first)
            }
        }
    }
}

/// One step as kept (sealed) until it runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Step {
    pub message: SendRequest,
    pub until: Until,
    /// How long to wait for `until` before the next step; `None` on the last step means:
    /// until its message reaches a final status.
    pub timeout_seconds: Option<u64>,
}

/// `until` as the API takes it: `"delivered"`, `"replied"`, `"read"`, or
/// `{"replied": "YES"}` / `{"replied": ["YES", "Y"]}`.
pub fn until(field: &str, v: &serde_json::Value, errors: &mut Vec<FieldError>) -> Option<Until> {
    match v {
        serde_json::Value::String(s) if s == "delivered" => Some(Until::Delivered),
        serde_json::Value::String(s) if s == "replied" => Some(Until::Replied),
        serde_json::Value::String(s) if s == "read" => {
            errors.push(FieldError::new(
                field,
                "read receipts are not reported by SMS (SMPP) or email (SMTP); use delivered or replied",
            ));
            None
        }
        serde_json::Value::Object(o) if o.len() == 1 && o.contains_key("replied") => {
            let words: Vec<String> = match &o["replied"] {
                serde_json::Value::String(w) => vec![w.clone()],
                serde_json::Value::Array(a) => a
                    .iter()
                    .map(|w| w.as_str().map(str::to_owned))
                    .collect::<Option<_>>()
                    .unwrap_or_default(),
                _ => Vec::new(),
            };
            let ok = !words.is_empty()
                && words.len() <= MAX_WORDS
                && words.iter().all(|w| {
                    !w.is_empty()
                        && w.chars().count() <= MAX_WORD
                        && !w.chars().any(char::is_whitespace)
                });
            if ok {
                Some(Until::RepliedWith(words))
            } else {
                errors.push(FieldError::new(
                    format!("{field}.replied"),
                    format!(
                        "must be a word or a list of 1 to {MAX_WORDS} words of at most {MAX_WORD} characters"
                    ),
                ));
                None
            }
        }
        _ => {
            errors.push(FieldError::new(
                field,
                r#"must be "delivered", "replied" or {"replied": "YES"}"#,
            ));
            None
        }
    }
}

/// A step as the API received it.
#[derive(Debug, Clone)]
pub struct StepRequest {
    pub message: SendRequest,
    pub until: Option<serde_json::Value>,
    pub timeout_seconds: Option<u64>,
}

/// Checks the shape of a workflow (not its messages: the messaging service does that).
pub fn validate_steps(steps: Vec<StepRequest>) -> Result<Vec<Step>, Vec<FieldError>> {
    let mut errors = Vec::new();
    if steps.is_empty() || steps.len() > MAX_STEPS {
        errors.push(FieldError::new(
            "steps",
            format!("must have 1 to {MAX_STEPS} steps"),
        ));
        return Err(errors);
    }
    let last = steps.len() - 1;
    let mut out = Vec::with_capacity(steps.len());
    for (i, s) in steps.into_iter().enumerate() {
        let until = match &s.until {
            None => Some(Until::Delivered),
            Some(v) => until(&format!("steps[{i}].until"), v, &mut errors),
        };
        match s.timeout_seconds {
            None if i < last => errors.push(FieldError::new(
                format!("steps[{i}].timeout_seconds"),
                "is required on every step but the last",
            )),
            Some(t) if !(MIN_TIMEOUT_SECONDS..=MAX_TIMEOUT_SECONDS).contains(&t) => {
                errors.push(FieldError::new(
                    format!("steps[{i}].timeout_seconds"),
                    format!("must be between {MIN_TIMEOUT_SECONDS} and {MAX_TIMEOUT_SECONDS}"),
                ))
            }
            _ => {}
        }
        if let Some(u) = until {
            out.push(Step {
                message: s.message,
                until: u,
                timeout_seconds: s.timeout_seconds,
            });
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DispatchStatus {
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl DispatchStatus {
    pub const ALL: &'static [Self] = &[
        Self::Running,
        Self::Succeeded,
        Self::Failed,
        Self::Cancelled,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|v| v.as_str() == s)
    }
}

/// A step as shown.
#[derive(Debug, Clone)]
pub struct StepView {
    pub index: i64,
    pub channel: String,
    pub until: Option<Until>,
    pub timeout_seconds: Option<u64>,
    /// Set once the step's message was sent.
    pub message_id: Option<String>,
    pub status: String,
    pub reason: Option<String>,
    pub started_at_ms: Option<i64>,
    pub ended_at_ms: Option<i64>,
}

/// A dispatch as shown: ids and states only (the messages hold the content).
#[derive(Debug, Clone)]
pub struct Dispatch {
    pub id: String,
    pub account_id: String,
    pub status: DispatchStatus,
    pub current_step: i64,
    pub steps: Vec<StepView>,
    pub outcome: Option<String>,
    pub erased: bool,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub final_at_ms: Option<i64>,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn step(until: Option<serde_json::Value>, timeout: Option<u64>) -> StepRequest {
        StepRequest {
            message: SendRequest::default(),
            until,
            timeout_seconds: timeout,
        }
    }

    #[test]
    fn conditions() {
        let mut e = Vec::new();
        assert_eq!(
            until("u", &json!("delivered"), &mut e),
            Some(Until::Delivered)
        );
        assert_eq!(
            until("u", &json!({"replied": "YES"}), &mut e),
            Some(Until::RepliedWith(vec!["YES".into()]))
        );
        assert!(e.is_empty());
        assert_eq!(until("u", &json!("read"), &mut e), None);
        assert_eq!(until("u", &json!({"replied": ""}), &mut e), None);
        assert_eq!(until("u", &json!({"replied": "a", "x": 1}), &mut e), None);
        assert_eq!(e.len(), 3);
        let yes = Until::RepliedWith(vec!["YES".into(), "Y".into()]);
        assert!(yes.accepts_reply("yes"));
        assert!(yes.accepts_reply("  Y! see you"));
        assert!(yes.accepts_reply("Yes, I will come"));
        assert!(!yes.accepts_reply("no"));
        assert!(!yes.accepts_reply("yesterday"));
        assert!(Until::Replied.accepts_reply("anything"));
    }

    #[test]
    fn timeouts_on_all_but_the_last() {
        assert!(validate_steps(vec![step(None, Some(60)), step(None, None)]).is_ok());
        let e = validate_steps(vec![step(None, None), step(None, Some(0))]).unwrap_err();
        let fields: Vec<_> = e.iter().map(|f| f.field.as_str()).collect();
        assert_eq!(
            fields,
            ["steps[0].timeout_seconds", "steps[1].timeout_seconds"]
        );
        assert!(validate_steps(vec![]).is_err());
        assert!(validate_steps((0..6).map(|_| step(None, Some(5))).collect()).is_err());
    }
}

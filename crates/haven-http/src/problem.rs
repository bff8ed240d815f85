//! RFC 9457 problem details: the closed catalogue of problem types, and the one place where
//! domain errors become HTTP statuses.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use haven_contacts::ContactsError;
use haven_dispatch::DispatchError;
use haven_identity::{FieldError, IdentityError};
use haven_messaging::MessagingError;
use haven_reports::ReportsError;
use haven_vault::VaultError;
use haven_verify::VerifyError;
use haven_webhooks::WebhooksError;
use serde::Serialize;
use utoipa::ToSchema;

tokio::task_local! {
    /// The id of the request being served, so that any problem can name it as `instance`.
    pub static REQUEST_ID: String;
}

macro_rules! catalogue {
    ($( $variant:ident => ($slug:literal, $status:expr, $title:literal, $about:literal) ),+ $(,)?) => {
        /// Every problem type Haven answers with. The slugs are stable: clients may match on them.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum ProblemType { $($variant),+ }

        impl ProblemType {
            pub const ALL: &'static [ProblemType] = &[$(ProblemType::$variant),+];
            pub fn slug(self) -> &'static str { match self { $(Self::$variant => $slug),+ } }
            pub fn status(self) -> StatusCode { match self { $(Self::$variant => $status),+ } }
            pub fn title(self) -> &'static str { match self { $(Self::$variant => $title),+ } }
            /// A paragraph for the human-readable page at `/problems/{slug}`.
            pub fn about(self) -> &'static str { match self { $(Self::$variant => $about),+ } }
            pub fn from_slug(slug: &str) -> Option<Self> { Self::ALL.iter().copied().find(|p| p.slug() == slug) }
        }
    };
}

catalogue! {
    MalformedRequest => ("malformed-request", StatusCode::BAD_REQUEST, "Malformed request",
        "The request could not be understood: a header, query parameter or path is not in the expected form."),
    InvalidJson => ("invalid-json", StatusCode::BAD_REQUEST, "Invalid JSON",
        "The request body is not well-formed JSON, or is not the JSON object the operation expects."),
    UnknownField => ("unknown-field", StatusCode::BAD_REQUEST, "Unknown field",
        "The request body contains a field this operation does not define. Haven rejects unknown fields instead of ignoring them, so that typos are not silently dropped."),
    ValidationFailed => ("validation-failed", StatusCode::UNPROCESSABLE_ENTITY, "Validation failed",
        "The request is well-formed but breaks a rule. The `errors` member lists each field and what is wrong with it."),
    Unauthenticated => ("unauthenticated", StatusCode::UNAUTHORIZED, "Authentication required",
        "The request carries no credentials, or credentials that are wrong, unknown, expired or revoked. Send `Authorization: Basic base64(key_id:secret)` or `Authorization: Bearer <access token>`."),
    AuthLockedOut => ("auth-locked-out", StatusCode::TOO_MANY_REQUESTS, "Too many failed authentication attempts",
        "Authentication failed too often for this key or source address. Wait for the number of seconds in `Retry-After`."),
    InsufficientScope => ("insufficient-scope", StatusCode::FORBIDDEN, "Insufficient scope",
        "The credential is valid but was not granted the scope this operation needs."),
    AddressNotAllowed => ("address-not-allowed", StatusCode::FORBIDDEN, "Source address not allowed",
        "The key has an IP allowlist and the request came from an address outside it."),
    Forbidden => ("forbidden", StatusCode::FORBIDDEN, "Forbidden",
        "The credential is valid but this operation is not allowed for it."),
    NotFound => ("not-found", StatusCode::NOT_FOUND, "Not found",
        "No such resource exists, or it belongs to an account the credential cannot see."),
    NoSuchRoute => ("no-such-route", StatusCode::NOT_FOUND, "No such route",
        "No operation exists at this path. See /v1/openapi.json for the API."),
    MethodNotAllowed => ("method-not-allowed", StatusCode::METHOD_NOT_ALLOWED, "Method not allowed",
        "The path exists but does not support this HTTP method."),
    Conflict => ("conflict", StatusCode::CONFLICT, "Conflict",
        "The request conflicts with the resource's current state."),
    Erased => ("erased", StatusCode::CONFLICT, "Erased",
        "The data subject was erased: its key was destroyed, so its data can no longer be read or changed. The resource still answers reads, with its PHI fields null and `status: erased`."),
    WebhookTargetForbidden => ("webhook-target-forbidden", StatusCode::UNPROCESSABLE_ENTITY, "Webhook target not allowed",
        "Webhook endpoints must use HTTPS and must not point at private, loopback, link-local or cloud metadata addresses, unless the operator allowlisted them in `webhooks.allow_targets`."),
    StoredDataUnreadable => ("stored-data-unreadable", StatusCode::INTERNAL_SERVER_ERROR, "Stored data failed its integrity check",
        "Encrypted data in the database failed authentication: it was altered, or moved from the row or field it belongs to. Nothing was returned. The failure is logged with the request id given as `instance`."),
    SenderNotRegistered => ("sender-not-registered", StatusCode::UNPROCESSABLE_ENTITY, "Sender not registered",
        "The `from` address is not a sender registered to this account on this channel. Register numbers, alphanumeric sender ids and email addresses with `POST /v1/senders` before sending from them: unregistered senders are refused so that nobody can send in the name of another organisation (anti-smishing)."),
    SenderTaken => ("sender-taken", StatusCode::CONFLICT, "Sender already registered",
        "This address is registered already, to this or another account. A number or address belongs to one account, so that replies reach the right department."),
    ChannelUnavailable => ("channel-unavailable", StatusCode::UNPROCESSABLE_ENTITY, "Channel not configured",
        "The server has no carrier connection for this channel (for SMS an `[[sms.smsc]]`, for email an `[email.smtp]` relay). The operator configures them; see docs/configuration.md."),
    RecipientOptedOut => ("recipient-opted-out", StatusCode::UNPROCESSABLE_ENTITY, "Recipient opted out",
        "The recipient opted out of messages from this account on this channel (by replying STOP, or as recorded through `POST /v1/consents`). Nothing was sent and nothing is charged. The recipient can opt in again by replying START."),
    ConsentRequired => ("consent-required", StatusCode::UNPROCESSABLE_ENTITY, "Consent required",
        "Marketing messages need the recipient's recorded opt-in for marketing on this channel (`POST /v1/consents`). Nothing was sent and nothing is charged."),
    RateLimited => ("rate-limited", StatusCode::TOO_MANY_REQUESTS, "Rate limited",
        "The account sent more messages than its rate allows. Nothing in this request was accepted; retry after the number of seconds in `Retry-After`."),
    TemplateNotApproved => ("template-not-approved", StatusCode::UNPROCESSABLE_ENTITY, "Template not approved",
        "The template is pending review or was rejected. Only templates approved by a credential with `templates:admin` can be sent."),
    TemplateReviewed => ("template-reviewed", StatusCode::CONFLICT, "Template reviewed already",
        "A template is approved or rejected once. To change its wording, submit a new template."),
    TemplateRequired => ("template-required", StatusCode::UNPROCESSABLE_ENTITY, "Approved template required",
        "The account's messaging policy allows free text only to recipients it exchanged messages with before. Send the first message with an approved template (`template: {id, parameters}`). Nothing was sent and nothing is charged."),
    LinkNotAllowed => ("link-not-allowed", StatusCode::UNPROCESSABLE_ENTITY, "Link not allowed",
        "A link in the message points outside the domains the account's messaging policy allows (`link_domains`), a guard against smishing. Nothing was sent and nothing is charged."),
    DispatchEnded => ("dispatch-ended", StatusCode::CONFLICT, "Dispatch ended",
        "The dispatch has succeeded, failed or been cancelled already."),
    VerificationEnded => ("verification-ended", StatusCode::CONFLICT, "Verification ended",
        "The verification is no longer pending: it was completed (a code works once), failed after too many wrong codes, expired, was cancelled, or was superseded by a newer verification to the same recipient. Start a new one."),
    VerificationExpired => ("verification-expired", StatusCode::GONE, "Code expired",
        "The code's time ran out before it was checked. Start a new verification."),
    CodeMismatch => ("code-mismatch", StatusCode::UNPROCESSABLE_ENTITY, "Wrong code",
        "The code does not match. `attempts_remaining` says how many checks are left; the last wrong code fails the verification."),
    NoNextChannel => ("no-next-channel", StatusCode::CONFLICT, "No further channel",
        "The verification's workflow has no channel after the current one."),
    VerificationBusy => ("verification-busy", StatusCode::CONFLICT, "Verification busy",
        "The verification is being moved to its next channel right now. Retry in a moment."),
    FactorLocked => ("factor-locked", StatusCode::TOO_MANY_REQUESTS, "Factor locked",
        "Too many wrong codes in a row: the factor accepts no code until the number of seconds in `Retry-After` has passed."),
    CodeReused => ("code-reused", StatusCode::CONFLICT, "Code already used",
        "This code (or a later one) was accepted already: a one-time code works once. Wait for the next code in the authenticator app."),
    DestinationNotAllowed => ("destination-not-allowed", StatusCode::UNPROCESSABLE_ENTITY, "Destination not allowed",
        "Codes are not sent to this number: it is premium-rate or shared-cost, in a high-risk range (satellite and international networks), in one of the account's blocked prefixes, or in a country outside the account's allowlist (`PUT /v1/verify/policy`). Nothing was sent and nothing is charged."),
    DestinationBlocked => ("destination-blocked", StatusCode::UNPROCESSABLE_ENTITY, "Destination prefix blocked",
        "Codes sent to this number's prefix were almost never used, the mark of SMS pumping, so the prefix is blocked (`GET /v1/verify/blocked-prefixes`). The account can lift the block with `DELETE /v1/verify/blocked-prefixes/{prefix}`. Nothing was sent."),
    VerifyRateLimited => ("verify-rate-limited", StatusCode::TOO_MANY_REQUESTS, "Too many verifications",
        "The account started too many verifications to this recipient recently. Nothing was sent; retry after the number of seconds in `Retry-After`."),
    IdempotencyKeyReused => ("idempotency-key-reused", StatusCode::UNPROCESSABLE_ENTITY, "Idempotency key reused",
        "This Idempotency-Key was already used with a different request. Use a new key for a new request."),
    IdempotencyKeyInUse => ("idempotency-key-in-use", StatusCode::CONFLICT, "Idempotency key in use",
        "A request with this Idempotency-Key is still being processed. Retry after it completes."),
    PayloadTooLarge => ("payload-too-large", StatusCode::PAYLOAD_TOO_LARGE, "Payload too large",
        "The request body exceeds the server's limit."),
    UnsupportedMediaType => ("unsupported-media-type", StatusCode::UNSUPPORTED_MEDIA_TYPE, "Unsupported media type",
        "The request body must be sent with `Content-Type: application/json` (or, for OAuth endpoints, `application/x-www-form-urlencoded`)."),
    ServiceUnavailable => ("service-unavailable", StatusCode::SERVICE_UNAVAILABLE, "Service unavailable",
        "The server cannot serve the request right now (starting, stopping, or its database is unreachable). Retry later."),
    InternalError => ("internal-error", StatusCode::INTERNAL_SERVER_ERROR, "Internal error",
        "The server failed. The failure is logged with the request id given as `instance`; quote it when reporting."),
}

/// A problem as sent (documented in the OpenAPI document).
#[derive(Debug, Serialize, ToSchema)]
pub struct ProblemBody {
    /// A stable URI reference naming the problem type, served as a page.
    #[schema(example = "/problems/validation-failed")]
    pub r#type: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// The request id (also in the `X-Request-Id` header and the logs).
    pub instance: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldProblem>,
    /// `code-mismatch`: checks left before the verification fails.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempts_remaining: Option<i64>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct FieldProblem {
    /// The field, as a JSON path (`scopes`, `allowed_cidrs[2]`).
    pub field: String,
    pub message: String,
}

/// An error response.
#[derive(Debug)]
pub struct Problem {
    pub kind: ProblemType,
    pub detail: String,
    pub errors: Vec<FieldProblem>,
    pub retry_after: Option<u64>,
    pub attempts_remaining: Option<i64>,
}

impl Problem {
    pub fn new(kind: ProblemType, detail: impl Into<String>) -> Self {
        Self {
            kind,
            detail: detail.into(),
            errors: Vec::new(),
            retry_after: None,
            attempts_remaining: None,
        }
    }

    pub fn with_errors(mut self, errors: Vec<FieldProblem>) -> Self {
        self.errors = errors;
        self
    }

    /// A server fault: the cause goes to the log with the request id, never into the response.
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(request_id = %current_request_id(), error = %cause, "request failed");
        Self::new(
            ProblemType::InternalError,
            "The server failed to handle the request.",
        )
    }

    pub fn body(&self) -> ProblemBody {
        ProblemBody {
            r#type: format!("/problems/{}", self.kind.slug()),
            title: self.kind.title().to_owned(),
            status: self.kind.status().as_u16(),
            detail: self.detail.clone(),
            instance: current_request_id(),
            errors: self.errors.clone(),
            attempts_remaining: self.attempts_remaining,
        }
    }
}

pub fn current_request_id() -> String {
    REQUEST_ID.try_with(Clone::clone).unwrap_or_default()
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&self.body()).unwrap_or_default();
        let mut res = (self.kind.status(), body).into_response();
        let h = res.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if self.kind == ProblemType::Unauthenticated {
            h.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"haven\", Bearer realm=\"haven\""),
            );
        }
        if let Some(secs) = self.retry_after {
            h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        res
    }
}

fn field_problems(errors: Vec<FieldError>) -> Vec<FieldProblem> {
    errors
        .into_iter()
        .map(|e| FieldProblem {
            field: e.field,
            message: e.message,
        })
        .collect()
}

impl From<IdentityError> for Problem {
    fn from(e: IdentityError) -> Self {
        match e {
            IdentityError::Unauthenticated => Problem::new(
                ProblemType::Unauthenticated,
                "The credentials are missing, wrong, expired or revoked.",
            ),
            IdentityError::LockedOut {
                retry_after_seconds,
            } => Problem {
                retry_after: Some(retry_after_seconds),
                ..Problem::new(
                    ProblemType::AuthLockedOut,
                    format!("Too many failed attempts; retry after {retry_after_seconds} seconds."),
                )
            },
            IdentityError::MissingScope(s) => Problem::new(
                ProblemType::InsufficientScope,
                format!("This operation requires the scope {s}."),
            ),
            IdentityError::AddressNotAllowed => Problem::new(
                ProblemType::AddressNotAllowed,
                "The request's source address is not in the key's allowlist.",
            ),
            IdentityError::Forbidden(why) => {
                Problem::new(ProblemType::Forbidden, format!("Not allowed: {why}."))
            }
            IdentityError::NotFound => Problem::new(ProblemType::NotFound, "No such resource."),
            IdentityError::Invalid(errors) => Problem::new(
                ProblemType::ValidationFailed,
                "One or more fields are invalid.",
            )
            .with_errors(field_problems(errors)),
            IdentityError::InvalidScope => Problem::new(
                ProblemType::ValidationFailed,
                "The requested scopes are unknown or not granted.",
            ),
            IdentityError::Conflict(why) => Problem::new(ProblemType::Conflict, format!("{why}.")),
            IdentityError::Store(e) => Problem::internal(&e),
            IdentityError::Crypto(e) => Problem::internal(&e),
        }
    }
}

impl From<VaultError> for Problem {
    fn from(e: VaultError) -> Self {
        match e {
            VaultError::Erased => Problem::new(ProblemType::Erased, "The data subject was erased."),
            VaultError::Integrity(why) => {
                tracing::error!(request_id = %current_request_id(), reason = why, "stored ciphertext failed authentication");
                Problem::new(
                    ProblemType::StoredDataUnreadable,
                    "Stored data failed its integrity check; nothing was returned.",
                )
            }
            VaultError::Crypto(e) => Problem::internal(&e),
            VaultError::Store(e) => Problem::internal(&e),
        }
    }
}

impl From<ContactsError> for Problem {
    fn from(e: ContactsError) -> Self {
        match e {
            ContactsError::Invalid(errors) => Problem::new(
                ProblemType::ValidationFailed,
                "One or more fields are invalid.",
            )
            .with_errors(field_problems(errors)),
            ContactsError::NotFound => Problem::new(ProblemType::NotFound, "No such contact."),
            ContactsError::DuplicateReference => Problem::new(
                ProblemType::Conflict,
                "The account already has a contact with this reference.",
            ),
            ContactsError::Erased => Problem::new(
                ProblemType::Erased,
                "The contact was erased; it can no longer be changed.",
            ),
            ContactsError::Identity(e) => e.into(),
            ContactsError::Vault(e) => e.into(),
            ContactsError::Store(e) => Problem::internal(&e),
        }
    }
}

impl From<WebhooksError> for Problem {
    fn from(e: WebhooksError) -> Self {
        match e {
            WebhooksError::Invalid(errors) => Problem::new(
                ProblemType::ValidationFailed,
                "One or more fields are invalid.",
            )
            .with_errors(field_problems(errors)),
            WebhooksError::Target(t) => Problem::new(
                ProblemType::WebhookTargetForbidden,
                format!("The endpoint URL is not allowed: {t}."),
            )
            .with_errors(vec![FieldProblem {
                field: "url".into(),
                message: t.to_string(),
            }]),
            WebhooksError::NotFound => Problem::new(ProblemType::NotFound, "No such resource."),
            WebhooksError::Identity(e) => e.into(),
            WebhooksError::Vault(e) => e.into(),
            WebhooksError::Store(e) => Problem::internal(&e),
            WebhooksError::Crypto(e) => Problem::internal(&e),
        }
    }
}

impl From<MessagingError> for Problem {
    fn from(e: MessagingError) -> Self {
        match e {
            MessagingError::Invalid(errors) => Problem::new(
                ProblemType::ValidationFailed,
                "One or more fields are invalid.",
            )
            .with_errors(field_problems(errors)),
            MessagingError::NotFound => Problem::new(ProblemType::NotFound, "No such resource."),
            MessagingError::SenderNotRegistered => Problem::new(
                ProblemType::SenderNotRegistered,
                "The sender is not registered to this account for this channel.",
            )
            .with_errors(vec![FieldProblem {
                field: "from".into(),
                message: "is not a registered sender of this account".into(),
            }]),
            MessagingError::SenderTaken => Problem::new(
                ProblemType::SenderTaken,
                "This address is registered already.",
            ),
            MessagingError::ChannelUnavailable(kind) => Problem::new(
                ProblemType::ChannelUnavailable,
                format!("No {kind} channel is configured on this server."),
            ),
            MessagingError::OptedOut => Problem::new(
                ProblemType::RecipientOptedOut,
                "The recipient opted out; nothing was sent.",
            ),
            MessagingError::ConsentRequired => Problem::new(
                ProblemType::ConsentRequired,
                "Marketing needs the recipient's recorded opt-in; nothing was sent.",
            ),
            MessagingError::RateLimited { retry_after } => {
                let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
                Problem {
                    retry_after: Some(secs.max(1)),
                    ..Problem::new(
                        ProblemType::RateLimited,
                        "The account is over its send rate; nothing was accepted.",
                    )
                }
            }
            MessagingError::TemplateNotApproved => Problem::new(
                ProblemType::TemplateNotApproved,
                "The template is not approved; nothing was sent.",
            ),
            MessagingError::TemplateReviewed => Problem::new(
                ProblemType::TemplateReviewed,
                "The template was reviewed already.",
            ),
            MessagingError::TemplateRequired => Problem::new(
                ProblemType::TemplateRequired,
                "A first message to this recipient must use an approved template; nothing was sent.",
            ),
            MessagingError::LinkNotAllowed(host) => Problem::new(
                ProblemType::LinkNotAllowed,
                format!(
                    "The message links to {host}, outside the account's allowed domains; nothing was sent."
                ),
            ),
            MessagingError::Identity(e) => e.into(),
            MessagingError::Vault(e) => e.into(),
            MessagingError::Contacts(e) => e.into(),
            MessagingError::Store(e) => Problem::internal(&e),
        }
    }
}

impl From<DispatchError> for Problem {
    fn from(e: DispatchError) -> Self {
        match e {
            DispatchError::Invalid(errors) => Problem::new(
                ProblemType::ValidationFailed,
                "One or more fields are invalid.",
            )
            .with_errors(field_problems(errors)),
            DispatchError::NotFound => Problem::new(ProblemType::NotFound, "No such resource."),
            DispatchError::Ended => Problem::new(
                ProblemType::DispatchEnded,
                "The dispatch has ended already.",
            ),
            DispatchError::Messaging(e) => e.into(),
            DispatchError::Identity(e) => e.into(),
            DispatchError::Vault(e) => e.into(),
            DispatchError::Store(e) => Problem::internal(&e),
        }
    }
}

impl From<ReportsError> for Problem {
    fn from(e: ReportsError) -> Self {
        match e {
            ReportsError::Invalid(errors) => Problem::new(
                ProblemType::ValidationFailed,
                "One or more query parameters are invalid.",
            )
            .with_errors(field_problems(errors)),
            ReportsError::Identity(e) => e.into(),
            ReportsError::Store(e) => Problem::internal(&e),
        }
    }
}

impl From<VerifyError> for Problem {
    fn from(e: VerifyError) -> Self {
        match e {
            VerifyError::Invalid(errors) => Problem::new(
                ProblemType::ValidationFailed,
                "One or more fields are invalid.",
            )
            .with_errors(field_problems(errors)),
            VerifyError::NotFound => Problem::new(ProblemType::NotFound, "No such resource."),
            VerifyError::Ended(status) => Problem::new(
                ProblemType::VerificationEnded,
                format!("The verification is {status}."),
            ),
            VerifyError::Expired => {
                Problem::new(ProblemType::VerificationExpired, "The code has expired.")
            }
            VerifyError::WrongCode { attempts_remaining } => Problem {
                attempts_remaining: Some(attempts_remaining),
                ..Problem::new(
                    ProblemType::CodeMismatch,
                    format!("Wrong code; {attempts_remaining} attempts remaining."),
                )
            },
            VerifyError::NoNextChannel => Problem::new(
                ProblemType::NoNextChannel,
                "There is no channel after the current one.",
            ),
            VerifyError::Busy => Problem::new(
                ProblemType::VerificationBusy,
                "The verification is moving to its next channel; retry.",
            ),
            VerifyError::TooMany { retry_after } => Problem {
                retry_after: Some(retry_after.as_secs().max(1)),
                ..Problem::new(
                    ProblemType::VerifyRateLimited,
                    "Too many verifications to this recipient; nothing was sent.",
                )
            },
            VerifyError::FactorLocked { retry_after } => Problem {
                retry_after: Some(retry_after.as_secs().max(1)),
                ..Problem::new(
                    ProblemType::FactorLocked,
                    "Too many wrong codes; the factor is locked for a while.",
                )
            },
            VerifyError::CodeReused => {
                Problem::new(ProblemType::CodeReused, "This code was used already.")
            }
            VerifyError::DestinationNotAllowed(reason) => Problem::new(
                ProblemType::DestinationNotAllowed,
                format!("Codes are not sent to this destination ({reason}); nothing was sent."),
            ),
            VerifyError::DestinationBlocked(prefix) => Problem::new(
                ProblemType::DestinationBlocked,
                format!(
                    "The prefix {prefix} is blocked by the SMS-pumping guard; nothing was sent."
                ),
            ),
            VerifyError::Messaging(e) => e.into(),
            VerifyError::Identity(e) => e.into(),
            VerifyError::Vault(e) => e.into(),
            VerifyError::Store(e) => Problem::internal(&e),
        }
    }
}

/// Serves `/problems/{slug}` as a short human-readable page.
pub fn page(kind: ProblemType) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title></head>\
         <body><h1>{title}</h1><p>HTTP status {status}. Problem type <code>/problems/{slug}</code>.</p><p>{about}</p>\
         <p><a href=\"/v1/openapi.json\">API reference (OpenAPI)</a></p></body></html>",
        title = kind.title(),
        status = kind.status().as_u16(),
        slug = kind.slug(),
        about = kind.about().replace('<', "&lt;").replace('`', ""),
    )
}

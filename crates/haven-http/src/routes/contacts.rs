//! `/v1/contacts`: data subjects (patients, relatives, caregivers). Every field but the id is
//! PHI, stored only encrypted under the contact's own key. Lookups by PHI go in a request body
//! (`POST /v1/contacts/search`), never in a URL, so they stay out of proxy and access logs.

use super::{PageParams, double_option, rfc3339};
use crate::extract::{ApiJson, ApiPath, ApiQuery, Auth};
use crate::problem::{Problem, ProblemBody};
use crate::{AppState, idempotency};
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use haven_contacts::{Contact, ContactPatch, ContactSearch, Contacts};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::sync::Arc;
use utoipa::ToSchema;

#[derive(Debug, Serialize, ToSchema)]
pub struct ContactView {
    #[schema(example = "con_01jd3k2m4n5p6q7r8s9t0v1w2x")]
    pub id: String,
    pub account_id: String,
    /// `active`, or `erased` once the contact's key was destroyed (every PHI field is then null).
    #[schema(example = "active")]
    pub status: &'static str,
    /// The account's own identifier for the subject (an MRN, a CRM id); unique per account.
    #[schema(example = "MRN-004211")]
    pub reference: Option<String>,
    #[schema(example = "Ada Lovelace")]
    pub name: Option<String>,
    /// E.164.
    #[schema(example = "+14155550100")]
    pub phone_number: Option<String>,
    #[schema(example = "ada@example.org")]
    pub email: Option<String>,
    /// Free-form JSON object, up to 8 KiB.
    #[schema(value_type = Option<Object>)]
    pub attributes: Option<Map<String, Value>>,
    pub created_at: String,
    pub updated_at: String,
    pub erased_at: Option<String>,
}

impl From<Contact> for ContactView {
    fn from(c: Contact) -> Self {
        Self {
            id: c.id,
            account_id: c.account_id,
            status: c.status.as_str(),
            reference: c.reference,
            name: c.name,
            phone_number: c.phone_number,
            email: c.email,
            attributes: c.attributes,
            created_at: haven_platform::clock::to_rfc3339(c.created_at_ms),
            updated_at: haven_platform::clock::to_rfc3339(c.updated_at_ms),
            erased_at: rfc3339(c.erased_at_ms),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ContactList {
    pub items: Vec<ContactView>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateContact {
    /// 1 to 128 characters; unique within the account.
    #[schema(example = "MRN-004211")]
    pub reference: String,
    #[schema(example = "Ada Lovelace")]
    pub name: Option<String>,
    /// E.164; spaces, dots, hyphens and parentheses are removed.
    #[schema(example = "+14155550100")]
    pub phone_number: Option<String>,
    #[schema(example = "ada@example.org")]
    pub email: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub attributes: Option<Map<String, Value>>,
}

/// A change; a field set to `null` is cleared (except `reference`).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateContact {
    pub reference: Option<String>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>)]
    pub name: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>)]
    pub phone_number: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>)]
    pub email: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<Object>)]
    pub attributes: Option<Option<Map<String, Value>>>,
}

/// Exact-match lookup through keyed blind indexes; every given field must match.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchContacts {
    pub reference: Option<String>,
    #[schema(example = "+14155550100")]
    pub phone_number: Option<String>,
    pub email: Option<String>,
    /// Items per page, 1 to 200 (default 50).
    pub page_size: Option<u32>,
    pub cursor: Option<String>,
}

fn contacts(st: &AppState) -> &Contacts {
    &st.contacts
}

/// Create a contact (a data subject) with its own encryption key.
#[utoipa::path(post, path = "/v1/contacts", tag = "contacts", request_body = CreateContact,
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes retries safe: a replay returns the first response.")),
    responses((status = 201, description = "Created", body = ContactView), (status = 400, description = "Malformed request", body = ProblemBody), (status = 401, description = "Not authenticated", body = ProblemBody),
        (status = 403, description = "Needs contacts:write", body = ProblemBody), (status = 409, description = "The reference is taken", body = ProblemBody), (status = 422, description = "Valid JSON that breaks a rule", body = ProblemBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn create_contact(
    State(st): State<Arc<AppState>>,
    auth: Auth,
    headers: HeaderMap,
    body: ApiJson<CreateContact>,
) -> Result<Response, Problem> {
    let b = body.value;
    let fields = Contacts::parse_new(
        &b.reference,
        b.name.as_deref(),
        b.phone_number.as_deref(),
        b.email.as_deref(),
        b.attributes,
    )?;
    let meta = auth.meta();
    idempotency::once(
        &st,
        &auth.principal.account_id,
        &headers,
        "POST /v1/contacts",
        &body.raw,
        StatusCode::CREATED,
        async {
            Ok(ContactView::from(
                contacts(&st).create(&auth.principal, &meta, fields).await?,
            ))
        },
    )
    .await
}

/// List the account's contacts (erased ones included, without PHI).
#[utoipa::path(get, path = "/v1/contacts", tag = "contacts", params(PageParams),
    responses((status = 200, description = "OK", body = ContactList), (status = 401, description = "Not authenticated", body = ProblemBody), (status = 403, description = "Needs contacts:read", body = ProblemBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn list_contacts(
    State(st): State<Arc<AppState>>,
    auth: Auth,
    ApiQuery(q): ApiQuery<PageParams>,
) -> Result<Json<ContactList>, Problem> {
    let page = contacts(&st)
        .list(
            &auth.principal,
            &auth.meta(),
            &ContactSearch::default(),
            &q.parse()?,
        )
        .await?;
    Ok(Json(ContactList {
        items: page.items.into_iter().map(Into::into).collect(),
        next_cursor: page.next_cursor,
    }))
}

/// Find contacts by reference, phone number or email (exact match).
#[utoipa::path(post, path = "/v1/contacts/search", tag = "contacts", request_body = SearchContacts,
    responses((status = 200, description = "OK", body = ContactList), (status = 401, description = "Not authenticated", body = ProblemBody), (status = 403, description = "Needs contacts:read", body = ProblemBody),
        (status = 422, description = "Valid JSON that breaks a rule", body = ProblemBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn search_contacts(
    State(st): State<Arc<AppState>>,
    auth: Auth,
    body: ApiJson<SearchContacts>,
) -> Result<Json<ContactList>, Problem> {
    let b = body.value;
    let page = PageParams {
        page_size: b.page_size,
        cursor: b.cursor,
    }
    .parse()?;
    let search = ContactSearch {
        reference: b.reference,
        phone_number: b.phone_number,
        email: b.email,
    };
    let page = contacts(&st)
        .list(&auth.principal, &auth.meta(), &search, &page)
        .await?;
    Ok(Json(ContactList {
        items: page.items.into_iter().map(Into::into).collect(),
        next_cursor: page.next_cursor,
    }))
}

/// Get a contact. An erased contact answers with `status: erased` and no PHI.
#[utoipa::path(get, path = "/v1/contacts/{contact_id}", tag = "contacts",
    params(("contact_id" = String, Path)),
    responses((status = 200, description = "OK", body = ContactView), (status = 401, description = "Not authenticated", body = ProblemBody), (status = 404, description = "Not found (or not yours)", body = ProblemBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn get_contact(
    State(st): State<Arc<AppState>>,
    auth: Auth,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<ContactView>, Problem> {
    Ok(Json(
        contacts(&st)
            .get(&auth.principal, &auth.meta(), &id)
            .await?
            .into(),
    ))
}

/// Change a contact.
#[utoipa::path(patch, path = "/v1/contacts/{contact_id}", tag = "contacts", request_body = UpdateContact,
    params(("contact_id" = String, Path)),
    responses((status = 200, description = "OK", body = ContactView), (status = 401, description = "Not authenticated", body = ProblemBody), (status = 404, description = "Not found (or not yours)", body = ProblemBody),
        (status = 409, description = "Erased, or the reference is taken", body = ProblemBody), (status = 422, description = "Valid JSON that breaks a rule", body = ProblemBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn update_contact(
    State(st): State<Arc<AppState>>,
    auth: Auth,
    ApiPath(id): ApiPath<String>,
    body: ApiJson<UpdateContact>,
) -> Result<Json<ContactView>, Problem> {
    let b = body.value;
    let patch = Contacts::parse_patch(ContactPatch {
        reference: b.reference,
        name: b.name,
        phone_number: b.phone_number,
        email: b.email,
        attributes: b.attributes,
    })?;
    Ok(Json(
        contacts(&st)
            .update(&auth.principal, &auth.meta(), &id, patch)
            .await?
            .into(),
    ))
}

/// Erase a contact (right to erasure): its key is destroyed, so its data is unreadable from
/// now on, in the database and in any copy of it. Needs `contacts:admin`. Repeating it is
/// harmless.
#[utoipa::path(post, path = "/v1/contacts/{contact_id}/erase", tag = "contacts",
    params(("contact_id" = String, Path)),
    responses((status = 200, description = "Erased", body = ContactView), (status = 401, description = "Not authenticated", body = ProblemBody), (status = 403, description = "Needs contacts:admin", body = ProblemBody),
        (status = 404, description = "Not found (or not yours)", body = ProblemBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn erase_contact(
    State(st): State<Arc<AppState>>,
    auth: Auth,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<ContactView>, Problem> {
    Ok(Json(
        contacts(&st)
            .erase(&auth.principal, &auth.meta(), &id)
            .await?
            .into(),
    ))
}

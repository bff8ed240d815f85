pub mod accounts;
pub mod audit;
pub mod contacts;
pub mod dispatch;
pub mod factors;
pub mod keys;
pub mod messages;
pub mod oauth;
pub mod reports;
pub mod system;
pub mod templates;
pub mod verify;
pub mod webhooks;

use haven_platform::page::PageRequest;
use serde::Deserialize;
use utoipa::IntoParams;

use crate::problem::{Problem, ProblemType};

/// `?page_size=&cursor=` on every list.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    /// Items per page, 1 to 200 (default 50).
    pub page_size: Option<u32>,
    /// `next_cursor` from the previous page.
    pub cursor: Option<String>,
}

impl PageParams {
    pub fn parse(&self) -> Result<PageRequest, Problem> {
        PageRequest::parse(self.page_size, self.cursor.as_deref())
            .map_err(|e| Problem::new(ProblemType::MalformedRequest, format!("{e}.")))
    }
}

pub fn rfc3339(ms: Option<i64>) -> Option<String> {
    ms.map(haven_platform::clock::to_rfc3339)
}

/// For PATCH bodies: absent → `None`, `null` → `Some(None)`, a value → `Some(Some(v))`.
pub fn double_option<'de, T, D>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    T: serde::Deserialize<'de>,
    D: serde::Deserializer<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

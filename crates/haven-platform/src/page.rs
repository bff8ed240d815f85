//! Cursor pagination: `?page_size=50&cursor=…` → `{"items": […], "next_cursor": "…" | null}`.
//!
//! Lists are ordered by id (ids are time-ordered); the cursor is the base64url of the last id
//! returned, so it is stable under inserts and needs no server-side state.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

pub const DEFAULT_PAGE_SIZE: u32 = 50;
pub const MAX_PAGE_SIZE: u32 = 200;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRequest {
    pub size: u32,
    /// Return items whose id sorts strictly after this one.
    pub after: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PageError {
    #[error("page_size must be between 1 and {MAX_PAGE_SIZE}")]
    Size,
    #[error("cursor is not one this server issued")]
    Cursor,
}

impl PageRequest {
    pub fn parse(size: Option<u32>, cursor: Option<&str>) -> Result<Self, PageError> {
        let size = size.unwrap_or(DEFAULT_PAGE_SIZE);
        if size == 0 || size > MAX_PAGE_SIZE {
            return Err(PageError::Size);
        }
        let after = match cursor {
            None | Some("") => None,
            Some(c) => {
                let raw = URL_SAFE_NO_PAD.decode(c).map_err(|_| PageError::Cursor)?;
                let id = String::from_utf8(raw).map_err(|_| PageError::Cursor)?;
                if id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                    return Err(PageError::Cursor);
                }
                Some(id)
            }
        };
        Ok(Self { size, after })
    }

    /// Rows to fetch: one more than the page, to learn whether another page exists.
    pub fn fetch_limit(&self) -> i64 {
        i64::from(self.size) + 1
    }
}

#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

impl<T> Page<T> {
    /// Builds a page from up to `fetch_limit` rows ordered by id.
    pub fn from_rows(mut rows: Vec<T>, req: &PageRequest, id_of: impl Fn(&T) -> &str) -> Self {
        let more = rows.len() > req.size as usize;
        rows.truncate(req.size as usize);
        let next_cursor = if more {
            rows.last().map(|r| URL_SAFE_NO_PAD.encode(id_of(r)))
        } else {
            None
        };
        Self {
            items: rows,
            next_cursor,
        }
    }

    pub fn map<U>(self, f: impl FnMut(T) -> U) -> Page<U> {
        Page {
            items: self.items.into_iter().map(f).collect(),
            next_cursor: self.next_cursor,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trip_and_limits() {
        let req = PageRequest::parse(Some(2), None).unwrap_or_else(|e| panic!("{e}"));
        let page = Page::from_rows(vec!["acc_a", "acc_b", "acc_c"], &req, |s| s);
        assert_eq!(page.items, vec!["acc_a", "acc_b"]);
        let cursor = page.next_cursor.clone().unwrap_or_default();
        let next = PageRequest::parse(Some(2), Some(&cursor)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(next.after.as_deref(), Some("acc_b"));
        assert_eq!(PageRequest::parse(Some(0), None), Err(PageError::Size));
        assert_eq!(PageRequest::parse(Some(201), None), Err(PageError::Size));
        assert_eq!(PageRequest::parse(None, Some("!!")), Err(PageError::Cursor));
        assert_eq!(
            PageRequest::parse(None, Some("JyBPUiAxPTE")),
            Err(PageError::Cursor)
        );
    }
}

//! Per-request metric handles, registered once per (method, route, status) and reused: looking a
//! labelled metric up in the registry on every request (labels allocated, hashed, compared) cost
//! more than recording it.

use axum::http::Method;
use metrics::{Counter, Histogram};
use std::collections::HashMap;
use std::sync::{OnceLock, RwLock};

struct Handles {
    method: &'static str,
    status: u16,
    requests: Counter,
    duration: Histogram,
}

/// Route templates (never raw paths) → the handles seen for them.
static HANDLES: OnceLock<RwLock<HashMap<String, Vec<Handles>>>> = OnceLock::new();

/// The method as a label: the standard ones by name, anything else as `OTHER`, so a client
/// cannot create a new time series per made-up method.
fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => "OTHER",
    }
}

/// Counts a finished request and records its duration.
pub(crate) fn record(method: &Method, route: &str, status: u16, seconds: f64) {
    let method = method_label(method);
    let map = HANDLES.get_or_init(Default::default);
    let found = map.read().ok().and_then(|m| {
        m.get(route).and_then(|v| {
            v.iter()
                .find(|h| h.method == method && h.status == status)
                .map(|h| (h.requests.clone(), h.duration.clone()))
        })
    });
    let (requests, duration) = match found {
        Some(h) => h,
        None => {
            let labels = [
                ("method", method.to_owned()),
                ("route", route.to_owned()),
                ("status", status.to_string()),
            ];
            let requests = metrics::counter!("haven_http_requests_total", &labels);
            let duration = metrics::histogram!("haven_http_request_duration_seconds", &labels[..2]);
            if let Ok(mut m) = map.write() {
                let v = m.entry(route.to_owned()).or_default();
                if !v.iter().any(|h| h.method == method && h.status == status) {
                    v.push(Handles {
                        method,
                        status,
                        requests: requests.clone(),
                        duration: duration.clone(),
                    });
                }
            }
            (requests, duration)
        }
    };
    requests.increment(1);
    duration.record(seconds);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_up_methods_share_one_label() {
        assert_eq!(method_label(&Method::GET), "GET");
        let odd = Method::from_bytes(b"BREW").unwrap_or(Method::GET);
        assert_eq!(method_label(&odd), "OTHER");
    }
}

//! Sending one webhook: two HTTP clients (HTTPS to public or allowlisted addresses; plain
//! HTTP only to allowlisted ones), each resolving names through the SSRF guard, following no
//! redirect and using no proxy.

use crate::target::{TargetError, TargetPolicy, literal_ip};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

struct GuardedResolver {
    policy: TargetPolicy,
    https: bool,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        let https = self.https;
        Box::pin(async move {
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((name.as_str(), 0)).await?.collect();
            let mut allowed = Vec::new();
            let mut refused = None;
            for a in found {
                match policy.check_ip(a.ip(), https) {
                    Ok(()) => allowed.push(a),
                    Err(e) => refused = Some(e),
                }
            }
            if allowed.is_empty() {
                let e: Box<dyn std::error::Error + Send + Sync> =
                    Box::new(refused.unwrap_or(TargetError::BadUrl));
                return Err(e);
            }
            let addrs: Addrs = Box::new(allowed.into_iter());
            Ok(addrs)
        })
    }
}

pub struct Sender {
    policy: TargetPolicy,
    https: reqwest::Client,
    http: reqwest::Client,
}

/// What an attempt got back.
#[derive(Debug)]
pub enum Sent {
    Status(u16),
    Failed(String),
}

fn client(
    policy: &TargetPolicy,
    https: bool,
    timeout: Duration,
) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .user_agent(concat!("Haven-Webhooks/", env!("CARGO_PKG_VERSION")))
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .https_only(https)
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .pool_idle_timeout(Duration::from_secs(30))
        .dns_resolver(Arc::new(GuardedResolver {
            policy: policy.clone(),
            https,
        }))
        .build()
}

/// The cause of a failed request, without the URL (which may hold secrets).
fn describe(e: &reqwest::Error) -> String {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(t) = s.downcast_ref::<TargetError>() {
            return format!("refused: {t}");
        }
        source = s.source();
    }
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else if e.is_request() {
        "request failed"
    } else {
        "failed"
    };
    let mut detail = String::new();
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = source {
        detail = s.to_string();
        source = s.source();
    }
    if detail.is_empty() {
        kind.to_owned()
    } else {
        format!("{kind}: {}", detail.chars().take(200).collect::<String>())
    }
}

impl Sender {
    pub fn new(policy: TargetPolicy, timeout: Duration) -> reqwest::Result<Self> {
        Ok(Self {
            https: client(&policy, true, timeout)?,
            http: client(&policy, false, timeout)?,
            policy,
        })
    }

    pub async fn send(&self, url: &str, headers: &[(&str, String)], body: Vec<u8>) -> Sent {
        let url = match self.policy.check_url(url) {
            Ok(u) => u,
            Err(e) => return Sent::Failed(format!("refused: {e}")),
        };
        let https = url.scheme() == "https";
        if let Some(ip) = literal_ip(&url)
            && let Err(e) = self.policy.check_ip(ip, https)
        {
            return Sent::Failed(format!("refused: {e}"));
        }
        let client = if https { &self.https } else { &self.http };
        let mut req = client
            .post(url)
            .header("content-type", "application/json")
            .body(body);
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        match req.send().await {
            Ok(res) => Sent::Status(res.status().as_u16()),
            Err(e) => Sent::Failed(describe(&e.without_url())),
        }
    }
}

//! Identity: accounts and subaccounts, API keys, OAuth 2.0 client-credentials tokens, and the
//! authentication of every request. Depends only on its own storage port and the audit sink.

pub mod accounts;
mod authn;
pub mod cache;
pub mod error;
pub mod model;
pub mod store;
pub mod tokens;

pub use authn::AuthSettings;
pub use error::{IdentityError, IdentityResult};
pub use model::*;
pub use tokens::{AccessClaims, IssuedToken, TokenSettings};

use haven_crypto::keys::SecretHasher;
use haven_crypto::ring::KeyProvider;
use haven_platform::audit::{Actor, AuditAction, AuditEvent, AuditSink, Outcome};
use ipnet::IpNet;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use store::IdentityStore;

/// How a request proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    ApiKey,
    Bearer,
    /// The `haven` command line on the server itself, acting as the operator.
    Operator,
}

impl AuthMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ApiKey => "api_key",
            Self::Bearer => "bearer",
            Self::Operator => "cli",
        }
    }
}

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Principal {
    pub account_id: String,
    pub parent_account_id: Option<String>,
    /// The API key behind the request (for a bearer token, the key it was issued to).
    pub credential_id: String,
    pub method: AuthMethod,
    pub scopes: ScopeSet,
    /// The `jti` of a bearer token.
    pub token_id: Option<String>,
    pub(crate) allowed_cidrs: Vec<IpNet>,
}

impl Principal {
    /// The operator, acting through the command line with every right on every account.
    pub fn operator(root_account_id: &str) -> Self {
        Self {
            account_id: root_account_id.to_owned(),
            parent_account_id: None,
            credential_id: "cli".to_owned(),
            method: AuthMethod::Operator,
            scopes: ScopeSet::new(Scope::all_admin()),
            token_id: None,
            allowed_cidrs: Vec::new(),
        }
    }

    pub fn require(&self, scope: Scope) -> IdentityResult<()> {
        if self.scopes.allows(&scope) {
            Ok(())
        } else {
            Err(IdentityError::MissingScope(scope))
        }
    }

    /// Whether this caller may see `account`: its own, or a direct subaccount of its own.
    pub fn can_see(&self, account: &Account) -> bool {
        self.method == AuthMethod::Operator
            || account.id == self.account_id
            || account.parent_id.as_deref() == Some(self.account_id.as_str())
    }

    pub fn actor(&self, meta: &RequestMeta) -> Actor {
        Actor {
            account_id: Some(self.account_id.clone()),
            credential_id: Some(self.credential_id.clone()),
            auth_method: Some(self.method.as_str()),
            source_addr: meta.source,
            user_agent: meta.user_agent.clone(),
            request_id: meta.request_id.clone(),
        }
    }
}

/// What is known about the request, for audit and allowlists.
#[derive(Debug, Clone, Default)]
pub struct RequestMeta {
    pub source: Option<IpAddr>,
    pub user_agent: Option<String>,
    pub request_id: Option<String>,
}

/// The identity service: one per process, shared by every request.
pub struct Identity {
    store: Arc<dyn IdentityStore>,
    audit: Arc<dyn AuditSink>,
    hasher: SecretHasher,
    /// Verified credentials, by keyed digest of what was presented.
    cache: cache::TtlCache<[u8; 32], Arc<Principal>>,
    /// Account records, for the auth slow path and reads.
    accounts: cache::TtlCache<String, Account>,
    settings: AuthSettings,
    tokens: tokens::TokenService,
    touched: Mutex<HashMap<String, i64>>,
}

const PEPPER_NAME: &str = "api_key_pepper";

/// A 32-byte server secret shared by every node (the API-key pepper, the bounce address
/// key): read from the database and unsealed with the master key, or made and stored on
/// the first start. When several nodes start together, the first one stored wins.
pub async fn system_secret(
    store: &dyn IdentityStore,
    master: &dyn KeyProvider,
    name: &str,
) -> IdentityResult<[u8; 32]> {
    let context = format!("haven:system:{name}");
    if store.get_system_secret(name).await?.is_none() {
        let secret = haven_crypto::random_bytes::<32>()?;
        let sealed = master.wrap(&context, &secret)?;
        store
            .put_system_secret(name, &sealed, haven_platform::clock::now_ms())
            .await?;
    }
    let sealed = store
        .get_system_secret(name)
        .await?
        .ok_or(IdentityError::Conflict(
            "a server secret vanished while starting",
        ))?;
    let raw = master.unwrap(&context, &sealed)?;
    <[u8; 32]>::try_from(raw.as_slice())
        .map_err(|_| IdentityError::Conflict("a stored server secret is not 32 bytes"))
}

impl Identity {
    /// Opens the service: unseals the API-key pepper (creating it on a new database) and loads
    /// the token signing keys. Fails if `master` is not the key this database was sealed with.
    pub async fn open(
        store: Arc<dyn IdentityStore>,
        audit: Arc<dyn AuditSink>,
        master: Arc<dyn KeyProvider>,
        settings: AuthSettings,
        token_settings: TokenSettings,
    ) -> IdentityResult<Self> {
        let pepper = system_secret(store.as_ref(), master.as_ref(), PEPPER_NAME).await?;
        let tokens = tokens::TokenService::open(Arc::clone(&store), master, token_settings).await?;
        Ok(Self {
            cache: cache::TtlCache::new(settings.cache_ttl_ms),
            accounts: cache::TtlCache::new(settings.cache_ttl_ms),
            store,
            audit,
            hasher: SecretHasher::new(&pepper),
            settings,
            tokens,
            touched: Mutex::new(HashMap::new()),
        })
    }

    pub fn tokens(&self) -> &tokens::TokenService {
        &self.tokens
    }

    /// Periodic upkeep: reload the shared signing keys, rotate them when due, purge expired
    /// denylist entries and failure counters.
    pub async fn maintain(&self) -> IdentityResult<()> {
        let now = haven_platform::clock::now_ms();
        self.tokens.refresh().await?;
        if let Some(kid) = self.tokens.rotate_if_due(now).await? {
            self.audit
                .record(
                    AuditEvent::new(
                        AuditAction::SigningKeyRotated,
                        Outcome::Success,
                        Actor::default(),
                    )
                    .resource("signing_key", kid),
                )
                .await;
        }
        self.store.purge_expired(now).await?;
        Ok(())
    }

    /// Forgets every cached credential and account: after any change on this node.
    pub(crate) fn invalidate(&self) {
        self.cache.clear();
        self.accounts.clear();
    }

    /// An account record, from the cache (≤ 1 s old) or the store.
    pub(crate) async fn load_account(&self, id: &str) -> IdentityResult<Option<Account>> {
        let now = haven_platform::clock::now_ms();
        let key = id.to_owned();
        if let Some(a) = self.accounts.get(&key, now) {
            return Ok(Some(a));
        }
        let found = self.store.get_account(id).await?;
        if let Some(a) = &found {
            self.accounts.insert(key, a.clone(), now, None);
        }
        Ok(found)
    }

    async fn audit(
        &self,
        action: AuditAction,
        outcome: Outcome,
        actor: Actor,
        resource: Option<(&'static str, &str)>,
        reason: Option<&'static str>,
    ) {
        let mut e = AuditEvent::new(action, outcome, actor);
        if let Some((kind, id)) = resource {
            e = e.resource(kind, id);
        }
        e.reason = reason;
        self.audit.record(e).await;
    }
}

pub use accounts::{AccountPatch, IssuedKey, MAX_GRACE_SECONDS};

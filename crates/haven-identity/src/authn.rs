//! Authentication of requests: API keys (HTTP Basic) and bearer JWTs, with failure throttling
//! shared by every node.

use crate::model::{KEY_PREFIX, address_allowed, is_id};
use crate::tokens::{AccessClaims, IssuedToken};
use crate::{
    Account, AuthMethod, Identity, IdentityError, IdentityResult, Principal, RequestMeta, ScopeSet,
};
use haven_platform::audit::{Actor, AuditAction, Outcome};
use haven_platform::clock::now_ms;
use std::sync::Arc;

#[derive(Debug, Clone)]
pub struct AuthSettings {
    pub cache_ttl_ms: u64,
    pub failure_window_ms: i64,
    pub max_failures_per_key: i64,
    pub max_failures_per_address: i64,
    pub lockout_ms: i64,
    pub last_used_resolution_ms: i64,
}

impl From<&haven_platform::config::AuthConfig> for AuthSettings {
    fn from(c: &haven_platform::config::AuthConfig) -> Self {
        let ms = |s: u64| i64::try_from(s.saturating_mul(1000)).unwrap_or(i64::MAX);
        Self {
            cache_ttl_ms: c.credential_cache_ms,
            failure_window_ms: ms(c.failure_window_seconds),
            max_failures_per_key: i64::from(c.max_failures_per_key),
            max_failures_per_address: i64::from(c.max_failures_per_address),
            lockout_ms: ms(c.lockout_seconds),
            last_used_resolution_ms: ms(c.last_used_resolution_seconds),
        }
    }
}

impl Identity {
    fn digest(&self, parts: &[&str]) -> [u8; 32] {
        let mut joined = String::with_capacity(parts.iter().map(|p| p.len() + 1).sum());
        for p in parts {
            joined.push_str(p);
            joined.push('\0');
        }
        let mut out = [0u8; 32];
        out.copy_from_slice(&self.hasher.hash(&joined)[..32]);
        out
    }

    /// Authenticates `Authorization: Basic key_id:secret`.
    pub async fn authenticate_api_key(
        &self,
        key_id: &str,
        secret: &str,
        meta: &RequestMeta,
    ) -> IdentityResult<Arc<Principal>> {
        self.authenticate_key_as(key_id, secret, meta, AuditAction::AuthApiKey)
            .await
    }

    async fn authenticate_key_as(
        &self,
        key_id: &str,
        secret: &str,
        meta: &RequestMeta,
        action: AuditAction,
    ) -> IdentityResult<Arc<Principal>> {
        let now = now_ms();
        let digest = self.digest(&["key", key_id, secret]);
        if let Some(p) = self.cache.get(&digest, now) {
            return self.admit(p, meta, action, now).await;
        }
        let claimed = Actor {
            credential_id: is_id(KEY_PREFIX, key_id).then(|| key_id.to_owned()),
            auth_method: Some(AuthMethod::ApiKey.as_str()),
            source_addr: meta.source,
            user_agent: meta.user_agent.clone(),
            request_id: meta.request_id.clone(),
            account_id: None,
        };
        let mut subjects = Vec::with_capacity(2);
        if claimed.credential_id.is_some() {
            subjects.push(format!("key:{key_id}"));
        }
        if let Some(addr) = meta.source {
            subjects.push(format!("addr:{addr}"));
        }
        self.refuse_if_locked(&subjects, &claimed, action, now)
            .await?;
        if claimed.credential_id.is_none() {
            return Err(self
                .fail(&subjects, claimed, action, "unknown_key", now)
                .await);
        }
        let Some(key) = self.store.get_key(key_id).await? else {
            return Err(self
                .fail(&subjects, claimed, action, "unknown_key", now)
                .await);
        };
        let mut claimed = claimed;
        claimed.account_id = Some(key.account_id.clone());
        let current = self.hasher.verify(secret, &key.secret_hash);
        let previous_until = match (&key.previous_secret_hash, key.previous_secret_expires_at_ms) {
            (Some(h), Some(until)) if !current && until > now && self.hasher.verify(secret, h) => {
                Some(until)
            }
            _ => None,
        };
        if !current && previous_until.is_none() {
            return Err(self
                .fail(&subjects, claimed, action, "bad_secret", now)
                .await);
        }
        match key.status(now) {
            crate::KeyStatus::Active => {}
            crate::KeyStatus::Revoked => {
                return Err(self.fail(&subjects, claimed, action, "revoked", now).await);
            }
            crate::KeyStatus::Expired => {
                return Err(self.fail(&subjects, claimed, action, "expired", now).await);
            }
        }
        let Some(account) = self.active_chain(&key.account_id).await? else {
            return Err(self
                .fail(&subjects, claimed, action, "account_suspended", now)
                .await);
        };
        let principal = Arc::new(Principal {
            account_id: account.id,
            parent_account_id: account.parent_id,
            credential_id: key.id,
            method: AuthMethod::ApiKey,
            scopes: key.scopes,
            token_id: None,
            allowed_cidrs: key.allowed_cidrs,
        });
        // A secret in its rotation grace period is cached no longer than it stays valid.
        let not_after = key.expires_at_ms.into_iter().chain(previous_until).min();
        self.cache
            .insert(digest, Arc::clone(&principal), now, not_after);
        self.admit(principal, meta, action, now).await
    }

    /// Authenticates `Authorization: Bearer <jwt>`.
    pub async fn authenticate_bearer(
        &self,
        token: &str,
        meta: &RequestMeta,
    ) -> IdentityResult<Arc<Principal>> {
        let now = now_ms();
        let action = AuditAction::AuthBearer;
        let digest = self.digest(&["jwt", token]);
        if let Some(p) = self.cache.get(&digest, now) {
            return self.admit(p, meta, action, now).await;
        }
        let mut claimed = Actor {
            auth_method: Some(AuthMethod::Bearer.as_str()),
            source_addr: meta.source,
            user_agent: meta.user_agent.clone(),
            request_id: meta.request_id.clone(),
            ..Actor::default()
        };
        let subjects: Vec<String> = meta.source.iter().map(|a| format!("addr:{a}")).collect();
        self.refuse_if_locked(&subjects, &claimed, action, now)
            .await?;
        let claims = match self.tokens.verify(token, now).await {
            Ok(c) => c,
            Err(reason) => return Err(self.fail(&subjects, claimed, action, reason, now).await),
        };
        claimed.account_id = Some(claims.acc.clone());
        claimed.credential_id = Some(claims.client_id.clone());
        let (principal, reason) = self.principal_for_token(&claims, now).await?;
        let Some(principal) = principal else {
            return Err(self.fail(&subjects, claimed, action, reason, now).await);
        };
        let principal = Arc::new(principal);
        self.cache.insert(
            digest,
            Arc::clone(&principal),
            now,
            Some(claims.exp.saturating_mul(1000)),
        );
        self.admit(principal, meta, action, now).await
    }

    /// Whether a verified token is still good: not revoked, its key active, its account active.
    pub(crate) async fn principal_for_token(
        &self,
        claims: &AccessClaims,
        now: i64,
    ) -> IdentityResult<(Option<Principal>, &'static str)> {
        if self.store.is_token_revoked(&claims.jti).await? {
            return Ok((None, "token_revoked"));
        }
        let key = match self.store.get_key(&claims.client_id).await? {
            Some(k) if k.account_id == claims.acc => k,
            _ => return Ok((None, "unknown_key")),
        };
        if key.status(now) != crate::KeyStatus::Active {
            return Ok((None, "key_revoked"));
        }
        let Some(account) = self.active_chain(&key.account_id).await? else {
            return Ok((None, "account_suspended"));
        };
        // Scopes can only shrink after issue: the token's, as far as the key still grants them.
        let scopes = key
            .scopes
            .narrow(&ScopeSet::from_stored(claims.scope.split(' ')));
        Ok((
            Some(Principal {
                account_id: account.id,
                parent_account_id: account.parent_id,
                credential_id: key.id,
                method: AuthMethod::Bearer,
                scopes,
                token_id: Some(claims.jti.clone()),
                allowed_cidrs: key.allowed_cidrs,
            }),
            "",
        ))
    }

    /// The account if it and every ancestor are active.
    pub(crate) async fn active_chain(&self, account_id: &str) -> IdentityResult<Option<Account>> {
        let Some(account) = self.load_account(account_id).await? else {
            return Ok(None);
        };
        if account.status != crate::AccountStatus::Active {
            return Ok(None);
        }
        if let Some(parent) = &account.parent_id {
            match self.load_account(parent).await? {
                Some(p) if p.status == crate::AccountStatus::Active => {}
                _ => return Ok(None),
            }
        }
        Ok(Some(account))
    }

    /// Last checks that depend on the request rather than the credential, then the audit record.
    async fn admit(
        &self,
        p: Arc<Principal>,
        meta: &RequestMeta,
        action: crate::AuditAction,
        now: i64,
    ) -> IdentityResult<Arc<Principal>> {
        if !address_allowed(&p.allowed_cidrs, meta.source) {
            self.audit(
                action,
                Outcome::Failure,
                p.actor(meta),
                None,
                Some("address_not_allowed"),
            )
            .await;
            return Err(IdentityError::AddressNotAllowed);
        }
        self.touch(&p.credential_id, now);
        // Successful authentications are the bulk of the log: held back in a request until it
        // ends, where an event of the request's own stands for them, and otherwise queued for
        // the next group commit rather than waited for (failures and every change are waited
        // for).
        let event = haven_platform::audit::AuditEvent::new(action, Outcome::Success, p.actor(meta));
        if let Some(event) = haven_platform::audit::hold_authentication(&self.audit, event) {
            self.audit.enqueue(event).await;
        }
        Ok(p)
    }

    async fn refuse_if_locked(
        &self,
        subjects: &[String],
        actor: &Actor,
        action: AuditAction,
        now: i64,
    ) -> IdentityResult<()> {
        if subjects.is_empty() {
            return Ok(());
        }
        if let Some(until) = self.store.locked_until(subjects, now).await? {
            self.audit(
                action,
                Outcome::Failure,
                actor.clone(),
                None,
                Some("locked_out"),
            )
            .await;
            let retry_after_seconds = u64::try_from((until - now + 999) / 1000)
                .unwrap_or(1)
                .max(1);
            return Err(IdentityError::LockedOut {
                retry_after_seconds,
            });
        }
        Ok(())
    }

    async fn fail(
        &self,
        subjects: &[String],
        actor: Actor,
        action: AuditAction,
        reason: &'static str,
        now: i64,
    ) -> IdentityError {
        let s = &self.settings;
        for subject in subjects {
            let threshold = if subject.starts_with("key:") {
                s.max_failures_per_key
            } else {
                s.max_failures_per_address
            };
            if let Err(e) = self
                .store
                .record_auth_failure(subject, now, s.failure_window_ms, threshold, s.lockout_ms)
                .await
            {
                tracing::error!(error = %e, "recording an authentication failure failed");
                return IdentityError::Store(e);
            }
        }
        self.audit(action, Outcome::Failure, actor, None, Some(reason))
            .await;
        IdentityError::Unauthenticated
    }

    /// Records use of a key, at most once per resolution period per node, off the request path.
    fn touch(&self, key_id: &str, now: i64) {
        let due = match self.touched.lock() {
            Ok(mut map) => match map.get(key_id) {
                Some(t) if now - *t < self.settings.last_used_resolution_ms => false,
                _ => {
                    if map.len() > 100_000 {
                        map.clear();
                    }
                    map.insert(key_id.to_owned(), now);
                    true
                }
            },
            Err(_) => false,
        };
        if due && key_id.starts_with("hk_") {
            let store = std::sync::Arc::clone(&self.store);
            let id = key_id.to_owned();
            tokio::spawn(async move {
                if let Err(e) = store.touch_key(&id, now).await {
                    tracing::warn!(error = %e, "updating last_used_at failed");
                }
            });
        }
    }

    // ---- OAuth 2.0 (RFC 6749 §4.4, RFC 7009, RFC 7662) ----

    /// The client-credentials grant: the API key authenticates as the OAuth client.
    pub async fn issue_token(
        &self,
        client_id: &str,
        client_secret: &str,
        scope: Option<&str>,
        meta: &RequestMeta,
    ) -> IdentityResult<IssuedToken> {
        let client = self
            .authenticate_key_as(client_id, client_secret, meta, AuditAction::AuthOAuthClient)
            .await?;
        let requested: Vec<&str> = scope
            .unwrap_or("")
            .split(' ')
            .filter(|s| !s.is_empty())
            .collect();
        let granted = if requested.is_empty() {
            client.scopes.clone()
        } else {
            let req =
                ScopeSet::parse("scope", requested).map_err(|_| IdentityError::InvalidScope)?;
            let narrowed = client.scopes.narrow(&req);
            if narrowed.is_empty() {
                return Err(IdentityError::InvalidScope);
            }
            narrowed
        };
        let issued = self.tokens.issue(
            &client.account_id,
            &client.credential_id,
            &granted,
            now_ms(),
        )?;
        self.audit(
            AuditAction::TokenIssued,
            Outcome::Success,
            client.actor(meta),
            Some(("token", &issued.token_id)),
            None,
        )
        .await;
        Ok(issued)
    }

    /// RFC 7009: revokes a token of the client's account (or a subaccount). Tokens that are not
    /// valid, or not the client's to revoke, are answered the same way, with no effect.
    pub async fn revoke_token(
        &self,
        client: &Principal,
        token: &str,
        meta: &RequestMeta,
    ) -> IdentityResult<()> {
        let now = now_ms();
        let Ok(claims) = self.tokens.verify(token, now).await else {
            return Ok(());
        };
        if !self.may_manage(client, &claims.acc).await? {
            self.audit(
                AuditAction::TokenRevoked,
                Outcome::Failure,
                client.actor(meta),
                Some(("token", &claims.jti)),
                Some("not_owner"),
            )
            .await;
            return Ok(());
        }
        self.store
            .revoke_token(&claims.jti, claims.exp.saturating_mul(1000))
            .await?;
        self.invalidate();
        self.audit(
            AuditAction::TokenRevoked,
            Outcome::Success,
            client.actor(meta),
            Some(("token", &claims.jti)),
            None,
        )
        .await;
        Ok(())
    }

    /// RFC 7662: the claims of an active token the client may see, or `None` ("inactive").
    pub async fn introspect(
        &self,
        client: &Principal,
        token: &str,
        meta: &RequestMeta,
    ) -> IdentityResult<Option<AccessClaims>> {
        let now = now_ms();
        let Ok(claims) = self.tokens.verify(token, now).await else {
            return Ok(None);
        };
        if !self.may_manage(client, &claims.acc).await? {
            return Ok(None);
        }
        let (principal, _) = self.principal_for_token(&claims, now).await?;
        self.audit(
            AuditAction::TokenIntrospected,
            Outcome::Success,
            client.actor(meta),
            Some(("token", &claims.jti)),
            None,
        )
        .await;
        Ok(principal.map(|p| AccessClaims {
            scope: p.scopes.to_oauth(),
            ..claims
        }))
    }

    /// Whether `client` manages `account_id`: its own account or a direct subaccount. A question
    /// of tenancy alone, independent of the caller's scopes.
    pub async fn may_manage(&self, client: &Principal, account_id: &str) -> IdentityResult<bool> {
        if client.account_id == account_id {
            return Ok(true);
        }
        Ok(self
            .store
            .get_account(account_id)
            .await?
            .is_some_and(|a| client.can_see(&a)))
    }
}

//! Accounts, subaccounts and API keys: the tenancy tree and its credentials.

use crate::model::{ACCOUNT_PREFIX, KEY_PREFIX, Right, SECRET_PREFIX, is_id};
use crate::{
    Account, AccountStatus, ApiKey, DisplayName, Identity, IdentityError, IdentityResult, NewKey,
    Principal, RequestMeta, Scope, ScopeSet,
};
use haven_platform::audit::{Actor, AuditAction, Outcome};
use haven_platform::clock::now_ms;
use haven_platform::events::OutboxEvent;
use haven_platform::id::new_id;
use haven_platform::page::{Page, PageRequest};
use serde_json::json;

const ACCOUNTS_READ: Scope = Scope::new("accounts", Right::Read);
const ACCOUNTS_WRITE: Scope = Scope::new("accounts", Right::Write);
const ACCOUNTS_ADMIN: Scope = Scope::new("accounts", Right::Admin);
const KEYS_READ: Scope = Scope::new("keys", Right::Read);
const KEYS_ADMIN: Scope = Scope::new("keys", Right::Admin);

/// Longest grace period a rotated secret may keep working.
pub const MAX_GRACE_SECONDS: u64 = 30 * 24 * 3600;

/// Changes to an account; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct AccountPatch {
    pub name: Option<DisplayName>,
    pub status: Option<AccountStatus>,
}

/// A freshly issued secret, to be shown once.
#[derive(Debug)]
pub struct IssuedKey {
    pub key: ApiKey,
    pub secret: String,
}

impl Identity {
    /// First start: the root account and an admin key holding every scope, unless a root
    /// exists. Returns the key's secret when this call created it.
    pub async fn bootstrap(&self, root_name: &str) -> IdentityResult<Option<(Account, IssuedKey)>> {
        if self.store.root_account().await?.is_some() {
            return Ok(None);
        }
        let now = now_ms();
        let account = Account {
            id: new_id(ACCOUNT_PREFIX),
            parent_id: None,
            name: DisplayName::parse("name", root_name)
                .map_err(|e| IdentityError::Invalid(vec![e]))?
                .as_str()
                .to_owned(),
            status: AccountStatus::Active,
            created_at_ms: now,
            updated_at_ms: now,
        };
        let (key, secret) = self.new_key(
            &account.id,
            "bootstrap admin",
            ScopeSet::new(Scope::all_admin()),
            Vec::new(),
            None,
            now,
        )?;
        if !self.store.bootstrap(&account, &key).await? {
            return Ok(None);
        }
        let actor = Actor {
            auth_method: Some("cli"),
            ..Actor::default()
        };
        self.audit(
            AuditAction::AccountCreated,
            Outcome::Success,
            actor.clone(),
            Some(("account", &account.id)),
            None,
        )
        .await;
        self.audit(
            AuditAction::KeyCreated,
            Outcome::Success,
            actor,
            Some(("key", &key.id)),
            None,
        )
        .await;
        Ok(Some((account, IssuedKey { key, secret })))
    }

    pub async fn root_account(&self) -> IdentityResult<Option<Account>> {
        Ok(self.store.root_account().await?)
    }

    fn new_key(
        &self,
        account_id: &str,
        name: &str,
        scopes: ScopeSet,
        allowed_cidrs: Vec<ipnet::IpNet>,
        expires_at_ms: Option<i64>,
        now: i64,
    ) -> IdentityResult<(ApiKey, String)> {
        let secret = haven_crypto::random_secret(SECRET_PREFIX)?;
        let key = ApiKey {
            id: new_id(KEY_PREFIX),
            account_id: account_id.to_owned(),
            name: name.to_owned(),
            scopes,
            allowed_cidrs,
            expires_at_ms,
            created_at_ms: now,
            last_used_at_ms: None,
            revoked_at_ms: None,
            rotated_at_ms: None,
            secret_hash: self.hasher.hash(&secret),
            previous_secret_hash: None,
            previous_secret_expires_at_ms: None,
        };
        Ok((key, secret))
    }

    /// Loads an account the caller may see; anything else is "not found", so that existence
    /// does not leak across tenants.
    /// `account_id` if the caller may see it (its own, or a direct subaccount), else
    /// `NotFound`; for other APIs that act on a subaccount's behalf and check their own scope.
    pub async fn visible_account(
        &self,
        p: &Principal,
        account_id: &str,
    ) -> IdentityResult<Account> {
        if !is_id(ACCOUNT_PREFIX, account_id) {
            return Err(IdentityError::NotFound);
        }
        match self.load_account(account_id).await? {
            Some(a) if p.can_see(&a) => Ok(a),
            _ => Err(IdentityError::NotFound),
        }
    }

    /// Creates a subaccount of the caller's account. Only master accounts have subaccounts.
    pub async fn create_subaccount(
        &self,
        p: &Principal,
        name: DisplayName,
        meta: &RequestMeta,
    ) -> IdentityResult<Account> {
        p.require(ACCOUNTS_WRITE)?;
        if p.parent_account_id.is_some() {
            return Err(IdentityError::Forbidden(
                "a subaccount cannot create subaccounts",
            ));
        }
        self.insert_account(p, Some(p.account_id.clone()), name, meta)
            .await
    }

    /// Operator only: a new master account (a separate tenant), or a subaccount of `parent`.
    pub async fn admin_create_account(
        &self,
        p: &Principal,
        name: DisplayName,
        parent: Option<&str>,
        meta: &RequestMeta,
    ) -> IdentityResult<Account> {
        if p.method != crate::AuthMethod::Operator {
            return Err(IdentityError::Forbidden(
                "only the operator creates master accounts",
            ));
        }
        let parent = match parent {
            Some(id) => {
                let a = self.visible_account(p, id).await?;
                if a.parent_id.is_some() {
                    return Err(IdentityError::invalid("parent", "must be a master account"));
                }
                Some(a.id)
            }
            None => None,
        };
        self.insert_account(p, parent, name, meta).await
    }

    async fn insert_account(
        &self,
        p: &Principal,
        parent_id: Option<String>,
        name: DisplayName,
        meta: &RequestMeta,
    ) -> IdentityResult<Account> {
        let now = now_ms();
        let account = Account {
            id: new_id(ACCOUNT_PREFIX),
            parent_id,
            name: name.as_str().to_owned(),
            status: AccountStatus::Active,
            created_at_ms: now,
            updated_at_ms: now,
        };
        let event = OutboxEvent::new(
            "account.created",
            &account.id,
            json!({ "account_id": account.id, "parent_account_id": account.parent_id }),
        );
        self.store.insert_account(&account, &[event]).await?;
        self.audit(
            AuditAction::AccountCreated,
            Outcome::Success,
            p.actor(meta),
            Some(("account", &account.id)),
            None,
        )
        .await;
        Ok(account)
    }

    pub async fn get_account(&self, p: &Principal, account_id: &str) -> IdentityResult<Account> {
        p.require(ACCOUNTS_READ)?;
        self.visible_account(p, account_id).await
    }

    /// The caller's account and its subaccounts (the operator: every account).
    pub async fn list_accounts(
        &self,
        p: &Principal,
        page: &PageRequest,
    ) -> IdentityResult<Page<Account>> {
        p.require(ACCOUNTS_READ)?;
        let rows = if p.method == crate::AuthMethod::Operator {
            self.store.list_all_accounts(page).await?
        } else {
            self.store.list_accounts(&p.account_id, page).await?
        };
        Ok(Page::from_rows(rows, page, |a| &a.id))
    }

    /// Renames, suspends or reactivates. Status changes need `accounts:admin` and apply to
    /// subaccounts only (an account cannot lock itself out); they take effect at once.
    pub async fn update_account(
        &self,
        p: &Principal,
        account_id: &str,
        patch: AccountPatch,
        meta: &RequestMeta,
    ) -> IdentityResult<Account> {
        p.require(ACCOUNTS_WRITE)?;
        let account = self.visible_account(p, account_id).await?;
        if let Some(status) = patch.status
            && status != account.status
        {
            p.require(ACCOUNTS_ADMIN)?;
            if account.id == p.account_id && p.method != crate::AuthMethod::Operator {
                return Err(IdentityError::Forbidden(
                    "an account cannot change its own status",
                ));
            }
        }
        let status_change = patch.status.filter(|s| *s != account.status);
        let name_change = patch
            .name
            .as_ref()
            .map(DisplayName::as_str)
            .filter(|n| *n != account.name);
        if status_change.is_none() && name_change.is_none() {
            return Ok(account);
        }
        let updated = self
            .store
            .update_account(
                &account.id,
                name_change,
                status_change,
                now_ms(),
                &status_change
                    .map(|s| {
                        let kind = match s {
                            AccountStatus::Suspended => "account.suspended",
                            AccountStatus::Active => "account.reactivated",
                        };
                        OutboxEvent::new(kind, &account.id, json!({ "account_id": account.id }))
                    })
                    .into_iter()
                    .collect::<Vec<_>>(),
            )
            .await?
            .ok_or(IdentityError::NotFound)?;
        self.invalidate();
        let actor = p.actor(meta);
        if name_change.is_some() {
            self.audit(
                AuditAction::AccountRenamed,
                Outcome::Success,
                actor.clone(),
                Some(("account", &updated.id)),
                None,
            )
            .await;
        }
        match status_change {
            Some(AccountStatus::Suspended) => {
                self.audit(
                    AuditAction::AccountSuspended,
                    Outcome::Success,
                    actor,
                    Some(("account", &updated.id)),
                    None,
                )
                .await
            }
            Some(AccountStatus::Active) => {
                self.audit(
                    AuditAction::AccountReactivated,
                    Outcome::Success,
                    actor,
                    Some(("account", &updated.id)),
                    None,
                )
                .await
            }
            None => {}
        }
        Ok(updated)
    }

    /// Issues a key on an account the caller manages, with no scope the caller lacks.
    pub async fn create_key(
        &self,
        p: &Principal,
        account_id: &str,
        req: NewKey,
        meta: &RequestMeta,
    ) -> IdentityResult<IssuedKey> {
        p.require(KEYS_ADMIN)?;
        let account = self.visible_account(p, account_id).await?;
        if let Some(missing) = req.scopes.iter().find(|s| !p.scopes.allows(s)) {
            return Err(IdentityError::Invalid(vec![crate::FieldError::new(
                "scopes",
                format!("cannot grant {missing}: the calling credential does not hold it"),
            )]));
        }
        let (key, secret) = self.new_key(
            &account.id,
            req.name.as_str(),
            req.scopes,
            req.allowed_cidrs,
            req.expires_at_ms,
            now_ms(),
        )?;
        let event = OutboxEvent::new(
            "key.created",
            &key.account_id,
            json!({ "key_id": key.id, "scopes": key.scopes.to_strings() }),
        );
        self.store.insert_key(&key, &[event]).await?;
        self.audit(
            AuditAction::KeyCreated,
            Outcome::Success,
            p.actor(meta),
            Some(("key", &key.id)),
            None,
        )
        .await;
        Ok(IssuedKey { key, secret })
    }

    pub async fn list_keys(
        &self,
        p: &Principal,
        account_id: &str,
        page: &PageRequest,
    ) -> IdentityResult<Page<ApiKey>> {
        p.require(KEYS_READ)?;
        let account = self.visible_account(p, account_id).await?;
        let rows = self.store.list_keys(&account.id, page).await?;
        Ok(Page::from_rows(rows, page, |k| &k.id))
    }

    async fn visible_key(
        &self,
        p: &Principal,
        account_id: &str,
        key_id: &str,
    ) -> IdentityResult<ApiKey> {
        let account = self.visible_account(p, account_id).await?;
        if !is_id(KEY_PREFIX, key_id) {
            return Err(IdentityError::NotFound);
        }
        match self.store.get_key(key_id).await? {
            Some(k) if k.account_id == account.id => Ok(k),
            _ => Err(IdentityError::NotFound),
        }
    }

    pub async fn get_key(
        &self,
        p: &Principal,
        account_id: &str,
        key_id: &str,
    ) -> IdentityResult<ApiKey> {
        p.require(KEYS_READ)?;
        self.visible_key(p, account_id, key_id).await
    }

    /// Revokes at once on this node, and within the credential cache's lifetime (≤ 1 s) on every
    /// other node. Revoking a revoked key changes nothing.
    pub async fn revoke_key(
        &self,
        p: &Principal,
        account_id: &str,
        key_id: &str,
        meta: &RequestMeta,
    ) -> IdentityResult<ApiKey> {
        p.require(KEYS_ADMIN)?;
        let key = self.visible_key(p, account_id, key_id).await?;
        if key.revoked_at_ms.is_some() {
            return Ok(key);
        }
        let key = self
            .store
            .revoke_key(
                &key.id,
                now_ms(),
                &[OutboxEvent::new(
                    "key.revoked",
                    &key.account_id,
                    json!({ "key_id": key.id }),
                )],
            )
            .await?
            .ok_or(IdentityError::NotFound)?;
        self.invalidate();
        self.audit(
            AuditAction::KeyRevoked,
            Outcome::Success,
            p.actor(meta),
            Some(("key", &key.id)),
            None,
        )
        .await;
        Ok(key)
    }

    /// Issues a new secret; the old one keeps working for `grace_seconds` (0: stops at once).
    /// Only the secret just replaced gets a grace period: rotating again ends the older one.
    pub async fn rotate_key(
        &self,
        p: &Principal,
        account_id: &str,
        key_id: &str,
        grace_seconds: u64,
        meta: &RequestMeta,
    ) -> IdentityResult<IssuedKey> {
        p.require(KEYS_ADMIN)?;
        if grace_seconds > MAX_GRACE_SECONDS {
            return Err(IdentityError::invalid(
                "grace_period_seconds",
                "must be at most 2592000 (30 days)",
            ));
        }
        let key = self.visible_key(p, account_id, key_id).await?;
        let now = now_ms();
        if key.status(now) != crate::KeyStatus::Active {
            return Err(IdentityError::Conflict("only an active key can be rotated"));
        }
        let secret = haven_crypto::random_secret(SECRET_PREFIX)?;
        let grace_ms = i64::try_from(grace_seconds * 1000).unwrap_or(i64::MAX / 4);
        let previous = (grace_seconds > 0).then(|| (key.secret_hash.as_slice(), now + grace_ms));
        let key = self
            .store
            .rotate_key(
                &key.id,
                &self.hasher.hash(&secret),
                previous,
                now,
                &[OutboxEvent::new(
                    "key.rotated",
                    &key.account_id,
                    json!({ "key_id": key.id, "previous_secret_expires_at": previous.map(|p| haven_platform::clock::to_rfc3339(p.1)) }),
                )],
            )
            .await?
            .ok_or(IdentityError::Conflict("only an active key can be rotated"))?;
        self.invalidate();
        self.audit(
            AuditAction::KeyRotated,
            Outcome::Success,
            p.actor(meta),
            Some(("key", &key.id)),
            None,
        )
        .await;
        Ok(IssuedKey { key, secret })
    }

    /// Records an operator command in the audit log.
    pub async fn audit_admin_command(
        &self,
        command: &'static str,
        resource: Option<(&'static str, &str)>,
    ) {
        let actor = Actor {
            auth_method: Some("cli"),
            ..Actor::default()
        };
        self.audit(
            AuditAction::AdminCommand,
            Outcome::Success,
            actor,
            resource,
            Some(command),
        )
        .await;
    }
}

//! TOTP factors (RFC 6238): an authenticator app enrolled for one of the app's users.
//!
//! - **Enrol**: a 160-bit seed from the CSPRNG, sealed at rest under the account's data key,
//!   shown once as an `otpauth://` URI and a QR code (SVG). The factor is `unconfirmed` until a
//!   first code proves the app holds it.
//! - **Check**: the code of the current step or one step either side (clock drift), compared
//!   in constant time; a code is accepted only for a step later than the last accepted one, so
//!   a code (or an older one) cannot be used twice, even by two requests at once.
//! - **Lockout**: consecutive wrong codes lock the factor for a while.
//! - **Recovery codes**: ten, shown once at confirmation, stored only as keyed hashes, each
//!   usable once.

use crate::{VerifyError, VerifyResult};
use haven_identity::{FieldError, Principal, RequestMeta, Right, Scope};
use haven_platform::audit::{AuditAction, AuditEvent, AuditSink, Outcome};
use haven_platform::clock::now_ms;
use haven_platform::id::new_id;
use haven_platform::page::{Page, PageRequest};
use haven_platform::store::{StoreError, StoreResult};
use haven_vault::{FieldRef, Vault};
use std::sync::Arc;
use std::time::Duration;
use subtle::ConstantTimeEq;

pub const FACTOR_PREFIX: &str = "vfa";
const WRITE: Scope = Scope::new("verify", Right::Write);
const READ: Scope = Scope::new("verify", Right::Read);
const TABLE: &str = "verify_factors";
const SEED_BYTES: usize = 20;
const RECOVERY_CODES: usize = 10;
const MAX_USER_REF: usize = 200;
const MAX_LABEL: usize = 100;

#[derive(Debug, Clone)]
pub struct FactorRow {
    pub id: String,
    pub account_id: String,
    pub user_ref_ct: Vec<u8>,
    pub user_ref_bidx: Vec<u8>,
    /// `unconfirmed`, `active`.
    pub status: String,
    pub seed_ct: Vec<u8>,
    pub digits: i64,
    pub period: i64,
    /// The last time step whose code was accepted (-1: none yet).
    pub last_step: i64,
    pub failed_attempts: i64,
    pub locked_until_ms: i64,
    pub created_at_ms: i64,
    pub confirmed_at_ms: Option<i64>,
    pub last_used_at_ms: Option<i64>,
}

#[async_trait::async_trait]
pub trait FactorStore: Send + Sync {
    async fn insert_factor(&self, row: &FactorRow) -> StoreResult<()>;
    async fn get_factor(&self, id: &str) -> StoreResult<Option<FactorRow>>;
    async fn list_factors(
        &self,
        account_id: &str,
        user_ref_bidx: Option<&[u8]>,
        page: &PageRequest,
    ) -> StoreResult<Vec<FactorRow>>;
    async fn delete_factor(&self, id: &str) -> StoreResult<bool>;
    /// Accepts `step` if it is later than the last accepted one (and activates the factor,
    /// storing `recovery_hashes` when given); false when it is not (a replay).
    async fn accept_step(
        &self,
        id: &str,
        step: i64,
        at_ms: i64,
        recovery_hashes: &[Vec<u8>],
    ) -> StoreResult<bool>;
    /// Counts a wrong code; at `max` the factor locks until `lock_until_ms` and the count
    /// starts again. Returns the failures counted so far (0 when it just locked).
    async fn record_failure(&self, id: &str, max: i64, lock_until_ms: i64) -> StoreResult<i64>;
    /// Uses a recovery code once; false when it is unknown or used.
    async fn use_recovery_code(&self, id: &str, hash: &[u8], at_ms: i64) -> StoreResult<bool>;
    async fn recovery_codes_left(&self, id: &str) -> StoreResult<i64>;
}

/// A factor as shown.
#[derive(Debug, Clone)]
pub struct Factor {
    pub id: String,
    pub user_ref: Option<String>,
    pub status: String,
    pub digits: i64,
    pub period: i64,
    pub created_at_ms: i64,
    pub confirmed_at_ms: Option<i64>,
    pub last_used_at_ms: Option<i64>,
    pub recovery_codes_left: Option<i64>,
}

/// A new factor: what the user's app needs, shown once.
#[derive(Debug, Clone)]
pub struct Enrolment {
    pub factor: Factor,
    pub secret_base32: String,
    pub otpauth_uri: String,
    pub qr_svg: String,
}

#[derive(Debug, Clone)]
pub struct EnrolRequest {
    pub user_ref: String,
    /// Shown in the authenticator app above the code.
    pub issuer: String,
    /// Shown under the issuer (an email address, a user name); default `user_ref`.
    pub label: Option<String>,
    pub digits: Option<u32>,
}

#[derive(Debug, Clone)]
pub struct FactorSettings {
    pub max_failures: i64,
    pub lockout: Duration,
}

impl Default for FactorSettings {
    fn default() -> Self {
        Self {
            max_failures: 5,
            lockout: Duration::from_secs(300),
        }
    }
}

pub struct Factors {
    store: Arc<dyn FactorStore>,
    vault: Arc<Vault>,
    audit: Arc<dyn AuditSink>,
    settings: FactorSettings,
}

impl std::fmt::Debug for Factors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Factors")
    }
}

fn field<'a>(account_id: &'a str, id: &'a str, column: &'static str) -> FieldRef<'a> {
    FieldRef {
        account_id,
        table: TABLE,
        column,
        row_id: id,
    }
}

/// Percent-encoding for an otpauth URI's label and parameters.
fn uri_escape(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn one_line(field: &str, v: &str, max: usize, errors: &mut Vec<FieldError>) {
    if v.trim().is_empty() || v.chars().count() > max || v.chars().any(char::is_control) {
        errors.push(FieldError::new(
            field,
            format!("must be one line of 1 to {max} characters"),
        ));
    }
}

/// A recovery code: 10 characters of Crockford-like base32 (about 50 bits), grouped 5-5.
fn recovery_code() -> Result<String, haven_crypto::CryptoError> {
    const ALPHABET: &[u8] = b"ABCDEFGHJKMNPQRSTVWXYZ0123456789";
    let bytes = haven_crypto::random_bytes::<10>()?;
    let chars: String = bytes
        .iter()
        .map(|b| char::from(ALPHABET[usize::from(b & 31)]))
        .collect();
    Ok(format!("{}-{}", &chars[..5], &chars[5..]))
}

fn normalize_recovery(code: &str) -> String {
    code.chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

impl Factors {
    pub fn new(
        store: Arc<dyn FactorStore>,
        vault: Arc<Vault>,
        audit: Arc<dyn AuditSink>,
        settings: FactorSettings,
    ) -> Self {
        Self {
            store,
            vault,
            audit,
            settings,
        }
    }

    async fn audit(
        &self,
        p: &Principal,
        meta: &RequestMeta,
        action: AuditAction,
        ok: bool,
        id: &str,
    ) {
        let outcome = if ok {
            Outcome::Success
        } else {
            Outcome::Failure
        };
        self.audit
            .record(AuditEvent::new(action, outcome, p.actor(meta)).resource("verify_factor", id))
            .await;
    }

    async fn view(&self, row: &FactorRow) -> VerifyResult<Factor> {
        let user_ref = self
            .vault
            .open_for_account(
                &field(&row.account_id, &row.id, "user_ref"),
                &row.user_ref_ct,
            )
            .await?;
        Ok(Factor {
            id: row.id.clone(),
            user_ref: Some(
                String::from_utf8(user_ref)
                    .map_err(|_| StoreError::Backend("stored user reference is not text".into()))?,
            ),
            status: row.status.clone(),
            digits: row.digits,
            period: row.period,
            created_at_ms: row.created_at_ms,
            confirmed_at_ms: row.confirmed_at_ms,
            last_used_at_ms: row.last_used_at_ms,
            recovery_codes_left: if row.status == "active" {
                Some(self.store.recovery_codes_left(&row.id).await?)
            } else {
                None
            },
        })
    }

    async fn owned(&self, p: &Principal, id: &str) -> VerifyResult<FactorRow> {
        if !haven_identity::is_id(FACTOR_PREFIX, id) {
            return Err(VerifyError::NotFound);
        }
        match self.store.get_factor(id).await? {
            Some(r) if r.account_id == p.account_id => Ok(r),
            _ => Err(VerifyError::NotFound),
        }
    }

    /// Enrols an authenticator app for a user: the seed is shown this once.
    pub async fn enrol(
        &self,
        p: &Principal,
        meta: &RequestMeta,
        req: EnrolRequest,
    ) -> VerifyResult<Enrolment> {
        p.require(WRITE)?;
        let mut errors = Vec::new();
        one_line("user_ref", &req.user_ref, MAX_USER_REF, &mut errors);
        one_line("issuer", &req.issuer, MAX_LABEL, &mut errors);
        if let Some(l) = &req.label {
            one_line("label", l, MAX_LABEL, &mut errors);
        }
        if req.issuer.contains(':') || req.label.as_deref().is_some_and(|l| l.contains(':')) {
            errors.push(FieldError::new(
                "issuer",
                "issuer and label must not contain ':'",
            ));
        }
        let digits = req.digits.unwrap_or(6);
        if !(6..=8).contains(&digits) {
            errors.push(FieldError::new("digits", "must be 6, 7 or 8"));
        }
        if !errors.is_empty() {
            return Err(VerifyError::Invalid(errors));
        }
        let seed = haven_crypto::random_bytes::<SEED_BYTES>()
            .map_err(|e| StoreError::Backend(e.to_string()))?;
        let id = new_id(FACTOR_PREFIX);
        let a = p.account_id.as_str();
        let row = FactorRow {
            user_ref_ct: self
                .vault
                .seal_for_account(&field(a, &id, "user_ref"), req.user_ref.as_bytes())
                .await?,
            user_ref_bidx: self
                .vault
                .blind_index(a, "verify:user_ref", &req.user_ref)
                .await?,
            seed_ct: self
                .vault
                .seal_for_account(&field(a, &id, "seed"), &seed)
                .await?,
            id: id.clone(),
            account_id: a.to_owned(),
            status: "unconfirmed".into(),
            digits: i64::from(digits),
            period: 30,
            last_step: -1,
            failed_attempts: 0,
            locked_until_ms: 0,
            created_at_ms: now_ms(),
            confirmed_at_ms: None,
            last_used_at_ms: None,
        };
        self.store.insert_factor(&row).await?;
        self.audit(p, meta, AuditAction::VerifyFactorEnrolled, true, &id)
            .await;
        let secret = haven_crypto::otp::base32(&seed);
        let label = req.label.unwrap_or_else(|| req.user_ref.clone());
        let uri = format!(
            "otpauth://totp/{}:{}?secret={secret}&issuer={}&algorithm=SHA1&digits={digits}&period=30",
            uri_escape(&req.issuer),
            uri_escape(&label),
            uri_escape(&req.issuer),
        );
        let qr = qrcode::QrCode::with_error_correction_level(uri.as_bytes(), qrcode::EcLevel::M)
            .map_err(|e| StoreError::Backend(format!("qr: {e}")))?
            .render::<qrcode::render::svg::Color<'_>>()
            .min_dimensions(200, 200)
            .build();
        Ok(Enrolment {
            factor: self.view(&row).await?,
            secret_base32: secret,
            otpauth_uri: uri,
            qr_svg: qr,
        })
    }

    pub async fn get(&self, p: &Principal, id: &str) -> VerifyResult<Factor> {
        p.require(READ)?;
        let row = self.owned(p, id).await?;
        self.view(&row).await
    }

    pub async fn list(
        &self,
        p: &Principal,
        user_ref: Option<&str>,
        page: &PageRequest,
    ) -> VerifyResult<Page<Factor>> {
        p.require(READ)?;
        let bidx = match user_ref {
            Some(u) => Some(
                self.vault
                    .blind_index(&p.account_id, "verify:user_ref", u)
                    .await?,
            ),
            None => None,
        };
        let rows = self
            .store
            .list_factors(&p.account_id, bidx.as_deref(), page)
            .await?;
        let page = Page::from_rows(rows, page, |r| &r.id);
        let mut items = Vec::with_capacity(page.items.len());
        for r in &page.items {
            items.push(self.view(r).await?);
        }
        Ok(Page {
            items,
            next_cursor: page.next_cursor,
        })
    }

    pub async fn delete(&self, p: &Principal, meta: &RequestMeta, id: &str) -> VerifyResult<()> {
        p.require(WRITE)?;
        let row = self.owned(p, id).await?;
        self.store.delete_factor(&row.id).await?;
        self.audit(p, meta, AuditAction::VerifyFactorDeleted, true, id)
            .await;
        Ok(())
    }

    /// The step whose code `code` is, within one step of now; `None` when none matches.
    async fn matching_step(&self, row: &FactorRow, code: &str) -> VerifyResult<Option<i64>> {
        let seed = self
            .vault
            .open_for_account(&field(&row.account_id, &row.id, "seed"), &row.seed_ct)
            .await?;
        let now = u64::try_from(now_ms() / 1000).unwrap_or(0);
        let step = haven_crypto::otp::totp_step(now, u64::try_from(row.period).unwrap_or(30));
        let digits = u32::try_from(row.digits).unwrap_or(6);
        let mut found = None;
        // Every candidate is computed and compared, so the time taken says nothing.
        for s in [step.saturating_sub(1), step, step + 1] {
            let want = haven_crypto::otp::hotp(&seed, s, digits);
            if bool::from(want.as_bytes().ct_eq(code.as_bytes())) {
                found = Some(i64::try_from(s).unwrap_or(i64::MAX));
            }
        }
        Ok(found)
    }

    async fn fail(&self, row: &FactorRow) -> VerifyResult<VerifyError> {
        let until = now_ms() + i64::try_from(self.settings.lockout.as_millis()).unwrap_or(300_000);
        let n = self
            .store
            .record_failure(&row.id, self.settings.max_failures, until)
            .await?;
        Ok(if n == 0 {
            VerifyError::FactorLocked {
                retry_after: self.settings.lockout,
            }
        } else {
            VerifyError::WrongCode {
                attempts_remaining: (self.settings.max_failures - n).max(0),
            }
        })
    }

    fn check_shape(row: &FactorRow, code: &str) -> VerifyResult<()> {
        let len = usize::try_from(row.digits).unwrap_or(6);
        if code.len() != len || !code.bytes().all(|b| b.is_ascii_digit()) {
            return Err(VerifyError::Invalid(vec![FieldError::new(
                "code",
                format!("must be {len} digits"),
            )]));
        }
        let now = now_ms();
        if row.locked_until_ms > now {
            return Err(VerifyError::FactorLocked {
                retry_after: Duration::from_millis(
                    u64::try_from(row.locked_until_ms - now).unwrap_or(1000),
                ),
            });
        }
        Ok(())
    }

    /// Confirms an enrolment with a first code; returns the recovery codes, shown once.
    pub async fn confirm(
        &self,
        p: &Principal,
        meta: &RequestMeta,
        id: &str,
        code: &str,
    ) -> VerifyResult<(Factor, Vec<String>)> {
        p.require(WRITE)?;
        let row = self.owned(p, id).await?;
        if row.status != "unconfirmed" {
            return Err(VerifyError::Ended("confirmed already".into()));
        }
        Self::check_shape(&row, code)?;
        let Some(step) = self.matching_step(&row, code).await? else {
            self.audit(p, meta, AuditAction::VerifyFactorConfirmed, false, id)
                .await;
            return Err(self.fail(&row).await?);
        };
        let mut codes = Vec::with_capacity(RECOVERY_CODES);
        let mut hashes = Vec::with_capacity(RECOVERY_CODES);
        for _ in 0..RECOVERY_CODES {
            let c = recovery_code().map_err(|e| StoreError::Backend(e.to_string()))?;
            hashes.push(self.recovery_hash(&row, &c).await?);
            codes.push(c);
        }
        if !self.store.accept_step(id, step, now_ms(), &hashes).await? {
            return Err(VerifyError::CodeReused);
        }
        self.audit(p, meta, AuditAction::VerifyFactorConfirmed, true, id)
            .await;
        let row = self.owned(p, id).await?;
        Ok((self.view(&row).await?, codes))
    }

    async fn recovery_hash(&self, row: &FactorRow, code: &str) -> VerifyResult<Vec<u8>> {
        Ok(self
            .vault
            .blind_index(
                &row.account_id,
                "verify:recovery",
                &format!("{}:{}", row.id, normalize_recovery(code)),
            )
            .await?)
    }

    /// Checks a code from the user's app.
    pub async fn check(
        &self,
        p: &Principal,
        meta: &RequestMeta,
        id: &str,
        code: &str,
    ) -> VerifyResult<Factor> {
        p.require(WRITE)?;
        let row = self.owned(p, id).await?;
        if row.status != "active" {
            return Err(VerifyError::Ended("not confirmed".into()));
        }
        Self::check_shape(&row, code)?;
        let ok = match self.matching_step(&row, code).await? {
            None => Err(self.fail(&row).await?),
            Some(step) => {
                if self.store.accept_step(id, step, now_ms(), &[]).await? {
                    Ok(())
                } else {
                    // The code of a step already used (or older): a replay, not a guess, so
                    // it does not count towards the lockout.
                    Err(VerifyError::CodeReused)
                }
            }
        };
        self.audit(p, meta, AuditAction::VerifyFactorChecked, ok.is_ok(), id)
            .await;
        metrics::counter!("haven_verify_factor_checks_total", "result" => if ok.is_ok() { "success" } else { "failure" }).increment(1);
        ok?;
        let row = self.owned(p, id).await?;
        self.view(&row).await
    }

    /// Uses a recovery code (when the user lost the app).
    pub async fn recover(
        &self,
        p: &Principal,
        meta: &RequestMeta,
        id: &str,
        code: &str,
    ) -> VerifyResult<Factor> {
        p.require(WRITE)?;
        let row = self.owned(p, id).await?;
        if row.status != "active" {
            return Err(VerifyError::Ended("not confirmed".into()));
        }
        let now = now_ms();
        if row.locked_until_ms > now {
            return Err(VerifyError::FactorLocked {
                retry_after: Duration::from_millis(
                    u64::try_from(row.locked_until_ms - now).unwrap_or(1000),
                ),
            });
        }
        let hash = self.recovery_hash(&row, code).await?;
        let ok = self.store.use_recovery_code(id, &hash, now).await?;
        self.audit(p, meta, AuditAction::VerifyFactorRecovered, ok, id)
            .await;
        if !ok {
            return Err(self.fail(&row).await?);
        }
        self.view(&row).await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn recovery_codes_and_uri_escaping() {
        let c = recovery_code().unwrap();
        assert_eq!(c.len(), 11);
        assert_eq!(
            normalize_recovery(&c.to_lowercase()),
            normalize_recovery(&c)
        );
        assert_eq!(normalize_recovery("abcde-fghjk"), "ABCDEFGHJK");
        assert_eq!(uri_escape("Clínica Sol"), "Cl%C3%ADnica%20Sol");
    }
}

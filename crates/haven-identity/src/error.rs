use crate::model::{FieldError, Scope};
use haven_crypto::CryptoError;
use haven_platform::store::StoreError;

/// Everything the identity domain can refuse. The HTTP layer maps each variant to a status and
/// a stable problem type in one place.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Wrong, unknown, revoked or expired credentials; deliberately not more specific.
    #[error("authentication failed")]
    Unauthenticated,
    #[error("too many failed authentication attempts; retry after {retry_after_seconds} s")]
    LockedOut { retry_after_seconds: u64 },
    #[error("the credential lacks the scope {0}")]
    MissingScope(Scope),
    #[error("the request's source address is not in the key's allowlist")]
    AddressNotAllowed,
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("no such resource")]
    NotFound,
    #[error("the request is invalid")]
    Invalid(Vec<FieldError>),
    #[error("requested scopes are unknown or not granted to this client")]
    InvalidScope,
    #[error("{0}")]
    Conflict(&'static str),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
}

impl IdentityError {
    pub fn invalid(field: &str, message: &str) -> Self {
        Self::Invalid(vec![FieldError::new(field, message)])
    }
}

pub type IdentityResult<T> = Result<T, IdentityError>;

//! DPS errors: one enum, mapped to Azure's numeric codes (HTTP status × 1000 + n) in one place.

use muster_store::StoreError;

/// What went wrong in a DPS operation.
#[derive(Debug, thiserror::Error)]
pub enum DpsError {
    /// The request is invalid; the message is safe to show the caller.
    #[error("{0}")]
    InvalidInput(String),
    /// A thing does not exist.
    #[error("{what} '{id}' not found")]
    NotFound {
        /// Kind of thing.
        what: &'static str,
        /// Its id.
        id: String,
    },
    /// A thing exists already or the operation conflicts with the state.
    #[error("{0}")]
    Conflict(String),
    /// `If-Match` did not match.
    #[error("the etag does not match (If-Match precondition failed)")]
    PreconditionFailed,
    /// Attestation failed. `reason` is for the log only; callers see "Unauthorized".
    #[error("unauthorized: {reason}")]
    Unauthorized {
        /// Why (never contains secrets).
        reason: String,
    },
    /// The device named an ID scope this service does not have (401002, with a message the
    /// device may see: it names the input to check).
    #[error("unknown ID scope '{0}': the device's ID scope must be this service's")]
    UnknownScope(String),
    /// The custom-allocation webhook failed; the registration ends as `failed`.
    #[error("custom allocation failed: {reason}")]
    AllocationFailed {
        /// Why (status, timeout, bad reply); shown to the device as `errorMessage`.
        reason: String,
    },
    /// Too many requests.
    #[error("too many requests; retry after {retry_after_secs} s")]
    Throttled {
        /// Seconds to wait.
        retry_after_secs: u32,
    },
    /// Storage failed.
    #[error("internal storage error")]
    Store(#[source] StoreError),
    /// The hub could not store the assigned device.
    #[error(transparent)]
    Hub(#[from] crate::assign::AssignError),
}

impl From<StoreError> for DpsError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::PreconditionFailed { .. } => Self::PreconditionFailed,
            StoreError::Conflict { collection, key } => {
                Self::Conflict(format!("{collection} '{key}' already exists"))
            }
            other => Self::Store(other),
        }
    }
}

impl DpsError {
    /// HTTP status code.
    #[must_use]
    pub fn status(&self) -> u16 {
        match self {
            Self::InvalidInput(_) | Self::AllocationFailed { .. } => 400,
            Self::Unauthorized { .. } | Self::UnknownScope(_) => 401,
            Self::NotFound { .. } => 404,
            Self::Conflict(_) => 409,
            Self::PreconditionFailed => 412,
            Self::Throttled { .. } => 429,
            Self::Store(_) | Self::Hub(_) => 500,
        }
    }

    /// Azure DPS numeric error code.
    #[must_use]
    pub fn code(&self) -> u32 {
        match self {
            Self::InvalidInput(_) => 400_004,
            Self::AllocationFailed { .. } => 400_209,
            Self::Unauthorized { .. } | Self::UnknownScope(_) => 401_002,
            Self::NotFound { .. } => 404_201,
            Self::Conflict(_) => 409_201,
            Self::PreconditionFailed => 412_002,
            Self::Throttled { .. } => 429_001,
            Self::Store(_) | Self::Hub(_) => 500_000,
        }
    }

    /// The message shown to callers (attestation details and internals stay in the log).
    #[must_use]
    pub fn public_message(&self) -> String {
        match self {
            Self::Unauthorized { .. } => "Unauthorized".to_owned(),
            Self::Store(_) | Self::Hub(_) => "Internal server error".to_owned(),
            other => other.to_string(),
        }
    }
}

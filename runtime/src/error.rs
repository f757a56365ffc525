//! The runtime's error type, by category, in the way DataFusion sorts its errors.

/// An error of the runtime. The messages of `Refused`, `Limit` and `BadInput` are shown to
/// users and never carry data values.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// A refusal by policy: the caller may not do this, now or ever.
    #[error("refused: {0}")]
    Refused(String),
    /// The caller is not authenticated.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// A resource limit stopped the work (fuel, memory, time, output size).
    #[error("limit exceeded: {0}")]
    Limit(String),
    /// Bad input from a user or a guest module.
    #[error("bad input: {0}")]
    BadInput(String),
    /// The named object does not exist (or is not visible to the caller).
    #[error("not found: {0}")]
    NotFound(String),
    /// Stored state failed an integrity check.
    #[error("integrity: {0}")]
    Integrity(String),
    /// A bug or an environment failure (disk, database).
    #[error("internal: {0}")]
    Internal(String),
    /// A job over L2 or L3 data stopped while it ran. Its cause (kept for the audit log) may
    /// depend on a data value, so it is not shown to the job's scientist (R-GATE 7).
    #[error(
        "failed: the job stopped while it ran (a limit, a module's error or the engine's); over L2 or L3 data the cause is not shown, as it could depend on the data"
    )]
    WhileRunning(Box<Error>),
}

impl Error {
    /// The cause of the error, as the audit log records it.
    pub fn cause(&self) -> &Error {
        match self {
            Error::WhileRunning(inner) => inner.cause(),
            other => other,
        }
    }

    /// The error's category, with no message: what a log may name.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Refused(_) => "refused",
            Error::Unauthenticated(_) => "unauthenticated",
            Error::Limit(_) => "limit",
            Error::BadInput(_) => "bad_input",
            Error::NotFound(_) => "not_found",
            Error::Integrity(_) => "integrity",
            Error::Internal(_) => "internal",
            Error::WhileRunning(_) => "while_running",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<tidegate_policy::Refusal> for Error {
    fn from(r: tidegate_policy::Refusal) -> Self {
        Error::Refused(r.reason)
    }
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        Error::Internal(format!("metadata database: {e}"))
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Internal(format!("i/o: {e}"))
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error::Internal(format!("json: {e}"))
    }
}

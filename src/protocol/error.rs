//! Why a line from a miner or a pool is not a usable message. A request whose parameters do not
//! decode keeps its id, so the receiver can answer error 20 to the right request.

use super::difficulty::DifficultyError;
use super::id::Id;
use super::notify::NotifyError;
use super::share::BadShareHex;

/// Why a line is not a usable message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// The line is not UTF-8.
    #[error("line is not valid utf-8 (first bad byte at {valid_up_to})")]
    InvalidUtf8 {
        /// Length of the valid prefix.
        valid_up_to: usize,
    },
    /// The line is not a JSON object of the JSON-RPC shape (or its id is not a number, a string or
    /// null).
    #[error("invalid json: {0}")]
    InvalidJson(#[source] serde_json::Error),
    /// A known method with parameters that do not decode. The id is kept so the receiver can
    /// answer error 20 to the right request.
    #[error("invalid params for {method}: {reason}")]
    InvalidParams {
        /// The request's id.
        id: Id,
        /// The method.
        method: &'static str,
        /// What is wrong.
        reason: ParamError,
    },
}

impl ProtocolError {
    /// The id of the request, when the line was readable enough to have one.
    pub fn request_id(&self) -> Option<&Id> {
        match self {
            ProtocolError::InvalidParams { id, .. } => Some(id),
            _ => None,
        }
    }
}

/// What is wrong with a method's parameters.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ParamError {
    /// `params` is not an array.
    #[error("params is not an array")]
    NotAnArray,
    /// A required parameter is missing or null.
    #[error("parameter {index} ({name}) is missing")]
    Missing {
        /// Position.
        index: usize,
        /// Name.
        name: &'static str,
    },
    /// A parameter has the wrong JSON type.
    #[error("parameter {name} must be {expected}")]
    WrongType {
        /// Name.
        name: &'static str,
        /// What was expected.
        expected: &'static str,
    },
    /// A hex parameter does not decode.
    #[error("parameter {name} is not valid hex")]
    BadHex {
        /// Name.
        name: &'static str,
    },
    /// A difficulty that is not finite and positive.
    #[error("parameter {name}: {source}")]
    Difficulty {
        /// Name.
        name: &'static str,
        /// Why.
        #[source]
        source: DifficultyError,
    },
    /// The submit's fields do not make a share (error 20 with this reason).
    #[error("{0}")]
    InvalidShare(BadShareHex),
    /// The notify's fields do not make a job.
    #[error("{0}")]
    Notify(NotifyError),
}

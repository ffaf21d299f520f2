//! The wire answer to a rejected share: the one place a verdict becomes a Stratum error code.
//!
//! `work` decides *that* a share is stale or a duplicate; which number a miner's firmware expects
//! for that is a convention of the wire (20-25, see `../shared/protocol.md`), decided here at the
//! session edge.

use crate::protocol::{Id, Response, code};
use crate::work::Reject;

/// The conventional Stratum error code of a rejected share.
pub fn reject_code(reject: &Reject) -> i64 {
    match reject {
        Reject::Invalid(_) => code::OTHER,
        Reject::Stale => code::JOB_NOT_FOUND,
        Reject::Duplicate => code::DUPLICATE,
        Reject::LowDifficulty => code::LOW_DIFFICULTY,
        Reject::Unauthorized => code::UNAUTHORIZED,
        Reject::NotSubscribed => code::NOT_SUBSCRIBED,
    }
}

/// The answer to a rejected share: `[code, reason, null]`.
pub fn reject_response(id: Id, reject: &Reject) -> Response {
    Response::error(id, reject_code(reject), reject.to_string())
}

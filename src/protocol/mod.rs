//! Stratum V1 on the wire: typed messages in both directions and the line codec.
//!
//! Stratum V1 is JSON-RPC 1.0 over TCP, one JSON object per `\n`-terminated line:
//!
//! - requests `{"id": 1, "method": "mining.submit", "params": [...]}`, where the id may be a
//!   number, a string or null and must be echoed back unchanged ([`Id`]);
//! - responses `{"id": 1, "result": true, "error": null}` or with `"error": [code, "msg", null]`
//!   ([`Response`], codes in [`code`]);
//! - notifications: requests with a null id (`mining.notify`, `mining.set_difficulty`, ...).
//!
//! [`LineCodec`] frames a byte stream into lines with a hard length limit; [`Message::parse`] turns
//! one line into a typed [`Message`], decoding hex fields once into the wire types of this module
//! ([`Notify`], [`Share`], [`Extranonce1`], [`Difficulty`], ...). This module imports no other part
//! of hashgate: `work` builds on these types, never the other way round.
//! Parsing is lenient where real firmware differs (difficulty as integer, float or string; extra
//! trailing params; `mining.subscribe` with 0, 1 or 2 params and nulls; a missing password) and
//! strict where leniency would be exploitable (share fields are exactly-sized hex).
//!
//! Outgoing lines are built once as [`bytes::Bytes`] (`to_line`, [`notify_line`]) so a job
//! broadcast to every miner shares one serialization.
//!
//! References: the Stratum V1 conventions in `../shared/protocol.md`; BIP 310 for
//! `mining.configure` and version rolling (<https://github.com/bitcoin/bips/blob/master/bip-0310.mediawiki>).

mod codec;
mod difficulty;
mod error;
mod extranonce;
mod hex;
mod id;
mod message;
mod notify;
mod parse;
mod share;

pub use codec::{DEFAULT_MAX_LINE, FrameError, LineCodec};
pub use difficulty::{Difficulty, DifficultyError};
pub use error::{ParamError, ProtocolError};
pub use extranonce::{Extranonce1, Extranonce2, ExtranonceError, MAX_EXTRANONCE_LEN};
pub use hex::decode_u32_hex;
pub use id::Id;
pub use message::{
    Authorize, Configure, ConfigureResult, Message, Method, Reconnect, Request, Response,
    SetExtranonce, StratumError, Submit, Subscribe, SubscribeResult, accepted_line, code, method,
    notify_line, notify_line_renamed, write_submit_line,
};
pub use notify::{JobId, JobIdError, MAX_JOB_ID_LEN, Notify, NotifyError, PrevHash};
pub use share::{BadShareHex, Share};

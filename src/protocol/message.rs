//! Typed Stratum V1 messages in both directions, and how each is serialized to one line
//! (parsing is `parse.rs`).

use bytes::Bytes;
use serde::Serialize;
use serde_json::{Map, Value, json};

use super::difficulty::Difficulty;
use super::error::ParamError;
use super::extranonce::{Extranonce1, MAX_EXTRANONCE_LEN};
use super::id::Id;
use super::notify::{JobId, Notify};
use super::share::Share;

/// Method names as they appear on the wire.
pub mod method {
    /// BIP310 extension negotiation (version rolling and friends).
    pub const CONFIGURE: &str = "mining.configure";
    /// Subscribe: asks for extranonce1 and extranonce2_size.
    pub const SUBSCRIBE: &str = "mining.subscribe";
    /// Authorize a worker name.
    pub const AUTHORIZE: &str = "mining.authorize";
    /// Opt in to `mining.set_extranonce`.
    pub const EXTRANONCE_SUBSCRIBE: &str = "mining.extranonce.subscribe";
    /// The miner's wish for a difficulty.
    pub const SUGGEST_DIFFICULTY: &str = "mining.suggest_difficulty";
    /// A share.
    pub const SUBMIT: &str = "mining.submit";
    /// New share difficulty, applying from the next job.
    pub const SET_DIFFICULTY: &str = "mining.set_difficulty";
    /// A job.
    pub const NOTIFY: &str = "mining.notify";
    /// New version-rolling mask.
    pub const SET_VERSION_MASK: &str = "mining.set_version_mask";
    /// New extranonce1 / extranonce2_size.
    pub const SET_EXTRANONCE: &str = "mining.set_extranonce";
    /// Reconnect elsewhere (or to the same place) after a wait.
    pub const RECONNECT: &str = "client.reconnect";
    /// A text for the operator's screen.
    pub const SHOW_MESSAGE: &str = "client.show_message";
}

/// The conventional Stratum V1 error codes.
pub mod code {
    /// Other / unknown method / malformed.
    pub const OTHER: i64 = 20;
    /// Job not found (stale).
    pub const JOB_NOT_FOUND: i64 = 21;
    /// Duplicate share.
    pub const DUPLICATE: i64 = 22;
    /// Low difficulty share.
    pub const LOW_DIFFICULTY: i64 = 23;
    /// Unauthorized worker.
    pub const UNAUTHORIZED: i64 = 24;
    /// Not subscribed.
    pub const NOT_SUBSCRIBED: i64 = 25;
}

/// One line of Stratum: a request/notification or a response.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// Has a `method`: a request (id set) or a notification (id null).
    Request(Request),
    /// Has no `method`: the answer to a request, matched by id.
    Response(Response),
}

/// A request or notification.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// Echoed unchanged in the response; null for notifications.
    pub id: Id,
    /// The method and its decoded parameters.
    pub method: Method,
}

/// Every Stratum V1 method hashgate speaks, with its parameters decoded into types.
///
/// One enum for both directions: hashgate is a server to miners and a client to pools, and the
/// simulated miners and pool speak the other side. A session receiving a method meant for the
/// other direction answers error 20, as it does for [`Method::Unknown`].
#[derive(Debug, Clone, PartialEq)]
pub enum Method {
    /// `mining.configure` (miner -> server).
    Configure(Configure),
    /// `mining.subscribe` (miner -> server).
    Subscribe(Subscribe),
    /// `mining.authorize` (miner -> server).
    Authorize(Authorize),
    /// `mining.extranonce.subscribe` (miner -> server).
    ExtranonceSubscribe,
    /// `mining.suggest_difficulty` (miner -> server).
    SuggestDifficulty(Difficulty),
    /// `mining.submit` (miner -> server).
    Submit(Submit),
    /// `mining.set_difficulty` (server -> miner).
    SetDifficulty(Difficulty),
    /// `mining.notify` (server -> miner).
    Notify(Notify),
    /// `mining.set_version_mask` (server -> miner).
    SetVersionMask(u32),
    /// `mining.set_extranonce` (server -> miner).
    SetExtranonce(SetExtranonce),
    /// `client.reconnect` (server -> miner).
    Reconnect(Reconnect),
    /// `client.show_message` (server -> miner).
    ShowMessage(String),
    /// Any other method (`mining.ping`, `client.get_version`, ...): kept by name so the receiver
    /// can answer error 20 by id instead of dropping the line.
    Unknown(String),
}

impl Method {
    /// The wire name.
    pub fn name(&self) -> &str {
        match self {
            Method::Configure(_) => method::CONFIGURE,
            Method::Subscribe(_) => method::SUBSCRIBE,
            Method::Authorize(_) => method::AUTHORIZE,
            Method::ExtranonceSubscribe => method::EXTRANONCE_SUBSCRIBE,
            Method::SuggestDifficulty(_) => method::SUGGEST_DIFFICULTY,
            Method::Submit(_) => method::SUBMIT,
            Method::SetDifficulty(_) => method::SET_DIFFICULTY,
            Method::Notify(_) => method::NOTIFY,
            Method::SetVersionMask(_) => method::SET_VERSION_MASK,
            Method::SetExtranonce(_) => method::SET_EXTRANONCE,
            Method::Reconnect(_) => method::RECONNECT,
            Method::ShowMessage(_) => method::SHOW_MESSAGE,
            Method::Unknown(name) => name,
        }
    }

    /// The parameters as JSON, in wire form.
    fn params(&self) -> Value {
        match self {
            Method::Configure(c) => json!([c.extensions, c.parameters]),
            Method::Subscribe(s) => match (&s.user_agent, &s.session_id) {
                (None, None) => json!([]),
                (Some(agent), None) => json!([agent]),
                (agent, Some(session)) => json!([agent, session]),
            },
            Method::Authorize(a) => json!([a.worker, a.password.as_deref().unwrap_or("")]),
            Method::ExtranonceSubscribe => json!([]),
            Method::SuggestDifficulty(d) | Method::SetDifficulty(d) => {
                json!([difficulty_value(*d)])
            }
            Method::Submit(s) => {
                let share = &s.share;
                let mut params = vec![
                    Value::from(s.worker.as_str()),
                    Value::from(share.job_id.as_str()),
                    Value::from(share.extranonce2.to_hex()),
                    Value::from(format!("{:08x}", share.ntime)),
                    Value::from(format!("{:08x}", share.nonce)),
                ];
                if let Some(bits) = share.version_bits {
                    params.push(Value::from(format!("{bits:08x}")));
                }
                Value::Array(params)
            }
            Method::Notify(n) => notify_params(n),
            Method::SetVersionMask(mask) => json!([format!("{mask:08x}")]),
            Method::SetExtranonce(s) => json!([s.extranonce1.to_hex(), s.extranonce2_size]),
            Method::Reconnect(r) => {
                let mut params = Vec::new();
                if let Some(host) = &r.host {
                    params.push(Value::from(host.as_str()));
                    if let Some(port) = r.port {
                        params.push(Value::from(port));
                        if let Some(wait) = r.wait_seconds {
                            params.push(Value::from(wait));
                        }
                    }
                }
                Value::Array(params)
            }
            Method::ShowMessage(text) => json!([text]),
            Method::Unknown(_) => json!([]),
        }
    }
}

/// `mining.configure` parameters: the extensions asked for and their parameters.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Configure {
    /// Extension names, e.g. `version-rolling`, `minimum-difficulty`, `subscribe-extranonce`.
    pub extensions: Vec<String>,
    /// Extension parameters keyed `extension.param`, e.g. `version-rolling.mask`.
    pub parameters: Map<String, Value>,
}

impl Configure {
    /// Whether an extension was asked for.
    pub fn requests(&self, extension: &str) -> bool {
        self.extensions.iter().any(|e| e == extension)
    }

    /// The version-rolling mask asked for, when `version-rolling` is requested. A missing mask
    /// means "any bits" (BIP310 default `ffffffff`); an unreadable one asks for none.
    pub fn version_rolling_mask(&self) -> Option<u32> {
        if !self.requests("version-rolling") {
            return None;
        }
        Some(match self.parameters.get("version-rolling.mask") {
            None => u32::MAX,
            Some(Value::String(mask)) => decode_mask(mask).unwrap_or(0),
            Some(_) => 0,
        })
    }

    /// `version-rolling.min-bit-count`, if given.
    pub fn version_rolling_min_bit_count(&self) -> Option<u32> {
        self.parameters
            .get("version-rolling.min-bit-count")
            .and_then(Value::as_u64)
            .map(|n| n.min(32) as u32)
    }

    /// `minimum-difficulty.value`, when that extension is requested with a usable number.
    pub fn minimum_difficulty(&self) -> Option<Difficulty> {
        if !self.requests("minimum-difficulty") {
            return None;
        }
        self.parameters
            .get("minimum-difficulty.value")
            .and_then(Value::as_f64)
            .and_then(|d| Difficulty::new(d).ok())
    }
}

/// A mask as firmware sends it: 8 hex digits, sometimes fewer (leading zeros dropped). Masks may
/// be short; share fields may not (see `decode_u32_hex`), because shares are keyed for duplicates.
pub(super) fn decode_mask(mask: &str) -> Option<u32> {
    if mask.is_empty() || mask.len() > 8 {
        return None;
    }
    u32::from_str_radix(mask, 16).ok()
}

/// `mining.configure` result: what the server grants.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ConfigureResult {
    /// `Some(mask)` when version rolling is granted, `None` when refused (answered as `false`
    /// with mask `00000000`).
    pub version_rolling: Option<u32>,
    /// Other extensions and whether each is supported (unknown ones are answered `false`).
    pub extensions: Vec<(String, bool)>,
}

impl ConfigureResult {
    /// The result object as sent on the wire.
    pub fn to_value(&self) -> Value {
        let mut map = Map::new();
        match self.version_rolling {
            Some(mask) => {
                map.insert("version-rolling".into(), Value::Bool(true));
                map.insert(
                    "version-rolling.mask".into(),
                    Value::from(format!("{mask:08x}")),
                );
            }
            None => {
                // Refused: say so with a zero mask, so firmware that reads the mask without
                // checking the flag does not roll.
                map.insert("version-rolling".into(), Value::Bool(false));
                map.insert("version-rolling.mask".into(), Value::from("00000000"));
            }
        }
        for (name, supported) in &self.extensions {
            map.insert(name.clone(), Value::Bool(*supported));
        }
        Value::Object(map)
    }

    /// Reads a pool's answer. A pool that answers anything unexpected grants nothing.
    pub fn from_value(value: &Value) -> Self {
        let Some(map) = value.as_object() else {
            return Self::default();
        };
        let version_rolling = match map.get("version-rolling") {
            Some(Value::Bool(true)) => Some(
                map.get("version-rolling.mask")
                    .and_then(Value::as_str)
                    .and_then(decode_mask)
                    .unwrap_or(0),
            ),
            _ => None,
        };
        let extensions = map
            .iter()
            .filter(|(key, _)| !key.starts_with("version-rolling"))
            .filter_map(|(key, value)| value.as_bool().map(|b| (key.clone(), b)))
            .collect();
        Self {
            version_rolling,
            extensions,
        }
    }
}

/// `mining.subscribe` parameters; all optional (`[]`, `[agent]`, `[agent, session]`,
/// `[agent, null]` from bosminer, and trailing host/port from NiceHash-style clients).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Subscribe {
    /// The miner software, e.g. `bmminer/2.0.0`.
    pub user_agent: Option<String>,
    /// A previous session to resume (extranonce1), if the miner offers one.
    pub session_id: Option<String>,
}

/// `mining.subscribe` result: subscriptions, extranonce1, extranonce2_size.
#[derive(Debug, Clone, PartialEq)]
pub struct SubscribeResult {
    /// The subscription id announced for `mining.set_difficulty` and `mining.notify`.
    pub subscription_id: String,
    /// The connection's extranonce1.
    pub extranonce1: Extranonce1,
    /// Bytes of extranonce2 the miner rolls.
    pub extranonce2_size: usize,
}

impl SubscribeResult {
    /// The result array as sent on the wire.
    pub fn to_value(&self) -> Value {
        json!([
            [
                [method::SET_DIFFICULTY, self.subscription_id],
                [method::NOTIFY, self.subscription_id]
            ],
            self.extranonce1.to_hex(),
            self.extranonce2_size
        ])
    }

    /// Reads a pool's answer.
    pub fn from_value(value: &Value) -> Result<Self, ParamError> {
        let items = value.as_array().ok_or(ParamError::NotAnArray)?;
        let extranonce1 = items
            .get(1)
            .and_then(Value::as_str)
            .ok_or(ParamError::Missing {
                index: 1,
                name: "extranonce1",
            })?;
        let extranonce1 = Extranonce1::from_hex(extranonce1).map_err(|_| ParamError::BadHex {
            name: "extranonce1",
        })?;
        let extranonce2_size = items
            .get(2)
            .and_then(Value::as_u64)
            .ok_or(ParamError::Missing {
                index: 2,
                name: "extranonce2_size",
            })?;
        if extranonce2_size > MAX_EXTRANONCE_LEN as u64 {
            return Err(ParamError::WrongType {
                name: "extranonce2_size",
                expected: "at most 32",
            });
        }
        let extranonce2_size = extranonce2_size as usize;
        // Subscriptions are informative; pools send them in several shapes.
        let subscription_id = items
            .first()
            .and_then(|subs| subs.pointer("/0/1").or_else(|| subs.get(1)))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        Ok(Self {
            subscription_id,
            extranonce1,
            extranonce2_size,
        })
    }
}

/// `mining.authorize` parameters.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Authorize {
    /// Worker name, usually `account.worker`.
    pub worker: String,
    /// Password; often missing or empty.
    pub password: Option<String>,
}

/// `mining.submit` parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct Submit {
    /// The worker name the share is submitted under.
    pub worker: String,
    /// The share's hashed fields, decoded.
    pub share: Share,
}

/// `mining.set_extranonce` parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct SetExtranonce {
    /// The new extranonce1.
    pub extranonce1: Extranonce1,
    /// The new extranonce2 size.
    pub extranonce2_size: usize,
}

/// `client.reconnect` parameters: all optional (no host means "the same one").
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Reconnect {
    /// Host to connect to.
    pub host: Option<String>,
    /// Port (sent as a number or a string in the wild).
    pub port: Option<u16>,
    /// Seconds to wait before reconnecting.
    pub wait_seconds: Option<u64>,
}

/// A response: `result` on success, `error` on failure.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    /// The id of the request answered.
    pub id: Id,
    /// The result (null when `error` is set).
    pub result: Value,
    /// The error, if the request failed.
    pub error: Option<StratumError>,
}

impl Response {
    /// A successful response.
    pub fn ok(id: Id, result: Value) -> Self {
        Self {
            id,
            result,
            error: None,
        }
    }

    /// An error response: `[code, message, null]`.
    pub fn error(id: Id, code: i64, message: impl Into<String>) -> Self {
        Self {
            id,
            result: Value::Null,
            error: Some(StratumError {
                code,
                message: message.into(),
            }),
        }
    }

    /// Whether the request succeeded (no error and a result other than `false`).
    pub fn is_ok(&self) -> bool {
        self.error.is_none() && self.result != Value::Bool(false)
    }

    /// The response as one wire line, ending in `\n`, fields in the conventional order.
    pub fn to_line(&self) -> Bytes {
        #[derive(Serialize)]
        struct Wire<'a> {
            id: &'a Id,
            result: &'a Value,
            error: Option<(i64, &'a str, ())>,
        }
        let wire = Wire {
            id: &self.id,
            result: &self.result,
            error: self
                .error
                .as_ref()
                .map(|e| (e.code, e.message.as_str(), ())),
        };
        let mut line = serde_json::to_vec(&wire).expect("ids, values and strings always serialize");
        line.push(b'\n');
        Bytes::from(line)
    }
}

/// A Stratum error: `[code, message, traceback]` on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StratumError {
    /// The code (20..25 conventional).
    pub code: i64,
    /// Human-readable message.
    pub message: String,
}

impl StratumError {
    /// Reads an error in any of the shapes pools send: `[code, msg, ...]`, `{"code", "message"}`,
    /// a bare string or number. `None` for null.
    pub(super) fn from_value(value: &Value) -> Option<Self> {
        match value {
            Value::Null => None,
            Value::Array(items) => Some(Self {
                code: items.first().and_then(Value::as_i64).unwrap_or(code::OTHER),
                message: items
                    .get(1)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
            }),
            Value::Object(map) => Some(Self {
                code: map
                    .get("code")
                    .and_then(Value::as_i64)
                    .unwrap_or(code::OTHER),
                message: map
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
            }),
            Value::String(message) => Some(Self {
                code: code::OTHER,
                message: message.clone(),
            }),
            other => Some(Self {
                code: other.as_i64().unwrap_or(code::OTHER),
                message: other.to_string(),
            }),
        }
    }
}

impl Request {
    /// A notification (null id).
    pub fn notification(method: Method) -> Self {
        Self {
            id: Id::Null,
            method,
        }
    }

    /// The request as one wire line, ending in `\n`.
    pub fn to_line(&self) -> Bytes {
        request_line(&self.id, self.method.name(), self.method.params())
    }
}

/// The `mining.notify` line for a job. Called once per job: every miner receives the same bytes.
pub fn notify_line(notify: &Notify) -> Bytes {
    // Written straight into one buffer (no intermediate JSON value, no per-field strings): the
    // same bytes as `request_line(&Id::Null, "mining.notify", notify_params(..))`.
    let n = notify;
    let hex_len = 2 * (n.coinb1.len() + n.coinb2.len()) + 67 * n.merkle_branch.len();
    let mut line = Vec::with_capacity(128 + n.job_id.as_str().len() + hex_len);
    line.extend_from_slice(br#"{"id":null,"method":"mining.notify","params":["#);
    serde_json::to_writer(&mut line, n.job_id.as_str()).expect("a string always serializes");
    push_hex_field(&mut line, n.prevhash.wire_bytes());
    push_hex_field(&mut line, &n.coinb1);
    push_hex_field(&mut line, &n.coinb2);
    line.extend_from_slice(b",[");
    for (i, hash) in n.merkle_branch.iter().enumerate() {
        if i > 0 {
            line.push(b',');
        }
        push_hex_string(&mut line, hash);
    }
    line.push(b']');
    for word in [n.version, n.nbits, n.ntime] {
        push_hex_field(&mut line, &word.to_be_bytes());
    }
    line.extend_from_slice(if n.clean_jobs {
        b",true]}\n"
    } else {
        b",false]}\n"
    });
    Bytes::from(line)
}

/// `,"<hex>"`.
/// A job's `mining.notify` line under another job id and clean flag, spliced from the line
/// already written for it (`notify_line`'s output, job id `id`): the same bytes as
/// `notify_line` of the renamed job, without hex-encoding the coinbase and branch again for
/// each miner that needs its own id. None when `line` is not such a line.
pub fn notify_line_renamed(line: &[u8], id: &JobId, new_id: &JobId, clean: bool) -> Option<Bytes> {
    const HEAD: &[u8] = br#"{"id":null,"method":"mining.notify","params":["#;
    const CLEAN: &[u8] = b",true]}\n";
    const NOT_CLEAN: &[u8] = b",false]}\n";
    let quoted_id = serde_json::to_vec(id.as_str()).ok()?;
    let rest = line
        .strip_prefix(HEAD)?
        .strip_prefix(quoted_id.as_slice())?;
    let middle = rest
        .strip_suffix(CLEAN)
        .or_else(|| rest.strip_suffix(NOT_CLEAN))?;
    let mut renamed = Vec::with_capacity(line.len() + new_id.as_str().len());
    renamed.extend_from_slice(HEAD);
    serde_json::to_writer(&mut renamed, new_id.as_str()).ok()?;
    renamed.extend_from_slice(middle);
    renamed.extend_from_slice(if clean { CLEAN } else { NOT_CLEAN });
    Some(Bytes::from(renamed))
}

/// Appends the `mining.submit` line a pool is sent for a forwarded share to `line`: the same
/// bytes as the generic request line, written straight into the caller's buffer (no JSON value,
/// no string per field), since it runs once per forwarded share.
pub fn write_submit_line(line: &mut Vec<u8>, id: u64, worker: &str, share: &Share) {
    use std::io::Write as _;
    // Writing into a Vec cannot fail.
    let _ = write!(line, r#"{{"id":{id},"method":"mining.submit","params":["#);
    let _ = serde_json::to_writer(&mut *line, worker);
    line.push(b',');
    let _ = serde_json::to_writer(&mut *line, share.job_id.as_str());
    push_hex_field(line, share.extranonce2.as_bytes());
    push_hex_field(line, &share.ntime.to_be_bytes());
    push_hex_field(line, &share.nonce.to_be_bytes());
    if let Some(bits) = share.version_bits {
        push_hex_field(line, &bits.to_be_bytes());
    }
    line.extend_from_slice(b"]}\n");
}

/// The answer to an accepted share, `{"id":<id>,"result":true,"error":null}`: the same bytes as
/// `Response::ok(id, true).to_line()`, without building a JSON value, once per share.
pub fn accepted_line(id: &Id) -> Bytes {
    let mut line = Vec::with_capacity(48);
    line.extend_from_slice(br#"{"id":"#);
    // Ids serialize (numbers, strings, null); into a Vec this cannot fail.
    let _ = serde_json::to_writer(&mut line, id);
    line.extend_from_slice(b",\"result\":true,\"error\":null}\n");
    Bytes::from(line)
}

fn push_hex_field(line: &mut Vec<u8>, bytes: &[u8]) {
    line.push(b',');
    push_hex_string(line, bytes);
}

/// `"<hex>"`, lower case.
fn push_hex_string(line: &mut Vec<u8>, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    line.push(b'"');
    for byte in bytes {
        line.push(DIGITS[usize::from(byte >> 4)]);
        line.push(DIGITS[usize::from(byte & 0x0f)]);
    }
    line.push(b'"');
}

fn request_line(id: &Id, method: &str, params: Value) -> Bytes {
    #[derive(Serialize)]
    struct Wire<'a> {
        id: &'a Id,
        method: &'a str,
        params: Value,
    }
    let mut line = serde_json::to_vec(&Wire { id, method, params })
        .expect("ids, strings and values always serialize");
    line.push(b'\n');
    Bytes::from(line)
}

fn notify_params(n: &Notify) -> Value {
    let branch: Vec<String> = n.merkle_branch.iter().map(hex::encode).collect();
    json!([
        n.job_id.as_str(),
        hex::encode(n.prevhash.wire_bytes()),
        hex::encode(&n.coinb1),
        hex::encode(&n.coinb2),
        branch,
        format!("{:08x}", n.version),
        format!("{:08x}", n.nbits),
        format!("{:08x}", n.ntime),
        n.clean_jobs
    ])
}

/// Difficulties go out as integers when they are whole (some firmware chokes on `16384.0`).
fn difficulty_value(d: Difficulty) -> Value {
    let value = d.get();
    if value.fract() == 0.0 && value < 9_007_199_254_740_992.0 {
        Value::from(value as u64)
    } else {
        Value::from(value)
    }
}

//! One line to one typed [`Message`]: the JSON-RPC envelope borrowed from the line, the
//! positional parameters of each known method decoded into the wire types, and the errors that
//! say why a line is not a usable message (keeping the request's id so it can be answered).

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::difficulty::Difficulty;
use super::error::{ParamError, ProtocolError};
use super::extranonce::{Extranonce1, MAX_EXTRANONCE_LEN};
use super::id::Id;
use super::message::{
    Authorize, Configure, Message, Method, Reconnect, Request, Response, SetExtranonce,
    StratumError, Submit, Subscribe, decode_mask, method,
};
use super::notify::Notify;
use super::share::Share;

/// The JSON-RPC envelope, borrowed from the line.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(default)]
    id: Id,
    #[serde(default, borrow)]
    method: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    params: Option<&'a RawValue>,
    #[serde(default, borrow)]
    result: Option<&'a RawValue>,
    #[serde(default, borrow)]
    error: Option<&'a RawValue>,
}

impl Message {
    /// Parses one line (without its newline).
    pub fn parse(line: &[u8]) -> Result<Message, ProtocolError> {
        let text = std::str::from_utf8(line).map_err(|e| ProtocolError::InvalidUtf8 {
            valid_up_to: e.valid_up_to(),
        })?;
        let envelope: Envelope<'_> =
            serde_json::from_str(text).map_err(ProtocolError::InvalidJson)?;
        match envelope.method {
            Some(name) => {
                let id = envelope.id;
                match parse_method(&name, envelope.params) {
                    Ok(method) => Ok(Message::Request(Request { id, method })),
                    Err((method, reason)) => {
                        Err(ProtocolError::InvalidParams { id, method, reason })
                    }
                }
            }
            None => {
                let result = match envelope.result {
                    Some(raw) => {
                        serde_json::from_str(raw.get()).map_err(ProtocolError::InvalidJson)?
                    }
                    None => Value::Null,
                };
                let error = match envelope.error {
                    Some(raw) => StratumError::from_value(
                        &serde_json::from_str(raw.get()).map_err(ProtocolError::InvalidJson)?,
                    ),
                    None => None,
                };
                Ok(Message::Response(Response {
                    id: envelope.id,
                    result,
                    error,
                }))
            }
        }
    }
}

/// Positional parameters, each still raw JSON borrowed from the line.
struct Params<'a> {
    items: Vec<&'a RawValue>,
}

impl<'a> Params<'a> {
    fn new(raw: Option<&'a RawValue>) -> Result<Self, ParamError> {
        let items = match raw {
            None => Vec::new(),
            Some(raw) if raw.get() == "null" => Vec::new(),
            Some(raw) => serde_json::from_str::<Vec<&'a RawValue>>(raw.get())
                .map_err(|_| ParamError::NotAnArray)?,
        };
        Ok(Self { items })
    }

    /// The item at `index`, unless missing or null.
    fn get(&self, index: usize) -> Option<&'a RawValue> {
        self.items
            .get(index)
            .copied()
            .filter(|raw| raw.get() != "null")
    }

    fn string(&self, index: usize, name: &'static str) -> Result<Cow<'a, str>, ParamError> {
        self.optional_string(index, name)?
            .ok_or(ParamError::Missing { index, name })
    }

    fn optional_string(
        &self,
        index: usize,
        name: &'static str,
    ) -> Result<Option<Cow<'a, str>>, ParamError> {
        let Some(raw) = self.get(index) else {
            return Ok(None);
        };
        let text = raw.get();
        if let Ok(borrowed) = serde_json::from_str::<&'a str>(text) {
            return Ok(Some(Cow::Borrowed(borrowed)));
        }
        serde_json::from_str::<String>(text)
            .map(|owned| Some(Cow::Owned(owned)))
            .map_err(|_| ParamError::WrongType {
                name,
                expected: "a string",
            })
    }

    /// A string, or a number taken as its decimal text (some clients send job ids as numbers).
    fn string_or_number(
        &self,
        index: usize,
        name: &'static str,
    ) -> Result<Cow<'a, str>, ParamError> {
        let raw = self.get(index).ok_or(ParamError::Missing { index, name })?;
        if raw
            .get()
            .starts_with(|c: char| c == '-' || c.is_ascii_digit())
        {
            return Ok(Cow::Borrowed(raw.get()));
        }
        self.string(index, name)
    }

    fn number(&self, index: usize, name: &'static str) -> Result<f64, ParamError> {
        let raw = self.get(index).ok_or(ParamError::Missing { index, name })?;
        // Numbers as integer or float; some pools quote them.
        if let Ok(n) = serde_json::from_str::<f64>(raw.get()) {
            return Ok(n);
        }
        self.string(index, name)?
            .trim()
            .parse::<f64>()
            .map_err(|_| ParamError::WrongType {
                name,
                expected: "a number",
            })
    }

    fn difficulty(&self, index: usize, name: &'static str) -> Result<Difficulty, ParamError> {
        Difficulty::new(self.number(index, name)?)
            .map_err(|source| ParamError::Difficulty { name, source })
    }

    fn unsigned(&self, index: usize, name: &'static str) -> Result<u64, ParamError> {
        let n = self.number(index, name)?;
        if n >= 0.0 && n.fract() == 0.0 && n <= u64::MAX as f64 {
            Ok(n as u64)
        } else {
            Err(ParamError::WrongType {
                name,
                expected: "a non-negative integer",
            })
        }
    }

    fn boolean(&self, index: usize, name: &'static str) -> Result<bool, ParamError> {
        let raw = self.get(index).ok_or(ParamError::Missing { index, name })?;
        serde_json::from_str::<bool>(raw.get()).map_err(|_| ParamError::WrongType {
            name,
            expected: "a boolean",
        })
    }

    fn parse<T: Deserialize<'a>>(
        &self,
        index: usize,
        name: &'static str,
        expected: &'static str,
    ) -> Result<T, ParamError> {
        let raw = self.get(index).ok_or(ParamError::Missing { index, name })?;
        serde_json::from_str(raw.get()).map_err(|_| ParamError::WrongType { name, expected })
    }
}

/// Every method whose parameters this module decodes.
const KNOWN_METHODS: [&str; 12] = [
    method::SUBMIT,
    method::NOTIFY,
    method::SUBSCRIBE,
    method::AUTHORIZE,
    method::CONFIGURE,
    method::EXTRANONCE_SUBSCRIBE,
    method::SUGGEST_DIFFICULTY,
    method::SET_DIFFICULTY,
    method::SET_VERSION_MASK,
    method::SET_EXTRANONCE,
    method::RECONNECT,
    method::SHOW_MESSAGE,
];

/// Decodes a known method's parameters; unknown methods keep only their name. An error carries
/// the method's static name for the log and the reply.
fn parse_method(
    name: &str,
    raw_params: Option<&RawValue>,
) -> Result<Method, (&'static str, ParamError)> {
    let Some(known) = KNOWN_METHODS.iter().copied().find(|m| *m == name) else {
        return Ok(Method::Unknown(name.to_owned()));
    };
    Params::new(raw_params)
        .and_then(|params| parse_known_method(known, &params))
        .map_err(|reason| (known, reason))
}

fn parse_known_method(name: &'static str, p: &Params<'_>) -> Result<Method, ParamError> {
    match name {
        method::SUBMIT => {
            let worker = p.string(0, "worker_name")?.into_owned();
            let job_id = p.string_or_number(1, "job_id")?;
            let extranonce2 = p.string(2, "extranonce2")?;
            let ntime = p.string(3, "ntime")?;
            let nonce = p.string(4, "nonce")?;
            let version_bits = p.optional_string(5, "version_bits")?;
            let share = Share::from_hex(
                &job_id,
                &extranonce2,
                &ntime,
                &nonce,
                version_bits.as_deref(),
            )
            .map_err(ParamError::InvalidShare)?;
            Ok(Method::Submit(Submit { worker, share }))
        }
        method::NOTIFY => {
            let branch: Vec<Cow<'_, str>> =
                p.parse(4, "merkle_branch", "an array of hex strings")?;
            let notify = Notify::from_hex(
                &p.string_or_number(0, "job_id")?,
                &p.string(1, "prevhash")?,
                &p.string(2, "coinb1")?,
                &p.string(3, "coinb2")?,
                &branch,
                &p.string(5, "version")?,
                &p.string(6, "nbits")?,
                &p.string(7, "ntime")?,
                p.boolean(8, "clean_jobs")?,
            )
            .map_err(ParamError::Notify)?;
            Ok(Method::Notify(notify))
        }
        method::SUBSCRIBE => Ok(Method::Subscribe(Subscribe {
            user_agent: p
                .optional_string(0, "user_agent")
                .ok()
                .flatten()
                .map(Cow::into_owned),
            session_id: p
                .optional_string(1, "session_id")
                .ok()
                .flatten()
                .map(Cow::into_owned),
        })),
        method::AUTHORIZE => Ok(Method::Authorize(Authorize {
            worker: p.string(0, "worker_name")?.into_owned(),
            password: p
                .optional_string(1, "password")
                .ok()
                .flatten()
                .map(Cow::into_owned),
        })),
        method::CONFIGURE => {
            let extensions: Vec<String> =
                p.parse(0, "extensions", "an array of extension names")?;
            let parameters: Map<String, Value> = match p.get(1) {
                None => Map::new(),
                Some(_) => p.parse(1, "extension_parameters", "an object")?,
            };
            Ok(Method::Configure(Configure {
                extensions,
                parameters,
            }))
        }
        method::EXTRANONCE_SUBSCRIBE => Ok(Method::ExtranonceSubscribe),
        method::SUGGEST_DIFFICULTY => Ok(Method::SuggestDifficulty(p.difficulty(0, "difficulty")?)),
        method::SET_DIFFICULTY => Ok(Method::SetDifficulty(p.difficulty(0, "difficulty")?)),
        method::SET_VERSION_MASK => {
            let mask = p.string(0, "mask")?;
            Ok(Method::SetVersionMask(
                decode_mask(&mask).ok_or(ParamError::BadHex { name: "mask" })?,
            ))
        }
        method::SET_EXTRANONCE => {
            let extranonce1 =
                Extranonce1::from_hex(&p.string(0, "extranonce1")?).map_err(|_| {
                    ParamError::BadHex {
                        name: "extranonce1",
                    }
                })?;
            let extranonce2_size = p.unsigned(1, "extranonce2_size")?;
            if extranonce2_size > MAX_EXTRANONCE_LEN as u64 {
                return Err(ParamError::WrongType {
                    name: "extranonce2_size",
                    expected: "at most 32",
                });
            }
            Ok(Method::SetExtranonce(SetExtranonce {
                extranonce1,
                extranonce2_size: extranonce2_size as usize,
            }))
        }
        method::RECONNECT => {
            let port = match p.get(1) {
                None => None,
                Some(_) => Some(u16::try_from(p.unsigned(1, "port")?).map_err(|_| {
                    ParamError::WrongType {
                        name: "port",
                        expected: "a port number",
                    }
                })?),
            };
            let wait_seconds = match p.get(2) {
                None => None,
                Some(_) => Some(p.unsigned(2, "wait")?),
            };
            Ok(Method::Reconnect(Reconnect {
                host: p.optional_string(0, "host")?.map(Cow::into_owned),
                port,
                wait_seconds,
            }))
        }
        method::SHOW_MESSAGE => Ok(Method::ShowMessage(p.string(0, "message")?.into_owned())),
        // KNOWN_METHODS lists exactly the arms above.
        other => Ok(Method::Unknown(other.to_owned())),
    }
}

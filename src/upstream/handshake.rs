//! The pool handshake: configure (version rolling only), subscribe, authorize and
//! extranonce.subscribe in one burst, then the answers, keeping notifications that come early.

use bytes::Bytes;
use futures::{SinkExt, StreamExt};

use super::error::UpstreamError;
use super::events::PoolStream;
use crate::config::UpstreamConfig;
use crate::protocol::{
    Authorize, Configure, ConfigureResult, Extranonce1, Id, Message, Method, Request, Response,
    Subscribe, SubscribeResult,
};

pub(super) struct Handshake {
    pub extranonce1: Extranonce1,
    pub extranonce2_size: usize,
    pub version_mask: u32,
}

/// Notifications kept from before the handshake completes.
const MAX_EARLY_MESSAGES: usize = 32;

const ID_CONFIGURE: u64 = 1;
const ID_SUBSCRIBE: u64 = 2;
const ID_AUTHORIZE: u64 = 3;
const ID_EXTRANONCE_SUBSCRIBE: u64 = 4;

/// Sends configure (version rolling only: pools have frozen on other extensions), subscribe,
/// authorize and extranonce.subscribe in one burst and waits for subscribe and authorize.
/// Notifications that arrive meanwhile are returned to be handled once ready.
pub(super) async fn handshake(
    framed: &mut PoolStream,
    config: &UpstreamConfig,
) -> Result<(Handshake, Vec<Message>), UpstreamError> {
    let mut burst = Vec::new();
    if config.version_rolling {
        let mut parameters = serde_json::Map::new();
        parameters.insert("version-rolling.mask".into(), "1fffe000".into());
        parameters.insert("version-rolling.min-bit-count".into(), 2.into());
        burst.push(Request {
            id: Id::from(ID_CONFIGURE),
            method: Method::Configure(Configure {
                extensions: vec!["version-rolling".into()],
                parameters,
            }),
        });
    }
    burst.push(Request {
        id: Id::from(ID_SUBSCRIBE),
        method: Method::Subscribe(Subscribe {
            user_agent: Some(format!("hashgate/{}", env!("CARGO_PKG_VERSION"))),
            session_id: None,
        }),
    });
    burst.push(Request {
        id: Id::from(ID_AUTHORIZE),
        method: Method::Authorize(Authorize {
            worker: config.user.clone(),
            password: Some(config.password.clone()),
        }),
    });
    burst.push(Request {
        id: Id::from(ID_EXTRANONCE_SUBSCRIBE),
        method: Method::ExtranonceSubscribe,
    });
    for request in &burst {
        framed
            .feed(request.to_line())
            .await
            .map_err(UpstreamError::Io)?;
    }
    framed.flush().await.map_err(UpstreamError::Io)?;

    let mut version_mask = None;
    let mut subscribed: Option<SubscribeResult> = None;
    let mut authorized = false;
    let mut early = Vec::new();
    while subscribed.is_none() || !authorized {
        let line = next_line(framed).await?;
        let message = Message::parse(&line).map_err(UpstreamError::Protocol)?;
        match message {
            Message::Response(response) => match &response.id {
                id if *id == Id::from(ID_CONFIGURE) => {
                    version_mask = ConfigureResult::from_value(&response.result).version_rolling;
                }
                id if *id == Id::from(ID_SUBSCRIBE) => {
                    if !response.is_ok() {
                        return Err(refused("mining.subscribe", &response));
                    }
                    subscribed = Some(
                        SubscribeResult::from_value(&response.result)
                            .map_err(UpstreamError::SubscribeResult)?,
                    );
                }
                id if *id == Id::from(ID_AUTHORIZE) => {
                    if !response.is_ok() {
                        return Err(refused("mining.authorize", &response));
                    }
                    authorized = true;
                }
                _ => {} // extranonce.subscribe: refusal is fine
            },
            // Bounded: a pool that floods notifications during the handshake keeps only the
            // newest ones (a notify or a difficulty from before the last few is obsolete).
            Message::Request(_) => {
                if early.len() >= MAX_EARLY_MESSAGES {
                    early.remove(0);
                }
                early.push(message);
            }
        }
    }
    let subscribed = subscribed.expect("loop ends only once subscribed");
    Ok((
        Handshake {
            extranonce1: subscribed.extranonce1,
            extranonce2_size: subscribed.extranonce2_size,
            version_mask: version_mask.unwrap_or(0),
        },
        early,
    ))
}

fn refused(method: &'static str, response: &Response) -> UpstreamError {
    UpstreamError::Refused {
        method,
        message: response
            .error
            .as_ref()
            .map(|e| format!("{} ({})", e.message, e.code))
            .unwrap_or_else(|| "result false".into()),
    }
}

pub(super) async fn next_line(framed: &mut PoolStream) -> Result<Bytes, UpstreamError> {
    match framed.next().await {
        Some(Ok(line)) => Ok(line),
        Some(Err(e)) => Err(UpstreamError::Io(e)),
        None => Err(UpstreamError::Closed),
    }
}

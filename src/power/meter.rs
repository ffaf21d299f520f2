//! Meters: a group's power measured at its rack or PDU, the best source there is (the machines'
//! own figures are estimates on most makes). A [`Meter`] is one reading of one device behind a
//! trait, so an SNMP PDU can join the Modbus TCP meter later; the [`MeterPoller`] reads every
//! meter at `power.fast_poll_interval` (one request per meter, cheap) into the [`MeterBook`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio_modbus::Slave;
use tokio_modbus::client::{Reader, tcp};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use super::driver::{DriverError, DriverFuture};
use crate::clock::unix_ms;
use crate::config::{MeterConfig, RegisterKind, ValueType, WordOrder};

/// A device that measures a group's power.
pub trait Meter: Send + Sync + std::fmt::Debug {
    /// What it is and where, for logs and errors (`modbus 10.7.0.250:502 unit 1 input 52`).
    fn describe(&self) -> String;
    /// Watts now.
    fn read(&self) -> DriverFuture<'_, f64>;
}

/// A meter read over Modbus TCP.
#[derive(Debug, Clone)]
pub struct ModbusMeter {
    address: SocketAddr,
    unit: u8,
    function: RegisterKind,
    register: u16,
    value_type: ValueType,
    word_order: WordOrder,
    scale: f64,
}

impl ModbusMeter {
    /// The meter of a validated `[[meter]]`; none when its address does not parse.
    pub fn new(config: &MeterConfig) -> Option<ModbusMeter> {
        Some(ModbusMeter {
            address: config.socket_addr()?,
            unit: config.unit_id,
            function: config.function,
            register: config.register,
            value_type: config.value_type,
            word_order: config.word_order,
            scale: config.scale,
        })
    }

    fn words(&self) -> u16 {
        match self.value_type {
            ValueType::Float32 | ValueType::U32 | ValueType::I32 => 2,
            ValueType::U16 | ValueType::I16 => 1,
        }
    }
}

/// The value in `words` as the meter encodes it (`words` holds as many as the type needs).
pub fn decode(words: &[u16], value_type: ValueType, order: WordOrder) -> Option<f64> {
    let pair = || -> Option<u32> {
        let (first, second) = (*words.first()?, *words.get(1)?);
        let (high, low) = match order {
            WordOrder::Big => (first, second),
            WordOrder::Little => (second, first),
        };
        Some((u32::from(high) << 16) | u32::from(low))
    };
    let value = match value_type {
        ValueType::Float32 => f64::from(f32::from_bits(pair()?)),
        ValueType::U32 => f64::from(pair()?),
        ValueType::I32 => f64::from(pair()? as i32),
        ValueType::U16 => f64::from(*words.first()?),
        ValueType::I16 => f64::from(*words.first()? as i16),
    };
    value.is_finite().then_some(value)
}

impl Meter for ModbusMeter {
    fn describe(&self) -> String {
        let table = match self.function {
            RegisterKind::Input => "input",
            RegisterKind::Holding => "holding",
        };
        format!(
            "modbus {} unit {} {table} register {}",
            self.address, self.unit, self.register
        )
    }

    fn read(&self) -> DriverFuture<'_, f64> {
        Box::pin(async move {
            let mut ctx = tcp::connect_slave(self.address, Slave(self.unit))
                .await
                .map_err(|e| DriverError::Unreachable(Box::new(e)))?;
            let answer = match self.function {
                RegisterKind::Input => ctx.read_input_registers(self.register, self.words()).await,
                RegisterKind::Holding => {
                    ctx.read_holding_registers(self.register, self.words())
                        .await
                }
            };
            let words = answer
                .map_err(|e| DriverError::Unreachable(Box::new(e)))?
                .map_err(|code| DriverError::Refused(format!("modbus exception {code:?}")))?;
            let value = decode(&words, self.value_type, self.word_order)
                .ok_or_else(|| DriverError::Malformed(format!("registers {words:?}")))?;
            let watts = value * self.scale;
            if watts < 0.0 {
                return Err(DriverError::Malformed(format!("{watts} W")));
            }
            Ok(watts)
        })
    }
}

/// A group's meter as last read.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct MeterReading {
    /// What the meter is.
    pub meter: String,
    /// Watts at the last good reading.
    pub watts: Option<f64>,
    /// When (Unix ms).
    pub read_at_ms: Option<u64>,
    /// The last read's error (cleared by a success).
    pub error: Option<String>,
}

/// Every group's meter reading.
#[derive(Debug, Default)]
pub struct MeterBook {
    groups: Mutex<HashMap<String, MeterReading>>,
}

impl MeterBook {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, MeterReading>> {
        self.groups.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The group's meter, if it has one.
    pub fn get(&self, group: &str) -> Option<MeterReading> {
        self.lock().get(group).cloned()
    }
}

/// Reads every group's meter.
pub struct MeterPoller {
    meters: Vec<(String, Arc<dyn Meter>)>,
    interval: Duration,
    timeout: Duration,
    book: Arc<MeterBook>,
}

impl MeterPoller {
    /// A poller of `meters` (group, meter), each read every `interval` within `timeout`.
    pub fn new(
        meters: Vec<(String, Arc<dyn Meter>)>,
        interval: Duration,
        timeout: Duration,
    ) -> (MeterPoller, Arc<MeterBook>) {
        let book = Arc::new(MeterBook::default());
        for (group, meter) in &meters {
            book.lock().insert(
                group.clone(),
                MeterReading {
                    meter: meter.describe(),
                    ..MeterReading::default()
                },
            );
        }
        let poller = MeterPoller {
            meters,
            interval,
            timeout,
            book: Arc::clone(&book),
        };
        (poller, book)
    }

    /// One task per meter, until `cancel`: a slow meter delays only itself.
    pub fn spawn(self, tracker: &TaskTracker, cancel: CancellationToken) {
        for (group, meter) in self.meters {
            let (book, cancel) = (Arc::clone(&self.book), cancel.clone());
            let (interval, timeout) = (self.interval, self.timeout);
            tracker.spawn(async move {
                let mut tick = tokio::time::interval(interval);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut failures = 0u32;
                loop {
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tick.tick() => {}
                    }
                    let result = tokio::time::timeout(timeout, meter.read())
                        .await
                        .unwrap_or(Err(DriverError::Timeout {
                            what: "meter reading",
                            after: timeout,
                        }));
                    let mut groups = book.lock();
                    let Some(reading) = groups.get_mut(&group) else {
                        return;
                    };
                    match result {
                        Ok(watts) => {
                            failures = 0;
                            reading.watts = Some(watts);
                            reading.read_at_ms = Some(unix_ms());
                            reading.error = None;
                        }
                        Err(error) => {
                            failures = failures.saturating_add(1);
                            if failures == 1 {
                                warn!(%group, meter = %reading.meter, %error, "meter not read");
                            } else {
                                debug!(%group, meter = %reading.meter, %error, failures, "meter still not read");
                            }
                            reading.error = Some(error.to_string());
                        }
                    }
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float32_words_decode_in_either_order() {
        // 1234.5 W is 0x449A5000: an SDM630 sends the high word first.
        let big = [0x449A, 0x5000];
        assert_eq!(
            decode(&big, ValueType::Float32, WordOrder::Big),
            Some(1234.5)
        );
        let swapped = [0x5000, 0x449A];
        assert_eq!(
            decode(&swapped, ValueType::Float32, WordOrder::Little),
            Some(1234.5)
        );
        // 230.0 V, the SDM630 manual's phase-voltage example: 0x43660000.
        assert_eq!(
            decode(&[0x4366, 0x0000], ValueType::Float32, WordOrder::Big),
            Some(230.0)
        );
        // A NaN (a meter that has no value yet) is no reading.
        assert_eq!(
            decode(&[0x7FC0, 0x0000], ValueType::Float32, WordOrder::Big),
            None
        );
        assert_eq!(
            decode(&[0x0001, 0x86A0], ValueType::U32, WordOrder::Big),
            Some(100_000.0)
        );
        assert_eq!(
            decode(&[0xFFFF], ValueType::I16, WordOrder::Big),
            Some(-1.0)
        );
        assert_eq!(
            decode(&[7], ValueType::Float32, WordOrder::Big),
            None,
            "one word short"
        );
    }
}

//! `[[meter]]`: a rack or PDU meter read over Modbus TCP, the best power source a group can
//! have. Registers are given as the protocol's 0-based address (an Eastron SDM630's "30053
//! Total system power" is input register 52), with the value's type, word order and scale.

use std::collections::HashSet;
use std::net::SocketAddr;

use serde::Deserialize;

use super::error::{ConfigError, invalid};

/// Which register table the value is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum RegisterKind {
    /// Input registers (function code 4): most meters' measurements.
    #[default]
    Input,
    /// Holding registers (function code 3).
    Holding,
}

/// How the value is encoded in its registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ValueType {
    /// IEEE 754 single precision over two registers.
    #[default]
    Float32,
    /// Unsigned 32-bit over two registers.
    U32,
    /// Signed 32-bit over two registers.
    I32,
    /// Unsigned 16-bit, one register.
    U16,
    /// Signed 16-bit, one register.
    I16,
}

/// Which register of a two-register value comes first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum WordOrder {
    /// The high word first (Eastron, most meters).
    #[default]
    Big,
    /// The low word first ("word-swapped").
    Little,
}

/// `[[meter]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeterConfig {
    /// The group whose power it measures (one meter per group).
    pub group: String,
    /// The meter's Modbus TCP address, `ip:port` (502 is the standard port).
    pub address: String,
    /// The Modbus unit (slave) id.
    #[serde(default = "unit_id")]
    pub unit_id: u8,
    /// The register table (function code 4 or 3).
    #[serde(default)]
    pub function: RegisterKind,
    /// The 0-based register address of the value.
    pub register: u16,
    /// The value's type.
    #[serde(default, rename = "type")]
    pub value_type: ValueType,
    /// The word order of a two-register value.
    #[serde(default)]
    pub word_order: WordOrder,
    /// Watts per unit of the value (1.0 for a meter that reports watts, 1000.0 for kW).
    #[serde(default = "scale")]
    pub scale: f64,
}

fn unit_id() -> u8 {
    1
}

fn scale() -> f64 {
    1.0
}

impl MeterConfig {
    /// The meter's socket address (validated).
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        self.address.parse().ok()
    }
}

/// Each meter names a configured group (at most one meter each), an `ip:port`, and a scale.
pub(super) fn validate_meters(
    meters: &[MeterConfig],
    group_names: &HashSet<&str>,
) -> Result<(), ConfigError> {
    let mut metered = HashSet::new();
    for (i, meter) in meters.iter().enumerate() {
        let key = |field: &str| format!("meter[{i}].{field}");
        if !group_names.contains(meter.group.as_str()) {
            return Err(invalid(
                &key("group"),
                format!("{:?} is not a configured [[group]]", meter.group),
            ));
        }
        if !metered.insert(meter.group.as_str()) {
            return Err(invalid(
                &key("group"),
                format!("{:?} already has a meter", meter.group),
            ));
        }
        if meter.socket_addr().is_none() {
            return Err(invalid(
                &key("address"),
                format!(
                    "{:?} must be ip:port, e.g. \"10.7.0.250:502\"",
                    meter.address
                ),
            ));
        }
        if !meter.scale.is_finite() || meter.scale <= 0.0 {
            return Err(invalid(
                &key("scale"),
                format!("{} must be above zero", meter.scale),
            ));
        }
        let two_words = matches!(
            meter.value_type,
            ValueType::Float32 | ValueType::U32 | ValueType::I32
        );
        if two_words && meter.register == u16::MAX {
            return Err(invalid(
                &key("register"),
                "a two-register value cannot start at the last register".into(),
            ));
        }
    }
    Ok(())
}

//! Extranonces on the wire: the server-assigned extranonce1 and the miner-rolled extranonce2,
//! decoded from hex once and kept inline (no heap).
//!
//! How a proxy splits one pool's extranonce space between miners is work's job
//! (`work::ExtranonceAllocator`, `work::ExtranonceSplit`); this module only knows the bytes.

use std::fmt;

/// The most bytes an extranonce may have. The coinbase scriptSig is at most 100 bytes and real
/// pools use 4 to 8; anything above this is hostile or broken input.
pub const MAX_EXTRANONCE_LEN: usize = 32;

/// A short byte string kept inline (no heap), decoded from hex once at the edge.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct InlineBytes {
    len: u8,
    bytes: [u8; MAX_EXTRANONCE_LEN],
}

impl InlineBytes {
    fn from_slice(slice: &[u8]) -> Result<Self, ExtranonceError> {
        if slice.len() > MAX_EXTRANONCE_LEN {
            return Err(ExtranonceError::TooLong {
                len: slice.len(),
                max: MAX_EXTRANONCE_LEN,
            });
        }
        let mut bytes = [0u8; MAX_EXTRANONCE_LEN];
        bytes[..slice.len()].copy_from_slice(slice);
        Ok(Self {
            len: slice.len() as u8,
            bytes,
        })
    }

    fn from_hex(hex_str: &str) -> Result<Self, ExtranonceError> {
        if !hex_str.len().is_multiple_of(2) {
            return Err(ExtranonceError::BadHex);
        }
        let len = hex_str.len() / 2;
        if len > MAX_EXTRANONCE_LEN {
            return Err(ExtranonceError::TooLong {
                len,
                max: MAX_EXTRANONCE_LEN,
            });
        }
        let mut bytes = [0u8; MAX_EXTRANONCE_LEN];
        hex::decode_to_slice(hex_str, &mut bytes[..len]).map_err(|_| ExtranonceError::BadHex)?;
        Ok(Self {
            len: len as u8,
            bytes,
        })
    }

    #[inline]
    fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }
}

/// Why bytes are not a usable extranonce.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ExtranonceError {
    /// Odd length or a non-hex character.
    #[error("extranonce is not valid hex")]
    BadHex,
    /// Longer than [`MAX_EXTRANONCE_LEN`].
    #[error("extranonce of {len} bytes exceeds the maximum of {max}")]
    TooLong {
        /// Bytes given.
        len: usize,
        /// Bytes allowed.
        max: usize,
    },
}

macro_rules! extranonce_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash)]
        pub struct $name(InlineBytes);

        impl $name {
            /// Wraps raw bytes (at most [`MAX_EXTRANONCE_LEN`]).
            pub fn from_bytes(bytes: &[u8]) -> Result<Self, ExtranonceError> {
                InlineBytes::from_slice(bytes).map(Self)
            }

            /// Decodes hex as sent on the wire (either case).
            pub fn from_hex(hex_str: &str) -> Result<Self, ExtranonceError> {
                InlineBytes::from_hex(hex_str).map(Self)
            }

            /// The raw bytes, in coinbase order.
            #[inline]
            pub fn as_bytes(&self) -> &[u8] {
                self.0.as_slice()
            }

            /// Number of bytes.
            #[inline]
            pub fn len(&self) -> usize {
                self.0.len as usize
            }

            /// Whether it has no bytes (legal: some pools send an empty extranonce1).
            #[inline]
            pub fn is_empty(&self) -> bool {
                self.0.len == 0
            }

            /// Lower-case hex, as sent on the wire.
            pub fn to_hex(&self) -> String {
                hex::encode(self.as_bytes())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                for byte in self.as_bytes() {
                    write!(f, "{byte:02x}")?;
                }
                Ok(())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({self})", stringify!($name))
            }
        }
    };
}

extranonce_type!(
    /// The per-connection part of the coinbase that the server assigns (`mining.subscribe`
    /// result, `mining.set_extranonce`). For a miner behind hashgate it is the pool's
    /// extranonce1 followed by the miner's unique prefix.
    Extranonce1
);

extranonce_type!(
    /// The part of the coinbase the miner rolls (`mining.submit`), of exactly the size the
    /// server announced.
    Extranonce2
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_case() {
        let upper = Extranonce2::from_hex("7807ABCD").unwrap();
        let lower = Extranonce2::from_hex("7807abcd").unwrap();
        assert_eq!(upper, lower, "decoded bytes, not strings, are compared");
        assert_eq!(upper.to_hex(), "7807abcd");
        assert_eq!(upper.len(), 4);
        assert!(Extranonce2::from_hex("780").is_err());
        assert!(Extranonce2::from_hex("zz").is_err());
        assert!(Extranonce1::from_hex(&"00".repeat(33)).is_err());
        assert!(Extranonce1::from_hex("").unwrap().is_empty());
    }
}

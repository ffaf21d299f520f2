//! Line framing: one JSON object per `\n`-terminated line, with a hard maximum length.
//!
//! The decoder yields each line as [`Bytes`] split off the read buffer (no copy), with `\r\n` and
//! surrounding whitespace trimmed and blank lines skipped. A line longer than the maximum is an
//! error as soon as that many bytes are buffered without a newline, so a peer that never sends one
//! cannot grow the buffer without bound. Parsing the line is [`Message::parse`]'s job, kept apart
//! so a malformed line is a per-line outcome and not the end of the stream.
//!
//! [`Message::parse`]: super::Message::parse

use bytes::{Buf, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

/// Default maximum line length: 16 KiB. A miner's longest line (a submit or a configure) is a few
/// hundred bytes; pools' notify lines with large coinbases are the reason it is configurable.
pub const DEFAULT_MAX_LINE: usize = 16 * 1024;

/// Why a connection's byte stream cannot go on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// More than `limit` bytes without a newline.
    #[error("line longer than {limit} bytes")]
    LineTooLong {
        /// The configured maximum.
        limit: usize,
    },
    /// The socket failed.
    #[error("i/o error")]
    Io(#[from] std::io::Error),
}

/// The Stratum line codec (decoder and encoder).
#[derive(Debug, Clone)]
pub struct LineCodec {
    max_line: usize,
    /// Bytes already scanned for a newline, so a line arriving in many segments is scanned once.
    scanned: usize,
}

impl LineCodec {
    /// A codec with the given maximum line length in bytes (excluding the newline).
    pub fn new(max_line: usize) -> Self {
        Self {
            max_line,
            scanned: 0,
        }
    }

    /// The maximum line length.
    pub fn max_line(&self) -> usize {
        self.max_line
    }
}

impl Default for LineCodec {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_LINE)
    }
}

impl Decoder for LineCodec {
    type Item = Bytes;
    type Error = FrameError;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        loop {
            let Some(offset) = memchr::memchr(b'\n', &buf[self.scanned..]) else {
                if buf.len() > self.max_line {
                    return Err(FrameError::LineTooLong {
                        limit: self.max_line,
                    });
                }
                self.scanned = buf.len();
                return Ok(None);
            };
            let end = self.scanned + offset;
            self.scanned = 0;
            if end > self.max_line {
                return Err(FrameError::LineTooLong {
                    limit: self.max_line,
                });
            }
            let mut line = buf.split_to(end + 1);
            line.truncate(end);
            if let Some(trimmed) = trim(line) {
                return Ok(Some(trimmed));
            }
            // blank line (keepalive from some firmware): skip it
        }
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        if let Some(line) = self.decode(buf)? {
            return Ok(Some(line));
        }
        // A last line without its newline: serve it, like any line.
        self.scanned = 0;
        if buf.is_empty() {
            return Ok(None);
        }
        let rest = buf.split_to(buf.len());
        Ok(trim(rest))
    }
}

/// Strips ASCII whitespace (including the `\r` of `\r\n`) from both ends; None if nothing is left.
fn trim(mut line: BytesMut) -> Option<Bytes> {
    let start = line
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(line.len());
    line.advance(start);
    let end = line
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(0, |i| i + 1);
    line.truncate(end);
    (!line.is_empty()).then(|| line.freeze())
}

impl Encoder<Bytes> for LineCodec {
    type Error = FrameError;

    /// Writes a line that already ends in `\n` (as every `to_line` in this module produces).
    fn encode(&mut self, line: Bytes, dst: &mut BytesMut) -> Result<(), FrameError> {
        dst.extend_from_slice(&line);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(codec: &mut LineCodec, buf: &mut BytesMut) -> Vec<Bytes> {
        let mut out = Vec::new();
        while let Some(line) = codec.decode(buf).unwrap() {
            out.push(line);
        }
        out
    }

    #[test]
    fn several_lines_in_one_segment_and_crlf() {
        let mut codec = LineCodec::default();
        let mut buf = BytesMut::from(&b"{\"a\":1}\r\n{\"b\":2}\n\r\n  \n{\"c\":3}"[..]);
        let lines = decode_all(&mut codec, &mut buf);
        assert_eq!(lines, vec![&b"{\"a\":1}"[..], &b"{\"b\":2}"[..]]);
        assert_eq!(&buf[..], b"{\"c\":3}", "partial line stays buffered");
        assert_eq!(
            codec.decode_eof(&mut buf).unwrap().unwrap(),
            &b"{\"c\":3}"[..]
        );
    }

    #[test]
    fn one_line_split_over_many_segments() {
        let mut codec = LineCodec::default();
        let mut buf = BytesMut::new();
        let line = b"{\"id\":1,\"method\":\"mining.subscribe\",\"params\":[]}\n";
        for (i, byte) in line.iter().enumerate() {
            buf.extend_from_slice(&[*byte]);
            let got = codec.decode(&mut buf).unwrap();
            if i + 1 < line.len() {
                assert!(got.is_none());
            } else {
                assert_eq!(got.unwrap(), &line[..line.len() - 1]);
            }
        }
    }

    #[test]
    fn over_long_line_is_an_error_before_the_newline_arrives() {
        let mut codec = LineCodec::new(64);
        let mut buf = BytesMut::from(&[b'x'; 65][..]);
        assert!(matches!(
            codec.decode(&mut buf),
            Err(FrameError::LineTooLong { limit: 64 })
        ));
        let mut codec = LineCodec::new(64);
        let mut buf = BytesMut::from(&[b'x'; 64][..]);
        assert!(codec.decode(&mut buf).unwrap().is_none(), "64 is allowed");
        buf.extend_from_slice(b"\n");
        assert_eq!(codec.decode(&mut buf).unwrap().unwrap().len(), 64);
        let mut long_with_newline = BytesMut::from(&[b'y'; 80][..]);
        long_with_newline.extend_from_slice(b"\n");
        assert!(LineCodec::new(64).decode(&mut long_with_newline).is_err());
    }
}

//! The timing header every load message starts with.
//!
//! Binary layout (native protocol, 24 bytes, all little-endian):
//!
//! | bytes  | field                                                        |
//! | ------ | ------------------------------------------------------------ |
//! | 0..8   | intended send time, ns since the run epoch (`u64`)           |
//! | 8..16  | actual send time, ns since the run epoch (`u64`)             |
//! | 16..20 | sender index, the client's number in the run (`u32`)         |
//! | 20..24 | sequence number of this message from that sender (`u32`)     |
//!
//! The socket.io payload is a JSON string, so there the same 24 bytes are written as 48
//! lowercase hex digits. The rest of the payload, up to `--payload` bytes, is filler
//! (`0xA5` bytes in binary, `x` characters in text: no JSON escaping is ever needed).

/// Size of the binary header; also the smallest binary payload.
pub const BINARY_LEN: usize = 24;
/// Size of the hex-encoded header; also the smallest text payload.
pub const TEXT_LEN: usize = 2 * BINARY_LEN;

const FILLER_BYTE: u8 = 0xA5;
const FILLER_CHAR: u8 = b'x';

/// What a receiver needs to know about a message to time and account it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TimingHeader {
    /// When the schedule said this message should be sent (ns since the run epoch).
    pub intended_ns: u64,
    /// When the sender actually handed it to the socket (ns since the run epoch).
    pub sent_ns: u64,
    /// Index of the sending client in the run.
    pub sender: u32,
    /// Per-sender sequence number, starting at 0 (warm-up messages included).
    pub seq: u32,
}

impl TimingHeader {
    /// The 24 binary header bytes.
    pub fn to_bytes(&self) -> [u8; BINARY_LEN] {
        let mut out = [0u8; BINARY_LEN];
        out[0..8].copy_from_slice(&self.intended_ns.to_le_bytes());
        out[8..16].copy_from_slice(&self.sent_ns.to_le_bytes());
        out[16..20].copy_from_slice(&self.sender.to_le_bytes());
        out[20..24].copy_from_slice(&self.seq.to_le_bytes());
        out
    }

    /// The header as 48 lowercase hex digits, for text payloads.
    pub fn to_hex(&self) -> [u8; TEXT_LEN] {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut out = [0u8; TEXT_LEN];
        for (i, byte) in self.to_bytes().into_iter().enumerate() {
            out[2 * i] = DIGITS[usize::from(byte >> 4)];
            out[2 * i + 1] = DIGITS[usize::from(byte & 0xF)];
        }
        out
    }

    /// Reads a header from the start of a binary payload; `None` if it is too short.
    pub fn from_bytes(payload: &[u8]) -> Option<Self> {
        let b = payload.get(..BINARY_LEN)?;
        let u64_at = |i: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[i..i + 8]);
            u64::from_le_bytes(a)
        };
        let u32_at = |i: usize| {
            let mut a = [0u8; 4];
            a.copy_from_slice(&b[i..i + 4]);
            u32::from_le_bytes(a)
        };
        Some(Self {
            intended_ns: u64_at(0),
            sent_ns: u64_at(8),
            sender: u32_at(16),
            seq: u32_at(20),
        })
    }

    /// Reads a header from the start of a text payload (48 hex digits); `None` if it is
    /// too short or not hex.
    pub fn from_hex(text: &[u8]) -> Option<Self> {
        let hex = text.get(..TEXT_LEN)?;
        let mut bytes = [0u8; BINARY_LEN];
        for (i, out) in bytes.iter_mut().enumerate() {
            *out = (hex_value(hex[2 * i])? << 4) | hex_value(hex[2 * i + 1])?;
        }
        Self::from_bytes(&bytes)
    }

    /// Writes a binary payload of `size` bytes (at least [`BINARY_LEN`]) into `buf`.
    pub fn write_binary(&self, size: usize, buf: &mut Vec<u8>) {
        buf.clear();
        buf.extend_from_slice(&self.to_bytes());
        buf.resize(size.max(BINARY_LEN), FILLER_BYTE);
    }

    /// Writes a text payload of `size` ASCII characters (at least [`TEXT_LEN`]) into `buf`.
    pub fn write_text(&self, size: usize, buf: &mut Vec<u8>) {
        buf.clear();
        buf.extend_from_slice(&self.to_hex());
        buf.resize(size.max(TEXT_LEN), FILLER_CHAR);
    }
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> TimingHeader {
        TimingHeader {
            intended_ns: 0x0102_0304_0506_0708,
            sent_ns: 1_234_567_890_123,
            sender: 77,
            seq: 0xFFFF_FFFE,
        }
    }

    #[test]
    fn binary_round_trip_and_layout() {
        let h = sample();
        let mut buf = Vec::new();
        h.write_binary(64, &mut buf);
        assert_eq!(buf.len(), 64);
        // intended time first, little-endian
        assert_eq!(&buf[..8], &[8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(&buf[16..20], &77u32.to_le_bytes());
        assert_eq!(TimingHeader::from_bytes(&buf), Some(h));
        assert!(buf[BINARY_LEN..].iter().all(|&b| b == FILLER_BYTE));
    }

    #[test]
    fn text_round_trip_is_plain_ascii() {
        let h = sample();
        let mut buf = Vec::new();
        h.write_text(100, &mut buf);
        assert_eq!(buf.len(), 100);
        assert!(buf.iter().all(|c| c.is_ascii_alphanumeric()));
        assert_eq!(TimingHeader::from_hex(&buf), Some(h));
    }

    #[test]
    fn short_or_bad_payloads_are_rejected() {
        assert_eq!(TimingHeader::from_bytes(&[0u8; 23]), None);
        assert_eq!(TimingHeader::from_hex(&[b'0'; 47]), None);
        assert_eq!(TimingHeader::from_hex(&[b'g'; 48]), None);
    }

    #[test]
    fn payload_never_shorter_than_header() {
        let mut buf = Vec::new();
        sample().write_binary(4, &mut buf);
        assert_eq!(buf.len(), BINARY_LEN);
        sample().write_text(4, &mut buf);
        assert_eq!(buf.len(), TEXT_LEN);
    }
}

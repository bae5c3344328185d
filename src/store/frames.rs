//! The log entry envelope: its format version, and the frames of the
//! commands it carries (and of their replies).
//!
//! Each command (and each reply) is its own frame, so one that cannot be
//! decoded fails alone instead of taking the whole batch with it. A framed
//! payload starts with a NUL byte, which JSON text never does, so a payload
//! holding one plain JSON command (written by earlier builds) is told apart
//! by its first byte.
//!
//! Layout: `0x00 'B' <format>`, then for each frame a big-endian `u32`
//! length and that many bytes. The first three bytes stay the same in every
//! format; what follows them may change with the format. Entries written
//! before formats existed have `0x01` there, and are format 1.
//!
//! The format version says how the whole entry is to be read: the envelope
//! and the encoding of the commands in it. A build reads the formats from
//! [`OLDEST_FORMAT`] to [`NEWEST_FORMAT`]; an entry of any other format is
//! not decoded at all (apply halts on it, see `apply`).

use std::ops::RangeInclusive;

/// The first log entry format: JSON commands (`command::Command`) in
/// length-prefixed frames.
pub const FORMAT_V1: u32 = 1;
/// Format 2: the same envelope and JSON frames, and the DHCP lease commands
/// (`Command::DhcpOffer` and the others), which a format-1 build cannot
/// decode. Lease documents gained `subnet` and `hostname` (written only by
/// those commands: the generic API no longer writes leases).
pub const FORMAT_V2: u32 = 2;
/// The oldest format this build still writes and reads.
pub const OLDEST_FORMAT: u32 = FORMAT_V1;
/// The newest format this build writes and reads. Raise it (and teach
/// `apply` the new one) whenever an entry written by this build could be
/// read differently, or refused, by a build before it: a new command, a new
/// field in one, or an object field the model starts to accept.
pub const NEWEST_FORMAT: u32 = FORMAT_V2;

/// The formats this build reads.
pub const fn readable_formats() -> RangeInclusive<u32> {
    OLDEST_FORMAT..=NEWEST_FORMAT
}

const MAGIC: &[u8; 2] = b"\x00B";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("malformed entry envelope: {0}")]
    Malformed(&'static str),
    /// The envelope names a format this build does not read.
    #[error("log entry format {found} (this build reads {oldest} to {newest})")]
    UnknownFormat {
        found: u32,
        oldest: u32,
        newest: u32,
    },
}

/// Whether `payload` is a framed entry (as opposed to one JSON command).
pub fn is_framed(payload: &[u8]) -> bool {
    payload.starts_with(MAGIC)
}

/// The format an entry's envelope names, if it is framed.
pub fn format_of(payload: &[u8]) -> Option<u32> {
    payload
        .strip_prefix(MAGIC.as_slice())
        .and_then(|rest| rest.first())
        .map(|&v| u32::from(v))
}

/// Frames `parts` into one payload of `format`.
pub fn encode<T: AsRef<[u8]>>(format: u32, parts: &[T]) -> Result<Vec<u8>, FrameError> {
    let version = u8::try_from(format).map_err(|_| FrameError::Malformed("format over 255"))?;
    let total: usize = parts.iter().map(|p| p.as_ref().len() + 4).sum();
    let mut out = Vec::with_capacity(MAGIC.len() + 1 + total);
    out.extend_from_slice(MAGIC);
    out.push(version);
    for part in parts {
        let part = part.as_ref();
        let len =
            u32::try_from(part.len()).map_err(|_| FrameError::Malformed("frame over 4 GiB"))?;
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(part);
    }
    Ok(out)
}

/// Splits a framed payload into its format and frames, borrowing from it.
/// An entry of a format outside `readable` is refused before anything else
/// of it is read.
pub fn decode(
    payload: &[u8],
    readable: RangeInclusive<u32>,
) -> Result<(u32, Vec<&[u8]>), FrameError> {
    let rest = payload
        .strip_prefix(MAGIC.as_slice())
        .ok_or(FrameError::Malformed("no envelope header"))?;
    let (&version, mut rest) = rest
        .split_first()
        .ok_or(FrameError::Malformed("no format version"))?;
    let format = u32::from(version);
    if !readable.contains(&format) {
        return Err(FrameError::UnknownFormat {
            found: format,
            oldest: *readable.start(),
            newest: *readable.end(),
        });
    }
    let mut frames = Vec::new();
    while !rest.is_empty() {
        let (len, tail) = rest
            .split_first_chunk::<4>()
            .ok_or(FrameError::Malformed("truncated frame length"))?;
        let len = u32::from_be_bytes(*len) as usize;
        if tail.len() < len {
            return Err(FrameError::Malformed("frame longer than the payload"));
        }
        let (frame, tail) = tail.split_at(len);
        frames.push(frame);
        rest = tail;
    }
    Ok((format, frames))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_records_default_to_the_first_format() {
        assert_eq!(crate::cluster::state::FIRST_LOG_FORMAT, FORMAT_V1);
    }

    #[test]
    fn frames_round_trip() {
        let parts: Vec<&[u8]> = vec![b"{\"a\":1}", b"", b"xyz"];
        let payload = encode(FORMAT_V1, &parts).unwrap();
        assert!(is_framed(&payload));
        assert_eq!(format_of(&payload), Some(FORMAT_V1));
        assert!(!is_framed(b"{\"op\":\"create\"}"));
        assert_eq!(
            decode(&payload, readable_formats()).unwrap(),
            (FORMAT_V1, parts)
        );
        let empty = encode::<&[u8]>(FORMAT_V1, &[]).unwrap();
        assert_eq!(decode(&empty, readable_formats()).unwrap().1.len(), 0);
    }

    #[test]
    fn entries_written_before_formats_existed_are_format_1() {
        // The envelope as earlier builds wrote it, byte for byte.
        let legacy = b"\x00B\x01\x00\x00\x00\x02{}";
        assert_eq!(
            decode(legacy, readable_formats()).unwrap(),
            (1, vec![&b"{}"[..]])
        );
    }

    #[test]
    fn a_format_outside_the_readable_range_is_not_read() {
        let v2 = encode(2, &[b"{}"]).unwrap();
        assert_eq!(
            decode(&v2, 1..=1),
            Err(FrameError::UnknownFormat {
                found: 2,
                oldest: 1,
                newest: 1
            })
        );
        // A build that reads format 2 reads it.
        assert_eq!(decode(&v2, 1..=2).unwrap().0, 2);
        let v0 = b"\x00B\x00";
        assert!(matches!(
            decode(v0, 1..=2),
            Err(FrameError::UnknownFormat { found: 0, .. })
        ));
    }

    #[test]
    fn garbage_envelopes_are_refused() {
        let payload = encode(FORMAT_V1, &[b"hello"]).unwrap();
        for bad in [
            &b""[..],
            b"{}",
            b"\x00B",
            &payload[..payload.len() - 1],
            &payload[..5],
            b"\x00B\x01\xff\xff\xff\xff",
        ] {
            assert!(
                matches!(
                    decode(bad, readable_formats()),
                    Err(FrameError::Malformed(_))
                ),
                "{bad:?}"
            );
        }
    }
}

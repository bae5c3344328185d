//! The group-commit envelope: many commands in one log entry, each encoded on
//! its own, and their replies likewise.
//!
//! Each command (and each reply) is its own frame, so one that cannot be
//! decoded fails alone instead of taking the whole batch with it. A framed
//! payload starts with a NUL byte, which JSON text never does, so a payload
//! holding one plain JSON command is told apart by its first byte.
//!
//! Layout: `0x00 'B' 0x01`, then for each frame a big-endian `u32` length and
//! that many bytes.

const MAGIC: &[u8; 3] = b"\x00B\x01";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed batch envelope: {0}")]
pub struct FrameError(&'static str);

/// Whether `payload` is a framed batch (as opposed to one JSON command).
pub fn is_framed(payload: &[u8]) -> bool {
    payload.starts_with(MAGIC)
}

/// Frames `parts` into one payload.
pub fn encode<T: AsRef<[u8]>>(parts: &[T]) -> Result<Vec<u8>, FrameError> {
    let total: usize = parts.iter().map(|p| p.as_ref().len() + 4).sum();
    let mut out = Vec::with_capacity(MAGIC.len() + total);
    out.extend_from_slice(MAGIC);
    for part in parts {
        let part = part.as_ref();
        let len = u32::try_from(part.len()).map_err(|_| FrameError("frame over 4 GiB"))?;
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(part);
    }
    Ok(out)
}

/// Splits a framed payload into its frames, borrowing from it.
pub fn decode(payload: &[u8]) -> Result<Vec<&[u8]>, FrameError> {
    let mut rest = payload
        .strip_prefix(MAGIC.as_slice())
        .ok_or(FrameError("no envelope header"))?;
    let mut frames = Vec::new();
    while !rest.is_empty() {
        let (len, tail) = rest
            .split_first_chunk::<4>()
            .ok_or(FrameError("truncated frame length"))?;
        let len = u32::from_be_bytes(*len) as usize;
        if tail.len() < len {
            return Err(FrameError("frame longer than the payload"));
        }
        let (frame, tail) = tail.split_at(len);
        frames.push(frame);
        rest = tail;
    }
    Ok(frames)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let parts: Vec<&[u8]> = vec![b"{\"a\":1}", b"", b"xyz"];
        let payload = encode(&parts).unwrap();
        assert!(is_framed(&payload));
        assert!(!is_framed(b"{\"op\":\"create\"}"));
        assert_eq!(decode(&payload).unwrap(), parts);
        assert_eq!(decode(&encode::<&[u8]>(&[]).unwrap()).unwrap().len(), 0);
    }

    #[test]
    fn garbage_envelopes_are_refused() {
        let payload = encode(&[b"hello"]).unwrap();
        for bad in [
            &b""[..],
            b"{}",
            b"\x00B",
            &payload[..payload.len() - 1],
            &payload[..5],
            b"\x00B\x01\xff\xff\xff\xff",
        ] {
            assert!(decode(bad).is_err(), "{bad:?}");
        }
    }
}

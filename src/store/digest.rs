//! The state digest: one value that two replicas share exactly when their
//! application state is the same, maintained by apply as it writes.
//!
//! The digest is the sum, modulo 2^256, of SHA-256(cf, key, value) over every
//! live key of the application's column families. A sum does not depend on
//! the order of the writes (nor on how entries were grouped into batches),
//! and each put or delete changes it by subtracting the old pair's hash and
//! adding the new one's, so it costs a read and a hash per write and never a
//! scan. It is stored in `meta` with the log index it belongs to, in the
//! same batch as the writes it covers; snapshots carry it with the rest of
//! `meta`. State written before digests existed gets one recomputation, the
//! first time apply finds none.
//!
//! It is a check between replicas of one cluster, not an authenticator:
//! anyone who can write the state can make any digest.

use cradle_raft::{StoreError as RaftError, Txn};

use super::keys::{decode_u64, ALL_CFS, CF_META, META_DIGEST};

/// The sum, as a big-endian 256-bit number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StateDigest([u8; 32]);

impl StateDigest {
    fn add(&mut self, other: &[u8; 32]) {
        let mut carry = 0u16;
        for i in (0..32).rev() {
            let sum = u16::from(self.0[i]) + u16::from(other[i]) + carry;
            self.0[i] = sum as u8;
            carry = sum >> 8;
        }
    }

    fn sub(&mut self, other: &[u8; 32]) {
        let mut borrow = 0i16;
        for i in (0..32).rev() {
            let mut diff = i16::from(self.0[i]) - i16::from(other[i]) - borrow;
            borrow = 0;
            if diff < 0 {
                diff += 256;
                borrow = 1;
            }
            self.0[i] = diff as u8;
        }
    }

    /// Accounts for `cf`/`key` going from `old` to `new` (`None`: absent).
    pub fn change(&mut self, cf: &str, key: &[u8], old: Option<&[u8]>, new: Option<&[u8]>) {
        if counted(cf, key) {
            if let Some(old) = old {
                self.sub(&pair_hash(cf, key, old));
            }
            if let Some(new) = new {
                self.add(&pair_hash(cf, key, new));
            }
        }
    }

    pub fn to_hex(self) -> String {
        hex::encode(self.0)
    }
}

/// Whether a key is part of the digest: everything in the application's
/// column families but the digest itself.
fn counted(cf: &str, key: &[u8]) -> bool {
    !(cf == CF_META && key == META_DIGEST)
}

fn pair_hash(cf: &str, key: &[u8], value: &[u8]) -> [u8; 32] {
    use sha2::{Digest as _, Sha256};
    let mut hasher = Sha256::new();
    // Lengths first, so no two (cf, key, value) triples hash the same bytes.
    hasher.update((cf.len() as u64).to_be_bytes());
    hasher.update(cf.as_bytes());
    hasher.update((key.len() as u64).to_be_bytes());
    hasher.update(key);
    hasher.update(value);
    hasher.finalize().into()
}

/// The digest and the log index of the last entry it covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DigestRecord {
    pub log_index: u64,
    pub digest: StateDigest,
}

impl DigestRecord {
    pub fn encode(&self) -> [u8; 40] {
        let mut out = [0u8; 40];
        out[..8].copy_from_slice(&self.log_index.to_be_bytes());
        out[8..].copy_from_slice(&self.digest.0);
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != 40 {
            return None;
        }
        let log_index = decode_u64(&bytes[..8])?;
        let mut digest = [0u8; 32];
        digest.copy_from_slice(&bytes[8..]);
        Some(DigestRecord {
            log_index,
            digest: StateDigest(digest),
        })
    }
}

/// The digest of the state as `txn` would leave it, from scratch. Reads
/// every key: only for state that has no maintained digest yet.
pub fn recompute(txn: &Txn<'_>) -> Result<StateDigest, RaftError> {
    let mut digest = StateDigest::default();
    for cf in ALL_CFS {
        txn.for_each(cf, |key, value| digest.change(cf, key, None, Some(value)))?;
    }
    Ok(digest)
}

/// The digest as `txn` holds it; recomputed when there is none (state
/// written before digests, or a snapshot from such a node).
pub fn load(txn: &Txn<'_>) -> Result<StateDigest, RaftError> {
    match txn
        .get(CF_META, META_DIGEST)?
        .as_deref()
        .and_then(DigestRecord::decode)
    {
        Some(record) => Ok(record.digest),
        None => recompute(txn),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sum_does_not_depend_on_order_and_undoes_exactly() {
        let pairs: Vec<(&str, &[u8], &[u8])> = vec![
            ("objects", b"machines/a", b"{}"),
            ("index", b"x\0y", b""),
            ("events", b"\0\0\0\0\0\0\0\x01", b"{\"r\":1}"),
        ];
        let mut forward = StateDigest::default();
        for (cf, k, v) in &pairs {
            forward.change(cf, k, None, Some(v));
        }
        let mut backward = StateDigest::default();
        for (cf, k, v) in pairs.iter().rev() {
            backward.change(cf, k, None, Some(v));
        }
        assert_eq!(forward, backward);
        assert_ne!(forward, StateDigest::default());
        // A value change then back, and deletes, land where they started.
        let before = forward;
        forward.change("objects", b"machines/a", Some(b"{}"), Some(b"{\"x\":1}"));
        assert_ne!(forward, before);
        forward.change("objects", b"machines/a", Some(b"{\"x\":1}"), Some(b"{}"));
        assert_eq!(forward, before);
        for (cf, k, v) in &pairs {
            forward.change(cf, k, Some(v), None);
        }
        assert_eq!(forward, StateDigest::default());
        // The same bytes split differently between key and value differ.
        let mut a = StateDigest::default();
        a.change("objects", b"ab", None, Some(b"c"));
        let mut b = StateDigest::default();
        b.change("objects", b"a", None, Some(b"bc"));
        assert_ne!(a, b);
        // The digest's own record is not counted.
        let mut own = StateDigest::default();
        own.change(CF_META, META_DIGEST, None, Some(b"anything"));
        assert_eq!(own, StateDigest::default());
    }

    #[test]
    fn carries_and_borrows_cross_bytes() {
        let mut d = StateDigest([0xff; 32]);
        let mut one = [0u8; 32];
        one[31] = 1;
        d.add(&one);
        assert_eq!(d, StateDigest::default());
        d.sub(&one);
        assert_eq!(d, StateDigest([0xff; 32]));
        let record = DigestRecord {
            log_index: 7,
            digest: d,
        };
        assert_eq!(DigestRecord::decode(&record.encode()), Some(record));
        assert_eq!(DigestRecord::decode(b"short"), None);
    }
}

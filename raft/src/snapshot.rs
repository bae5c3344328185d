//! The snapshot file format: what a snapshot looks like on disk and on the
//! wire (the leader streams the file's bytes in chunks).
//!
//! ```text
//! magic      8 bytes  "CRDLSNP1"
//! header     u32 BE length + JSON: snapshot meta, column family names
//! records    repeated: u8 1, u16 BE cf index, u32 BE key length, key,
//!                      u32 BE value length, value
//! end        u8 0, u64 BE record count
//! checksum   32 bytes: SHA-256 of everything before it
//! ```
//!
//! Files are read and written with blocking I/O; callers run this module on
//! blocking threads.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;

use openraft::SnapshotMeta;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::store::StoreError;
use crate::types::{NodeId, NodeInfo};

const MAGIC: &[u8; 8] = b"CRDLSNP1";
const TAG_RECORD: u8 = 1;
const TAG_END: u8 = 0;
const CHECKSUM_LEN: u64 = 32;
/// Bounds on what a reader accepts, so a corrupt length cannot make it
/// allocate without limit.
const MAX_HEADER_BYTES: u32 = 16 << 20;
const MAX_KEY_BYTES: u32 = 1 << 20;
const MAX_VALUE_BYTES: u32 = 256 << 20;

/// What the snapshot covers, and how to read its records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SnapshotHeader {
    pub meta: SnapshotMeta<NodeId, NodeInfo>,
    /// Column family names; records refer to them by position.
    pub cfs: Vec<String>,
}

fn corrupt(detail: impl ToString) -> StoreError {
    StoreError::Corrupt {
        what: "snapshot file",
        detail: detail.to_string(),
    }
}

/// Passes writes through while hashing them.
struct HashingWriter<W: Write> {
    inner: W,
    hasher: Sha256,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Writes one snapshot file. Call [`SnapshotWriter::finish`] to seal it;
/// a file that was not finished fails verification.
pub(crate) struct SnapshotWriter {
    out: HashingWriter<BufWriter<File>>,
    cf_count: usize,
    records: u64,
}

impl SnapshotWriter {
    pub(crate) fn create(path: &Path, header: &SnapshotHeader) -> Result<Self, StoreError> {
        if header.cfs.len() > usize::from(u16::MAX) {
            return Err(corrupt("too many column families"));
        }
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        let mut out = HashingWriter {
            inner: BufWriter::with_capacity(1 << 20, file),
            hasher: Sha256::new(),
        };
        let header_json = serde_json::to_vec(header).map_err(corrupt)?;
        let header_len = u32::try_from(header_json.len())
            .ok()
            .filter(|len| *len <= MAX_HEADER_BYTES)
            .ok_or_else(|| corrupt("header too large"))?;
        out.write_all(MAGIC)?;
        out.write_all(&header_len.to_be_bytes())?;
        out.write_all(&header_json)?;
        Ok(SnapshotWriter {
            out,
            cf_count: header.cfs.len(),
            records: 0,
        })
    }

    pub(crate) fn record(
        &mut self,
        cf_index: usize,
        key: &[u8],
        value: &[u8],
    ) -> Result<(), StoreError> {
        let cf = u16::try_from(cf_index)
            .ok()
            .filter(|_| cf_index < self.cf_count)
            .ok_or_else(|| corrupt(format!("column family index {cf_index} out of range")))?;
        let key_len = u32::try_from(key.len())
            .ok()
            .filter(|len| *len <= MAX_KEY_BYTES)
            .ok_or_else(|| corrupt(format!("key of {} bytes is too large", key.len())))?;
        let value_len = u32::try_from(value.len())
            .ok()
            .filter(|len| *len <= MAX_VALUE_BYTES)
            .ok_or_else(|| corrupt(format!("value of {} bytes is too large", value.len())))?;
        self.out.write_all(&[TAG_RECORD])?;
        self.out.write_all(&cf.to_be_bytes())?;
        self.out.write_all(&key_len.to_be_bytes())?;
        self.out.write_all(key)?;
        self.out.write_all(&value_len.to_be_bytes())?;
        self.out.write_all(value)?;
        self.records += 1;
        Ok(())
    }

    /// Writes the end marker and checksum and fsyncs the file.
    pub(crate) fn finish(mut self) -> Result<u64, StoreError> {
        self.out.write_all(&[TAG_END])?;
        self.out.write_all(&self.records.to_be_bytes())?;
        let checksum = self.out.hasher.finalize_reset();
        let mut file = self
            .out
            .inner
            .into_inner()
            .map_err(|e| StoreError::Io(e.into_error()))?;
        file.write_all(&checksum)?;
        file.sync_all()?;
        Ok(self.records)
    }
}

/// Checks the file's checksum and returns its header. Reads the whole file.
pub(crate) fn verify(path: &Path) -> Result<SnapshotHeader, StoreError> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    if len < MAGIC.len() as u64 + 4 + CHECKSUM_LEN {
        return Err(corrupt(format!("file of {len} bytes is too short")));
    }
    let body_len = len - CHECKSUM_LEN;
    let mut hasher = Sha256::new();
    let mut body = BufReader::with_capacity(1 << 20, (&mut file).take(body_len));
    io::copy(&mut body, &mut HashSink(&mut hasher))?;
    let mut stored = [0u8; CHECKSUM_LEN as usize];
    file.seek(SeekFrom::Start(body_len))?;
    file.read_exact(&mut stored)?;
    if hasher.finalize().as_slice() != stored {
        return Err(corrupt("checksum mismatch"));
    }
    let reader = SnapshotReader::open(path)?;
    Ok(reader.header)
}

struct HashSink<'a>(&'a mut Sha256);

impl Write for HashSink<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// One key/value of one column family.
pub(crate) struct Record {
    pub cf_index: usize,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
}

/// Streams the records of a snapshot file. Call [`verify`] first: the reader
/// checks structure, not the checksum.
pub(crate) struct SnapshotReader {
    input: BufReader<File>,
    pub header: SnapshotHeader,
    records: u64,
    done: bool,
}

impl SnapshotReader {
    pub(crate) fn open(path: &Path) -> Result<Self, StoreError> {
        let mut input = BufReader::with_capacity(1 << 20, File::open(path)?);
        let mut magic = [0u8; 8];
        input.read_exact(&mut magic)?;
        if &magic != MAGIC {
            return Err(corrupt("bad magic"));
        }
        let header_len = read_u32(&mut input)?;
        if header_len > MAX_HEADER_BYTES {
            return Err(corrupt(format!("header length {header_len}")));
        }
        let header_json = read_vec(&mut input, header_len)?;
        let header: SnapshotHeader = serde_json::from_slice(&header_json).map_err(corrupt)?;
        Ok(SnapshotReader {
            input,
            header,
            records: 0,
            done: false,
        })
    }

    /// The next record, or None after the end marker (whose count is
    /// checked).
    pub(crate) fn next_record(&mut self) -> Result<Option<Record>, StoreError> {
        if self.done {
            return Ok(None);
        }
        let mut tag = [0u8; 1];
        self.input.read_exact(&mut tag)?;
        match tag[0] {
            TAG_END => {
                let mut count = [0u8; 8];
                self.input.read_exact(&mut count)?;
                let count = u64::from_be_bytes(count);
                if count != self.records {
                    return Err(corrupt(format!(
                        "end marker says {count} records, read {}",
                        self.records
                    )));
                }
                self.done = true;
                Ok(None)
            }
            TAG_RECORD => {
                let mut cf = [0u8; 2];
                self.input.read_exact(&mut cf)?;
                let cf_index = usize::from(u16::from_be_bytes(cf));
                if cf_index >= self.header.cfs.len() {
                    return Err(corrupt(format!(
                        "column family index {cf_index} out of range"
                    )));
                }
                let key_len = read_u32(&mut self.input)?;
                if key_len > MAX_KEY_BYTES {
                    return Err(corrupt(format!("key length {key_len}")));
                }
                let key = read_vec(&mut self.input, key_len)?;
                let value_len = read_u32(&mut self.input)?;
                if value_len > MAX_VALUE_BYTES {
                    return Err(corrupt(format!("value length {value_len}")));
                }
                let value = read_vec(&mut self.input, value_len)?;
                self.records += 1;
                Ok(Some(Record {
                    cf_index,
                    key,
                    value,
                }))
            }
            other => Err(corrupt(format!("unknown record tag {other}"))),
        }
    }
}

fn read_u32(input: &mut impl Read) -> Result<u32, StoreError> {
    let mut bytes = [0u8; 4];
    input.read_exact(&mut bytes)?;
    Ok(u32::from_be_bytes(bytes))
}

fn read_vec(input: &mut impl Read, len: u32) -> Result<Vec<u8>, StoreError> {
    let mut buf = vec![0u8; len as usize];
    input.read_exact(&mut buf)?;
    Ok(buf)
}

/// Makes a rename or unlink in `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)?.sync_all()?;
    Ok(())
}

/// Copies `src` (from its start) to a new file at `dst` and fsyncs it.
pub(crate) fn copy_to(src: &mut File, dst: &Path) -> Result<u64, StoreError> {
    src.seek(SeekFrom::Start(0))?;
    let mut out = File::create(dst)?;
    let copied = io::copy(&mut BufReader::with_capacity(1 << 20, src), &mut out)?;
    out.sync_all()?;
    Ok(copied)
}

/// Removes a file if it exists.
pub(crate) fn remove_if_exists(path: &Path) -> Result<(), StoreError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use openraft::testing::log_id;
    use openraft::StoredMembership;

    use super::*;

    fn header() -> SnapshotHeader {
        SnapshotHeader {
            meta: SnapshotMeta {
                last_log_id: Some(log_id(2, 1, 77)),
                last_membership: StoredMembership::default(),
                snapshot_id: "snap-77".into(),
            },
            cfs: vec!["a".into(), "b".into()],
        }
    }

    fn write_sample(path: &Path) {
        let mut w = SnapshotWriter::create(path, &header()).unwrap();
        w.record(0, b"k1", b"v1").unwrap();
        w.record(1, b"", b"").unwrap();
        w.record(0, b"k2", &[7u8; 5000]).unwrap();
        assert!(
            w.record(2, b"x", b"y").is_err(),
            "unknown column family index"
        );
        assert_eq!(w.finish().unwrap(), 3);
    }

    #[test]
    fn round_trips_records_and_header() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.snap");
        write_sample(&path);
        assert_eq!(verify(&path).unwrap(), header());
        let mut r = SnapshotReader::open(&path).unwrap();
        let mut got = Vec::new();
        while let Some(rec) = r.next_record().unwrap() {
            got.push((rec.cf_index, rec.key, rec.value.len()));
        }
        assert_eq!(
            got,
            vec![
                (0, b"k1".to_vec(), 2),
                (1, Vec::new(), 0),
                (0, b"k2".to_vec(), 5000)
            ]
        );
        assert!(r.next_record().unwrap().is_none());
    }

    #[test]
    fn detects_corruption_and_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.snap");
        write_sample(&path);
        let good = fs::read(&path).unwrap();

        // Any flipped byte fails the checksum.
        for at in [0, 20, good.len() / 2, good.len() - 40, good.len() - 1] {
            let mut bad = good.clone();
            bad[at] ^= 1;
            fs::write(&path, &bad).unwrap();
            assert!(verify(&path).is_err(), "flip at {at} not detected");
        }
        // A truncated file fails, however short.
        for len in [0, 10, good.len() / 2, good.len() - 1] {
            fs::write(&path, &good[..len]).unwrap();
            assert!(verify(&path).is_err(), "truncation to {len} not detected");
        }
        // An unfinished file (no end marker) fails even where structure is
        // all that is checked.
        let mut w = SnapshotWriter::create(&path, &header()).unwrap();
        w.record(0, b"k", b"v").unwrap();
        drop(w);
        assert!(verify(&path).is_err());
        let mut r = SnapshotReader::open(&path).unwrap();
        assert!(r.next_record().unwrap().is_some());
        assert!(r.next_record().is_err());
    }
}

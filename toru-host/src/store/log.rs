//! The write-ahead log, `<database file>.wal` (for example `toru.redb.wal`).
//!
//! Each committed batch of writes is one record, appended and `fdatasync`ed before the batch is
//! acknowledged. redb holds the same batches in commits that are not yet durable, and a
//! checkpoint (a durable redb commit) makes them durable there; after a checkpoint the log starts
//! over at offset 0. The file is never truncated: it is reused (recycled) from generation to
//! generation, and grown with zeros ahead of the records, so an append overwrites bytes the file
//! already has and its `fdatasync` need not update the file's size.
//!
//! ```text
//! +-----------+-----------+-----------+------------------------+
//! | len: u32  | crc: u32  | lsn: u64  | payload: len bytes     |   one record (little-endian)
//! +-----------+-----------+-----------+------------------------+
//! crc = CRC-32 of salt (u64) ‖ lsn ‖ len ‖ payload
//! ```
//!
//! The *salt* is a random number chosen at every checkpoint and stored in redb by that
//! checkpoint, with the *base*, the sequence number (lsn) of the generation's first record. A
//! record is valid only under the current salt, so what an earlier generation left further in
//! the file is never mistaken for a record, and a record's bytes cannot be forged by whoever
//! controls a value without knowing the salt. Records follow each other with consecutive lsns
//! from the base; the first record that fails its checksum ends the log (a torn tail: the batch
//! being written when the process died, never acknowledged). A valid record of the current
//! generation found after that point means the log is damaged in the middle, and recovery
//! refuses rather than silently drop what followed.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Bytes before a record's payload.
pub(crate) const HEADER: usize = 16;
/// The file grows by at least this much at a time, with zeros.
const GROW_BY: u64 = 1 << 20;
/// The longest payload a record may have.
pub(crate) const MAX_PAYLOAD: usize = u32::MAX as usize - HEADER;

/// The log file's path for the database at `db`: the same name with `.wal` added.
pub(crate) fn path_for(db: &Path) -> PathBuf {
    let mut name = db.file_name().unwrap_or_default().to_os_string();
    name.push(".wal");
    db.with_file_name(name)
}

/// Opens the log file for reading and writing; `Ok(None)` when it does not exist.
pub(crate) fn open_file(path: &Path) -> io::Result<Option<File>> {
    match OpenOptions::new().read(true).write(true).open(path) {
        Ok(file) => {
            if !file.metadata()?.is_file() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "not a regular file",
                ));
            }
            Ok(Some(file))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Creates the log file, readable and writable by its owner only, and makes its name durable
/// in the folder (an `fsync` of the folder), so that a power cut cannot lose the file with the
/// writes it will hold.
pub(crate) fn create_file(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()?;
    Ok(file)
}

fn checksum(salt: u64, lsn: u64, len: u32, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&salt.to_le_bytes());
    h.update(&lsn.to_le_bytes());
    h.update(&len.to_le_bytes());
    h.update(payload);
    h.finalize()
}

/// The log, open for appending records of the current generation.
pub(crate) struct Log {
    file: File,
    path: PathBuf,
    salt: u64,
    next_lsn: u64,
    /// Where the next record goes.
    end: u64,
    /// The file's length: bytes written before (records or zeros) that appends overwrite.
    len: u64,
    zeros: Vec<u8>,
    /// Makes the next append write half its record and fail, as a full disk would.
    #[cfg(test)]
    pub(crate) fail_next_append: bool,
}

impl Log {
    /// Takes over `file`, whose current generation is `salt` starting at `base`, to append
    /// records from the start of the file once [`Log::restart`] has named the next generation.
    pub(crate) fn new(file: File, path: PathBuf, salt: u64, base: u64) -> io::Result<Log> {
        let len = file.metadata()?.len();
        Ok(Log {
            file,
            path,
            salt,
            next_lsn: base,
            end: 0,
            len,
            zeros: Vec::new(),
            #[cfg(test)]
            fail_next_append: false,
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The sequence number the next record gets.
    pub(crate) fn next_lsn(&self) -> u64 {
        self.next_lsn
    }

    /// Bytes of records in the current generation.
    pub(crate) fn bytes(&self) -> u64 {
        self.end
    }

    /// Starts a new generation: records from now on are valid under `salt` alone, the first one
    /// numbered `base`, written from the start of the file. Call only once the checkpoint that
    /// names this generation is durable. A file grown past `keep` bytes (by a huge batch) is cut
    /// back to that.
    pub(crate) fn restart(&mut self, salt: u64, base: u64, keep: u64) -> io::Result<()> {
        self.salt = salt;
        self.next_lsn = base;
        self.end = 0;
        let keep = keep.div_ceil(GROW_BY) * GROW_BY;
        if self.len > keep {
            self.file.set_len(keep)?;
            self.len = keep;
        }
        Ok(())
    }

    /// Appends one record and makes it durable; returns its lsn. `record` is the record with
    /// [`HEADER`] bytes of room at its start, which this fills in.
    ///
    /// After an error the file may hold part of the record: append nothing more to this
    /// generation (a checkpoint and [`Log::restart`] start a clean one).
    pub(crate) fn append(&mut self, record: &mut [u8]) -> io::Result<u64> {
        let payload_len = record.len() - HEADER;
        let len = u32::try_from(payload_len)
            .ok()
            .filter(|_| payload_len <= MAX_PAYLOAD)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "record too large"))?;
        let lsn = self.next_lsn;
        let crc = checksum(self.salt, lsn, len, &record[HEADER..]);
        record[0..4].copy_from_slice(&len.to_le_bytes());
        record[4..8].copy_from_slice(&crc.to_le_bytes());
        record[8..16].copy_from_slice(&lsn.to_le_bytes());
        let end = self.end + record.len() as u64;
        if end > self.len {
            self.grow(end)?;
        }
        #[cfg(test)]
        if std::mem::take(&mut self.fail_next_append) {
            self.file
                .write_all_at(&record[..record.len() / 2], self.end)?;
            return Err(io::Error::other("injected failure"));
        }
        self.file.write_all_at(record, self.end)?;
        self.file.sync_data()?;
        self.end = end;
        self.next_lsn += 1;
        Ok(lsn)
    }

    /// Extends the file with zeros to at least `to` bytes (made durable by the next sync).
    fn grow(&mut self, to: u64) -> io::Result<()> {
        let target = to.div_ceil(GROW_BY) * GROW_BY;
        if self.zeros.is_empty() {
            self.zeros = vec![0; GROW_BY as usize];
        }
        while self.len < target {
            let n = (target - self.len).min(GROW_BY) as usize;
            self.file.write_all_at(&self.zeros[..n], self.len)?;
            self.len += n as u64;
        }
        Ok(())
    }
}

/// One valid record found by [`read`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Record {
    pub(crate) lsn: u64,
    pub(crate) payload: Vec<u8>,
}

/// Why the log could not be read back.
#[derive(Debug)]
pub(crate) enum ReadError {
    Io(io::Error),
    /// A valid record follows one that is not: the log is damaged, not just cut short.
    Damaged {
        offset: u64,
        next_valid: u64,
    },
    /// A valid record has the wrong sequence number.
    OutOfOrder {
        offset: u64,
        expected: u64,
        found: u64,
    },
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Io(e) => write!(f, "{e}"),
            ReadError::Damaged { offset, next_valid } => write!(
                f,
                "the record at byte {offset} is damaged, but a valid record follows at byte \
                 {next_valid}"
            ),
            ReadError::OutOfOrder {
                offset,
                expected,
                found,
            } => write!(
                f,
                "the record at byte {offset} is number {found}, expected {expected}"
            ),
        }
    }
}

/// Reads the records of the generation `salt` starting at `base`, calling `f` on each in order,
/// until the first one that is missing or invalid (a torn tail ends the log quietly).
pub(crate) fn read<E: From<ReadError>>(
    file: &File,
    salt: u64,
    base: u64,
    mut f: impl FnMut(Record) -> Result<(), E>,
) -> Result<(), E> {
    let file_len = file.metadata().map_err(ReadError::Io)?.len();
    let mut offset = 0;
    let mut expected = base;
    loop {
        match record_at(file, file_len, offset, salt).map_err(ReadError::Io)? {
            Some(record) => {
                if record.lsn != expected {
                    return Err(ReadError::OutOfOrder {
                        offset,
                        expected,
                        found: record.lsn,
                    }
                    .into());
                }
                offset += (HEADER + record.payload.len()) as u64;
                expected += 1;
                f(record)?;
            }
            None => {
                return match find_valid_after(file, file_len, offset, salt, expected)? {
                    Some(next_valid) => Err(ReadError::Damaged { offset, next_valid }.into()),
                    None => Ok(()),
                };
            }
        }
    }
}

/// The valid record at `offset` under `salt`, if there is one.
fn record_at(file: &File, file_len: u64, offset: u64, salt: u64) -> io::Result<Option<Record>> {
    let Some(header) = header_at(file, file_len, offset)? else {
        return Ok(None);
    };
    let (len, crc, lsn) = header;
    // The length is checked against the file before anything is allocated for it.
    if offset + (HEADER as u64) + u64::from(len) > file_len {
        return Ok(None);
    }
    let mut payload = vec![0; len as usize];
    file.read_exact_at(&mut payload, offset + HEADER as u64)?;
    if checksum(salt, lsn, len, &payload) != crc {
        return Ok(None);
    }
    Ok(Some(Record { lsn, payload }))
}

fn header_at(file: &File, file_len: u64, offset: u64) -> io::Result<Option<(u32, u32, u64)>> {
    if offset + HEADER as u64 > file_len {
        return Ok(None);
    }
    let mut h = [0; HEADER];
    file.read_exact_at(&mut h, offset)?;
    let word = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
    let lsn = u64::from_le_bytes(h[8..16].try_into().expect("8 bytes"));
    Ok(Some((word(0), word(4), lsn)))
}

/// Looks past an invalid record for any valid record of this generation that would come later
/// (an lsn of `expected` or more). Only records of this generation can pass the checksum; the
/// scan looks at every byte offset, but computes a checksum only where the header is plausible.
fn find_valid_after(
    file: &File,
    file_len: u64,
    from: u64,
    salt: u64,
    expected: u64,
) -> Result<Option<u64>, ReadError> {
    const CHUNK: usize = 1 << 20;
    let mut buf = vec![0; CHUNK + HEADER];
    let mut start = from + 1;
    while start + (HEADER as u64) <= file_len {
        let n = ((file_len - start) as usize).min(buf.len());
        file.read_exact_at(&mut buf[..n], start)
            .map_err(ReadError::Io)?;
        for i in 0..n.saturating_sub(HEADER - 1).min(CHUNK) {
            let lsn = u64::from_le_bytes(buf[i + 8..i + 16].try_into().expect("8 bytes"));
            // Later records of this generation: at most one per header's worth of bytes.
            if lsn < expected || lsn - expected > file_len / HEADER as u64 {
                continue;
            }
            let offset = start + i as u64;
            if record_at(file, file_len, offset, salt)
                .map_err(ReadError::Io)?
                .is_some()
            {
                return Ok(Some(offset));
            }
        }
        start += CHUNK as u64;
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(payload: &[u8]) -> Vec<u8> {
        let mut r = vec![0; HEADER];
        r.extend_from_slice(payload);
        r
    }

    fn read_all(file: &File, salt: u64, base: u64) -> Result<Vec<Record>, ReadError> {
        let mut out = Vec::new();
        read(file, salt, base, |r| {
            out.push(r);
            Ok::<_, ReadError>(())
        })?;
        Ok(out)
    }

    fn new_log(dir: &tempfile::TempDir, salt: u64, base: u64) -> (Log, File) {
        let path = path_for(&dir.path().join("toru.redb"));
        let file = create_file(&path).unwrap();
        let reader = file.try_clone().unwrap();
        (Log::new(file, path, salt, base).unwrap(), reader)
    }

    #[test]
    fn the_log_sits_beside_the_database_and_is_private() {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            path_for(Path::new("/data/toru.redb")),
            Path::new("/data/toru.redb.wal")
        );
        let dir = tempfile::TempDir::new().unwrap();
        let (log, _) = new_log(&dir, 1, 1);
        let mode = std::fs::metadata(log.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(open_file(&dir.path().join("missing")).unwrap().is_none());
        assert!(open_file(dir.path()).is_err(), "a folder is not a log");
    }

    #[test]
    fn records_read_back_in_order_and_the_file_grows_with_zeros() {
        let dir = tempfile::TempDir::new().unwrap();
        let (mut log, reader) = new_log(&dir, 7, 10);
        assert_eq!(log.append(&mut record(b"one")).unwrap(), 10);
        assert_eq!(log.append(&mut record(b"")).unwrap(), 11);
        assert_eq!(log.append(&mut record(&[9; 5000])).unwrap(), 12);
        assert_eq!(log.bytes(), 3 * HEADER as u64 + 5003);
        assert_eq!(reader.metadata().unwrap().len(), GROW_BY);
        let records = read_all(&reader, 7, 10).unwrap();
        assert_eq!(
            records.iter().map(|r| r.lsn).collect::<Vec<_>>(),
            [10, 11, 12]
        );
        assert_eq!(records[0].payload, b"one");
        assert_eq!(records[2].payload, [9; 5000]);
        // Another salt or base sees nothing of it, or an error.
        assert!(read_all(&reader, 8, 10).unwrap().is_empty());
        assert!(matches!(
            read_all(&reader, 7, 11),
            Err(ReadError::OutOfOrder {
                expected: 11,
                found: 10,
                ..
            })
        ));
    }

    #[test]
    fn a_new_generation_overwrites_the_old_and_ignores_what_is_left_of_it() {
        let dir = tempfile::TempDir::new().unwrap();
        let (mut log, reader) = new_log(&dir, 1, 1);
        for i in 0..10u8 {
            log.append(&mut record(&[i; 100])).unwrap();
        }
        log.restart(2, 11, GROW_BY).unwrap();
        assert!(read_all(&reader, 2, 11).unwrap().is_empty());
        log.append(&mut record(b"new")).unwrap();
        let records = read_all(&reader, 2, 11).unwrap();
        assert_eq!(
            records,
            [Record {
                lsn: 11,
                payload: b"new".to_vec()
            }]
        );
    }

    #[test]
    fn a_torn_last_record_ends_the_log_wherever_it_is_cut() {
        let dir = tempfile::TempDir::new().unwrap();
        let (mut log, reader) = new_log(&dir, 3, 1);
        log.append(&mut record(b"first")).unwrap();
        log.append(&mut record(b"second")).unwrap();
        let complete = log.bytes();
        log.append(&mut record(b"the third, torn")).unwrap();
        let end = log.bytes();
        let path = log.path().to_path_buf();
        let bytes = std::fs::read(&path).unwrap();
        // Every cut inside the third record, as a crash would leave it: the bytes after the cut
        // are zeros (never written) or what the cut record would have had, damaged.
        for cut in complete..end {
            for tail in [0u8, 0xff] {
                let mut torn = bytes.clone();
                for b in &mut torn[cut as usize..end as usize] {
                    *b = tail;
                }
                std::fs::write(&path, &torn).unwrap();
                let records = read_all(&reader, 3, 1).unwrap_or_else(|e| panic!("cut {cut}: {e}"));
                assert_eq!(
                    records.iter().map(|r| r.lsn).collect::<Vec<_>>(),
                    [1, 2],
                    "cut at {cut}"
                );
            }
        }
        // A file cut short (no zeros after the records) reads the same.
        std::fs::write(&path, &bytes[..complete as usize + 5]).unwrap();
        assert_eq!(read_all(&reader, 3, 1).unwrap().len(), 2);
    }

    #[test]
    fn a_damaged_record_followed_by_valid_ones_is_reported() {
        let dir = tempfile::TempDir::new().unwrap();
        let (mut log, reader) = new_log(&dir, 5, 1);
        log.append(&mut record(b"first")).unwrap();
        let second = log.bytes();
        log.append(&mut record(b"second")).unwrap();
        log.append(&mut record(b"third")).unwrap();
        let path = log.path().to_path_buf();
        let mut bytes = std::fs::read(&path).unwrap();
        // Damage the second record's payload, then separately its length.
        for at in [second as usize + HEADER + 2, second as usize + 1] {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x40;
            std::fs::write(&path, &damaged).unwrap();
            match read_all(&reader, 5, 1) {
                Err(ReadError::Damaged { offset, .. }) => assert_eq!(offset, second),
                other => panic!("damage at {at}: {other:?}"),
            }
        }
        // Damage in the last record alone is a torn tail.
        let last = bytes.len() - 1 - bytes.iter().rev().position(|&b| b != 0).unwrap();
        bytes[last] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(read_all(&reader, 5, 1).unwrap().len(), 2);
    }

    #[test]
    fn a_huge_length_is_not_allocated() {
        let dir = tempfile::TempDir::new().unwrap();
        let (mut log, reader) = new_log(&dir, 5, 1);
        log.append(&mut record(b"first")).unwrap();
        let path = log.path().to_path_buf();
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        std::fs::write(&path, &bytes).unwrap();
        assert!(read_all(&reader, 5, 1).unwrap().is_empty());
    }
}

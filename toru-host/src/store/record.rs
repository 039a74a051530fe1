//! What a log record holds: the changes one batch made, in order, each as redb will apply it
//! again on recovery.
//!
//! Only changes that happened are logged, as their effect: a write refused by the quota is not
//! logged, and a replayed set is not checked against the quota again (the quota may have been
//! lowered since; the write was acknowledged). Every change is a blind write (it sets or removes
//! entries whatever was there before), so replaying a record on a state that already has it
//! changes nothing.
//!
//! ```text
//! change  = tag: u8, fields
//! 1 kv set        plugin: str, key: str, value: str
//! 2 kv delete     plugin: str, key: str
//! 3 setting       key: str, value: str
//! 4 event         plugin: str, time_ms: u64, seq: u64, json: str
//! 5 cleanup       older_than_ms: u64
//! str = len: u32, UTF-8 bytes; integers little-endian
//! ```

/// One change, borrowed from the batch being logged or from the record being replayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Change<'a> {
    KvSet {
        plugin: &'a str,
        key: &'a str,
        value: &'a str,
    },
    KvDelete {
        plugin: &'a str,
        key: &'a str,
    },
    Setting {
        key: &'a str,
        value: &'a str,
    },
    Event {
        plugin: &'a str,
        time_ms: u64,
        seq: u64,
        json: &'a str,
    },
    CleanupEvents {
        older_than_ms: u64,
    },
}

const KV_SET: u8 = 1;
const KV_DELETE: u8 = 2;
const SETTING: u8 = 3;
const EVENT: u8 = 4;
const CLEANUP_EVENTS: u8 = 5;

impl Change<'_> {
    /// Appends this change's encoding to `out`.
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        fn str(out: &mut Vec<u8>, s: &str) {
            // Keys and values are far below 4 GiB (the log refuses a record that is not).
            out.extend_from_slice(&(s.len() as u32).to_le_bytes());
            out.extend_from_slice(s.as_bytes());
        }
        match *self {
            Change::KvSet { plugin, key, value } => {
                out.push(KV_SET);
                str(out, plugin);
                str(out, key);
                str(out, value);
            }
            Change::KvDelete { plugin, key } => {
                out.push(KV_DELETE);
                str(out, plugin);
                str(out, key);
            }
            Change::Setting { key, value } => {
                out.push(SETTING);
                str(out, key);
                str(out, value);
            }
            Change::Event {
                plugin,
                time_ms,
                seq,
                json,
            } => {
                out.push(EVENT);
                str(out, plugin);
                out.extend_from_slice(&time_ms.to_le_bytes());
                out.extend_from_slice(&seq.to_le_bytes());
                str(out, json);
            }
            Change::CleanupEvents { older_than_ms } => {
                out.push(CLEANUP_EVENTS);
                out.extend_from_slice(&older_than_ms.to_le_bytes());
            }
        }
    }
}

/// A record's payload that is not a list of changes.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("change {index} of the record is malformed: {what}")]
pub(crate) struct DecodeError {
    index: usize,
    what: &'static str,
}

/// The changes in `payload`, in order.
pub(crate) fn decode(payload: &[u8]) -> Changes<'_> {
    Changes {
        rest: payload,
        index: 0,
    }
}

/// The iterator returned by [`decode`]; it ends after the first error.
pub(crate) struct Changes<'a> {
    rest: &'a [u8],
    index: usize,
}

impl<'a> Iterator for Changes<'a> {
    type Item = Result<Change<'a>, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let index = self.index;
        self.index += 1;
        let result = self.change().map_err(|what| DecodeError { index, what });
        if result.is_err() {
            self.rest = &[];
        }
        Some(result)
    }
}

impl<'a> Changes<'a> {
    fn change(&mut self) -> Result<Change<'a>, &'static str> {
        let tag = self.take(1)?[0];
        Ok(match tag {
            KV_SET => Change::KvSet {
                plugin: self.str()?,
                key: self.str()?,
                value: self.str()?,
            },
            KV_DELETE => Change::KvDelete {
                plugin: self.str()?,
                key: self.str()?,
            },
            SETTING => Change::Setting {
                key: self.str()?,
                value: self.str()?,
            },
            EVENT => Change::Event {
                plugin: self.str()?,
                time_ms: self.u64()?,
                seq: self.u64()?,
                json: self.str()?,
            },
            CLEANUP_EVENTS => Change::CleanupEvents {
                older_than_ms: self.u64()?,
            },
            _ => return Err("unknown change"),
        })
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], &'static str> {
        if self.rest.len() < n {
            return Err("truncated");
        }
        let (head, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(head)
    }

    fn u64(&mut self) -> Result<u64, &'static str> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    fn str(&mut self) -> Result<&'a str, &'static str> {
        let len = u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes"));
        std::str::from_utf8(self.take(len as usize)?).map_err(|_| "text is not UTF-8")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Vec<Change<'static>> {
        vec![
            Change::KvSet {
                plugin: "p",
                key: "k",
                value: "välue",
            },
            Change::KvSet {
                plugin: "p",
                key: "empty",
                value: "",
            },
            Change::KvDelete {
                plugin: "p",
                key: "k",
            },
            Change::Setting {
                key: "admin_secret_hash",
                value: "$argon2id$x",
            },
            Change::Event {
                plugin: "p",
                time_ms: 1_763_767_236_110,
                seq: 3,
                json: "{\"kind\":\"started\"}",
            },
            Change::CleanupEvents {
                older_than_ms: u64::MAX,
            },
        ]
    }

    #[test]
    fn every_change_round_trips() {
        let mut buf = Vec::new();
        for change in all() {
            change.encode(&mut buf);
        }
        let decoded: Vec<_> = decode(&buf).collect::<Result<_, _>>().unwrap();
        assert_eq!(decoded, all());
        assert_eq!(decode(&[]).count(), 0);
    }

    #[test]
    fn malformed_payloads_are_errors_not_panics() {
        let mut buf = Vec::new();
        for change in all() {
            change.encode(&mut buf);
        }
        // Every truncation of a valid payload, and every single-byte change of it, decodes to
        // changes or to an error; nothing panics or reads out of bounds.
        for cut in 0..buf.len() {
            let _ = decode(&buf[..cut]).count();
        }
        for i in 0..buf.len() {
            for b in [0x00, 0x7f, 0x80, 0xff] {
                let mut bad = buf.clone();
                bad[i] = b;
                let _ = decode(&bad).count();
            }
        }
        assert_eq!(
            decode(&[9]).next(),
            Some(Err(DecodeError {
                index: 0,
                what: "unknown change"
            }))
        );
        assert_eq!(
            decode(&[KV_DELETE, 255, 255, 255, 255]).next(),
            Some(Err(DecodeError {
                index: 0,
                what: "truncated"
            }))
        );
        let bad_utf8 = [SETTING, 1, 0, 0, 0, 0xff, 0, 0, 0, 0];
        assert_eq!(
            decode(&bad_utf8).next(),
            Some(Err(DecodeError {
                index: 0,
                what: "text is not UTF-8"
            }))
        );
    }
}

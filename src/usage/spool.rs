//! SPEC section 11's local spool: every counted record is appended to a
//! segment file in `usage.spool_dir` as it is counted and fsynced at least
//! every second; a segment leaves the folder only after the batch made of it
//! has committed in Postgres.
//!
//! Segments are named `<seq>-<id>.jsonl`: `seq` orders them (batches go out
//! in order), `id` (random, fixed when the segment is created) is the batch
//! id Postgres records, so a segment sent again after a lost commit — or
//! after a crash between commit and removal — is applied once. A line that
//! is not a whole record (a crash mid-write) is skipped when read.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use super::aggregate::Record;

/// Why a record did not reach the spool.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("usage spool {dir} is full ({bytes} bytes, limit {limit})")]
    Full { dir: String, bytes: u64, limit: u64 },
    #[error("usage spool {dir}: {source}")]
    Io {
        dir: String,
        #[source]
        source: std::io::Error,
    },
}

/// A segment waiting for its batch to commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub path: PathBuf,
    pub seq: u64,
    /// The batch id.
    pub id: String,
}

#[derive(Debug)]
struct Info {
    path: PathBuf,
    id: String,
    bytes: u64,
    /// When its first record was written (the file's time for segments
    /// found at start).
    since: SystemTime,
}

#[derive(Debug)]
struct Open {
    seq: u64,
    file: File,
}

#[derive(Debug)]
struct Inner {
    segments: BTreeMap<u64, Info>,
    current: Option<Open>,
    next_seq: u64,
    /// Written since the last fsync.
    dirty: bool,
    /// A segment was created since the last fsync of the folder.
    new_file: bool,
    bytes: u64,
}

#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    limit: u64,
    inner: Mutex<Inner>,
}

impl Spool {
    /// Opens (creating it if needed) the spool in `dir`, taking up whatever
    /// segments an earlier run left there.
    pub fn open(dir: &Path, limit: u64) -> Result<Spool, SpoolError> {
        let io = |source| SpoolError::Io {
            dir: dir.display().to_string(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let mut segments = BTreeMap::new();
        let mut bytes = 0;
        for entry in std::fs::read_dir(dir).map_err(io)? {
            let entry = entry.map_err(io)?;
            let name = entry.file_name();
            let Some((seq, id)) = parse_name(&name.to_string_lossy()) else {
                continue;
            };
            let meta = entry.metadata().map_err(io)?;
            bytes += meta.len();
            segments.insert(
                seq,
                Info {
                    path: entry.path(),
                    id,
                    bytes: meta.len(),
                    since: meta.modified().unwrap_or_else(|_| SystemTime::now()),
                },
            );
        }
        let next_seq = segments.keys().next_back().map_or(1, |last| last + 1);
        Ok(Spool {
            dir: dir.to_owned(),
            limit,
            inner: Mutex::new(Inner {
                segments,
                current: None,
                next_seq,
                dirty: false,
                new_file: false,
                bytes,
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn io(&self, source: std::io::Error) -> SpoolError {
        SpoolError::Io {
            dir: self.dir.display().to_string(),
            source,
        }
    }

    /// Appends one record (one `write` of one line).
    pub fn append(&self, record: &Record) -> Result<(), SpoolError> {
        let mut line = serde_json::to_vec(record).map_err(|e| self.io(e.into()))?;
        line.push(b'\n');
        let mut inner = self.lock();
        let len = line.len() as u64;
        if inner.bytes + len > self.limit {
            return Err(SpoolError::Full {
                dir: self.dir.display().to_string(),
                bytes: inner.bytes,
                limit: self.limit,
            });
        }
        if inner.current.is_none() {
            let seq = inner.next_seq;
            let id = uuid::Uuid::new_v4().simple().to_string();
            let path = self.dir.join(format!("{seq:016}-{id}.jsonl"));
            let file = OpenOptions::new()
                .create_new(true)
                .append(true)
                .open(&path)
                .map_err(|e| self.io(e))?;
            inner.next_seq += 1;
            inner.new_file = true;
            inner.segments.insert(
                seq,
                Info {
                    path,
                    id,
                    bytes: 0,
                    since: SystemTime::now(),
                },
            );
            inner.current = Some(Open { seq, file });
        }
        let Inner {
            current, segments, ..
        } = &mut *inner;
        let Some(open) = current.as_mut() else {
            return Ok(());
        };
        open.file.write_all(&line).map_err(|e| self.io(e))?;
        if let Some(info) = segments.get_mut(&open.seq) {
            info.bytes += len;
        }
        inner.bytes += len;
        inner.dirty = true;
        Ok(())
    }

    /// fsyncs what was written since the last call (and the folder, when a
    /// segment was created). The lock is not held during the fsync.
    pub fn sync(&self) -> Result<(), SpoolError> {
        let (file, new_file) = {
            let mut inner = self.lock();
            if !inner.dirty && !inner.new_file {
                return Ok(());
            }
            let file = match (&inner.current, inner.dirty) {
                (Some(open), true) => Some(open.file.try_clone().map_err(|e| self.io(e))?),
                _ => None,
            };
            inner.dirty = false;
            (file, std::mem::replace(&mut inner.new_file, false))
        };
        if let Some(file) = file {
            file.sync_data().map_err(|e| self.io(e))?;
        }
        if new_file {
            File::open(&self.dir)
                .and_then(|dir| dir.sync_all())
                .map_err(|e| self.io(e))?;
        }
        Ok(())
    }

    /// Closes the segment being written (fsynced), so that it can be sent;
    /// the next record starts a new one.
    pub fn rotate(&self) -> Result<(), SpoolError> {
        self.sync()?;
        let mut inner = self.lock();
        if inner.dirty {
            // Written between the sync above and the lock: sync under the lock.
            if let Some(open) = &inner.current {
                open.file.sync_data().map_err(|e| self.io(e))?;
            }
            inner.dirty = false;
        }
        inner.current = None;
        Ok(())
    }

    /// Closed segments, oldest first.
    pub fn pending(&self) -> Vec<Segment> {
        let inner = self.lock();
        let current = inner.current.as_ref().map(|o| o.seq);
        inner
            .segments
            .iter()
            .filter(|(seq, _)| Some(**seq) != current)
            .map(|(seq, info)| Segment {
                path: info.path.clone(),
                seq: *seq,
                id: info.id.clone(),
            })
            .collect()
    }

    /// The records of a segment; lines that are not whole records are
    /// skipped and counted.
    pub fn read(&self, segment: &Segment) -> Result<(Vec<Record>, usize), SpoolError> {
        let text = std::fs::read(&segment.path).map_err(|e| self.io(e))?;
        let mut records = Vec::new();
        let mut bad = 0;
        for line in text.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            match serde_json::from_slice::<Record>(line) {
                Ok(record) => records.push(record),
                Err(_) => bad += 1,
            }
        }
        Ok((records, bad))
    }

    /// Removes a segment whose batch has committed.
    pub fn remove(&self, segment: &Segment) -> Result<(), SpoolError> {
        match std::fs::remove_file(&segment.path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(self.io(e)),
        }
        let mut inner = self.lock();
        if let Some(info) = inner.segments.remove(&segment.seq) {
            inner.bytes = inner.bytes.saturating_sub(info.bytes);
        }
        Ok(())
    }

    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        self.lock().bytes
    }

    /// When the oldest record still held was written.
    pub fn oldest(&self) -> Option<SystemTime> {
        let inner = self.lock();
        inner
            .segments
            .values()
            .filter(|info| info.bytes > 0)
            .map(|info| info.since)
            .min()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

fn parse_name(name: &str) -> Option<(u64, String)> {
    let stem = name.strip_suffix(".jsonl")?;
    let (seq, id) = stem.split_once('-')?;
    let valid_id = !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric());
    Some((seq.parse().ok()?, id.to_owned())).filter(|_| valid_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(tokens: u64) -> Record {
        Record {
            org: "o".into(),
            user: "u".into(),
            date: "2026-12-01".into(),
            conv: Some("c".into()),
            endpoint: None,
            model: None,
            messages: 0,
            tokens,
            cost_nanos: 0,
        }
    }

    #[test]
    fn records_survive_a_restart_and_leave_only_when_removed() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 1 << 20).unwrap();
        spool.append(&record(1)).unwrap();
        spool.append(&record(2)).unwrap();
        spool.sync().unwrap();
        assert!(
            spool.pending().is_empty(),
            "the open segment is not sent yet"
        );
        spool.rotate().unwrap();
        spool.append(&record(3)).unwrap();
        drop(spool);

        // A crash left half a line at the end of the second segment.
        let reopened = Spool::open(dir.path(), 1 << 20).unwrap();
        let pending = reopened.pending();
        assert_eq!(pending.len(), 2);
        let mut torn = OpenOptions::new()
            .append(true)
            .open(&pending[1].path)
            .unwrap();
        torn.write_all(b"{\"org\":\"o\",\"us").unwrap();
        let (first, bad) = reopened.read(&pending[0]).unwrap();
        assert_eq!((first.iter().map(|r| r.tokens).sum::<u64>(), bad), (3, 0));
        let (second, bad) = reopened.read(&pending[1]).unwrap();
        assert_eq!((second.len(), bad), (1, 1));
        assert!(reopened.oldest().is_some());

        reopened.append(&record(4)).unwrap();
        reopened.rotate().unwrap();
        let all = reopened.pending();
        assert_eq!(all.len(), 3);
        assert!(all[2].seq > all[1].seq, "new segments come after old ones");
        for segment in &all {
            reopened.remove(segment).unwrap();
        }
        assert!(reopened.pending().is_empty());
        assert_eq!(reopened.bytes(), 0);
        assert_eq!(reopened.oldest(), None);
    }

    #[test]
    fn a_full_spool_refuses_records() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 200).unwrap();
        spool.append(&record(1)).unwrap();
        let mut refused = false;
        for n in 0..10 {
            if let Err(SpoolError::Full { .. }) = spool.append(&record(n)) {
                refused = true;
                break;
            }
        }
        assert!(refused);
        assert!(spool.bytes() <= 200);
    }
}

//! The state directory: group states (and what holds them) in `state.json`, the audit log in
//! `events.jsonl`.
//!
//! A drained group must stay drained across a restart or a `kill -9`, so a change is
//! acknowledged only once it is on disk: the new state is written to a fresh temp file in the
//! same directory, fsynced, renamed over `state.json`, and the directory is fsynced. A failed
//! fsync is never retried on the same file (after a failed fsync the kernel may have dropped the
//! dirty pages and a second fsync can report success for data that is gone): the temp file is
//! removed and the change is refused. A state file that exists but cannot be read or parsed
//! stops hashgate with an error naming it: starting as if no drain existed would send work to
//! machines whose power belongs to someone else.
//!
//! The writes are synchronous: they happen on operator actions and transitions (a few a minute at
//! most), in the controller's task, never on a miner's path.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::events::{EVENTS_IN_MEMORY, Event};
use super::state::GroupRecord;

/// The state file's format version.
const STATE_VERSION: u32 = 1;

/// Why the state directory could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The directory cannot be created or written.
    #[error("state.dir {path}: {source}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A state file exists but cannot be read.
    #[error(
        "{path}: cannot read the state file: {source} (fix or move it; hashgate will not start as if no drain existed)"
    )]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A state file exists but does not parse.
    #[error(
        "{path}: corrupt state file: {message} (fix or move it; hashgate will not start as if no drain existed)"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong, with the line.
        message: String,
    },
    /// A write did not reach the disk; the change was not applied.
    #[error("{path}: cannot save the state: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Everything that survives a restart.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PersistedState {
    /// Format version.
    #[serde(default)]
    pub version: u32,
    /// Group states by name (groups never drained may be absent: they are active).
    #[serde(default)]
    pub groups: BTreeMap<String, GroupRecord>,
    /// Windows added through the API (config windows live in the config).
    #[serde(default)]
    pub windows: Vec<crate::config::windows::WindowSpec>,
    /// Per `window/group`: the span (its start, unix ms) whose drain was made, so a group an
    /// operator resumed by force is not drained again by the same span.
    #[serde(default)]
    pub window_acted: BTreeMap<String, u64>,
    /// Capacity requests, active and recently ended.
    #[serde(default)]
    pub capacity: Vec<super::capacity::Capacity>,
    /// First answers to POSTs with an `Idempotency-Key`.
    #[serde(default)]
    pub idempotency: BTreeMap<String, StoredAnswer>,
    /// Counter for window and capacity ids.
    #[serde(default)]
    pub next_id: u64,
}

/// The first answer to a POST with an `Idempotency-Key`: a scheduler's retry gets it again
/// instead of a second drain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredAnswer {
    /// Order of arrival (the oldest are forgotten first).
    pub seq: u64,
    /// What was asked (endpoint and body): a key reused for another request is refused.
    #[serde(default)]
    pub fingerprint: String,
    /// Unix ms it was stored (keys are forgotten after a day: schedulers retry within minutes).
    #[serde(default)]
    pub at_ms: u64,
    /// HTTP status.
    pub status: u16,
    /// JSON body.
    pub body: serde_json::Value,
}

/// The state directory.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    state_path: PathBuf,
    events_path: PathBuf,
    /// Temp files get a fresh name each time: a file whose fsync failed is never reused.
    writes: u64,
}

impl Store {
    /// Opens (creating) the directory and reads what it holds: the state and the newest events.
    pub fn open(dir: &Path) -> Result<(Store, PersistedState, Vec<Event>), StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Dir {
            path: dir.to_owned(),
            source,
        })?;
        let store = Store {
            dir: dir.to_owned(),
            state_path: dir.join("state.json"),
            events_path: dir.join("events.jsonl"),
            writes: 0,
        };
        store.check_writable()?;
        store.remove_stale_temp_files();
        let state = store.read_state()?;
        let events = store.read_events()?;
        Ok((store, state, events))
    }

    /// The state file's path.
    pub fn state_path(&self) -> &Path {
        &self.state_path
    }

    /// The directory (hooks' workers files go in a subdirectory).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn check_writable(&self) -> Result<(), StoreError> {
        let probe = self.dir.join(".hashgate-write-test");
        let result = File::create(&probe).and_then(|mut f| f.write_all(b"ok"));
        let _ = std::fs::remove_file(&probe);
        result.map_err(|source| StoreError::Dir {
            path: self.dir.clone(),
            source,
        })
    }

    /// Temp files of writes a crash interrupted (never renamed: the state file is the old one).
    fn remove_stale_temp_files(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            if entry
                .file_name()
                .to_string_lossy()
                .starts_with(".state.json.")
            {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }

    fn read_state(&self) -> Result<PersistedState, StoreError> {
        let text = match std::fs::read_to_string(&self.state_path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Ok(PersistedState {
                    version: STATE_VERSION,
                    ..PersistedState::default()
                });
            }
            Err(source) => {
                return Err(StoreError::Read {
                    path: self.state_path.clone(),
                    source,
                });
            }
        };
        let state: PersistedState =
            serde_json::from_str(&text).map_err(|e| StoreError::Corrupt {
                path: self.state_path.clone(),
                message: e.to_string(),
            })?;
        if state.version != STATE_VERSION {
            return Err(StoreError::Corrupt {
                path: self.state_path.clone(),
                message: format!(
                    "format version {} is not {STATE_VERSION} (written by another hashgate?)",
                    state.version
                ),
            });
        }
        Ok(state)
    }

    /// Writes the whole state atomically; Ok only once it is durable. It runs on the caller's
    /// thread (the controller's worker): `block_in_place` was measured to add about 1 ms to a
    /// 200-miner drain (BENCHMARKS.md), so moving it off the workers waits for an async commit.
    pub fn save(&mut self, state: &PersistedState) -> Result<(), StoreError> {
        let state = PersistedState {
            version: STATE_VERSION,
            ..state.clone()
        };
        let mut text = serde_json::to_vec_pretty(&state).map_err(|e| StoreError::Write {
            path: self.state_path.clone(),
            source: std::io::Error::other(e),
        })?;
        text.push(b'\n');
        self.writes += 1;
        // pid, counter and a random part: a temp file a `kill -9` left behind (same pid in a
        // container) never collides with a new one.
        let temp = self.dir.join(format!(
            ".state.json.{}.{}.{:016x}",
            std::process::id(),
            self.writes,
            fastrand::u64(..)
        ));
        let result = write_durably(&temp, &text)
            .and_then(|()| std::fs::rename(&temp, &self.state_path))
            .and_then(|()| File::open(&self.dir)?.sync_all());
        if let Err(source) = result {
            let _ = std::fs::remove_file(&temp);
            return Err(StoreError::Write {
                path: self.state_path.clone(),
                source,
            });
        }
        Ok(())
    }

    /// Appends one event to the audit log, durably.
    pub fn append_event(&self, event: &Event) -> Result<(), StoreError> {
        let mut line = serde_json::to_vec(event).map_err(|e| StoreError::Write {
            path: self.events_path.clone(),
            source: std::io::Error::other(e),
        })?;
        line.push(b'\n');
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.events_path)
            .and_then(|mut file| {
                file.write_all(&line)?;
                file.sync_data()
            })
            .map_err(|source| StoreError::Write {
                path: self.events_path.clone(),
                source,
            })
    }

    /// The newest events of the log. A torn tail (a crash mid-append, or the zeros a power loss
    /// can leave) is cut off the file, so the next append starts on a line of its own. A bad
    /// line before the tail means the file was damaged otherwise: it is moved aside (kept as
    /// evidence, named in the log) and a new log starts; the drains themselves are in the state
    /// file, so mining safety does not depend on it.
    fn read_events(&self) -> Result<Vec<Event>, StoreError> {
        let bytes = match std::fs::read(&self.events_path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(StoreError::Read {
                    path: self.events_path.clone(),
                    source,
                });
            }
        };
        let mut events = std::collections::VecDeque::new();
        let mut offset = 0;
        let mut lines = bytes.split_inclusive(|b| *b == b'\n').peekable();
        while let Some(line) = lines.next() {
            let last = lines.peek().is_none();
            let parsed = std::str::from_utf8(line)
                .ok()
                .map(str::trim)
                .filter(|text| !text.is_empty())
                .map(serde_json::from_str::<Event>);
            match parsed {
                None if line.iter().all(|b| b.is_ascii_whitespace()) => {}
                Some(Ok(event)) if line.ends_with(b"\n") => {
                    if events.len() == EVENTS_IN_MEMORY {
                        events.pop_front();
                    }
                    events.push_back(event);
                }
                _ if last => {
                    tracing::warn!(path = %self.events_path.display(), bytes = line.len(), "cutting a torn last line off the event log");
                    self.truncate_events(offset)?;
                    break;
                }
                _ => {
                    let aside = self.events_path.with_extension(format!(
                        "jsonl.corrupt-{}",
                        crate::clock::unix_ms() / 1000
                    ));
                    tracing::error!(path = %self.events_path.display(), moved_to = %aside.display(), "event log damaged before its last line: moved aside, starting a new one");
                    std::fs::rename(&self.events_path, &aside).map_err(|source| {
                        StoreError::Write {
                            path: self.events_path.clone(),
                            source,
                        }
                    })?;
                    return Ok(Vec::new());
                }
            }
            offset += line.len();
        }
        Ok(events.into())
    }

    fn truncate_events(&self, length: usize) -> Result<(), StoreError> {
        OpenOptions::new()
            .write(true)
            .open(&self.events_path)
            .and_then(|file| {
                file.set_len(length as u64)?;
                file.sync_all()
            })
            .map_err(|source| StoreError::Write {
                path: self.events_path.clone(),
                source,
            })
    }
}

/// Creates `path` fresh, writes `bytes`, fsyncs.
fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut file = OpenOptions::new().write(true).create_new(true).open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::groups::state::{GroupRecord, GroupState};

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("hashgate-store-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn state_survives_a_reopen_and_no_temp_file_is_left() {
        let dir = temp_dir("roundtrip");
        let (mut store, state, events) = Store::open(&dir).unwrap();
        assert!(state.groups.is_empty() && events.is_empty());
        let mut state = state;
        state.groups.insert(
            "c07".into(),
            GroupRecord {
                state: GroupState::Drained,
                since: 7,
                ..GroupRecord::default()
            },
        );
        store.save(&state).unwrap();
        store.save(&state).unwrap();
        let (_, again, _) = Store::open(&dir).unwrap();
        assert_eq!(again.groups["c07"].state, GroupState::Drained);
        let leftovers: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn a_corrupt_state_file_is_an_error_naming_it() {
        let dir = temp_dir("corrupt");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("state.json"),
            "{\"version\":1,\"groups\":{\"c07\":",
        )
        .unwrap();
        let error = Store::open(&dir).unwrap_err().to_string();
        assert!(error.contains("state.json"), "{error}");
        assert!(error.contains("corrupt"), "{error}");
    }

    #[test]
    fn a_torn_tail_is_cut_off_and_a_damaged_log_is_moved_aside() {
        let dir = temp_dir("events");
        let (store, _, _) = Store::open(&dir).unwrap();
        let event = Event::example(1);
        store.append_event(&event).unwrap();
        let path = dir.join("events.jsonl");
        let good = std::fs::read_to_string(&path).unwrap();
        // A crash mid-append, then power loss zeros.
        std::fs::write(&path, format!("{good}{{\"seq\":2,\"ti\0\0\0")).unwrap();
        let (store, _, events) = Store::open(&dir).unwrap();
        assert_eq!(events, vec![event.clone()]);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            good,
            "the tail is cut off"
        );
        // The next append starts on its own line and reads back.
        store.append_event(&Event::example(2)).unwrap();
        let (_, _, events) = Store::open(&dir).unwrap();
        assert_eq!(events.len(), 2);
        // Damage before the last line: the file is moved aside, hashgate starts.
        std::fs::write(&path, format!("garbage\n{good}")).unwrap();
        let (_, _, events) = Store::open(&dir).unwrap();
        assert!(events.is_empty());
        let aside = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .any(|e| e.file_name().to_string_lossy().contains("corrupt"));
        assert!(aside, "the damaged log is kept");
    }
}

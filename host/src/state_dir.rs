//! A VM's device state kept on disk under `--state-dir`: a daemon started
//! again after a crash or for an upgrade carries on where the last one
//! stopped.
//!
//! One SQLite database per VM, in WAL mode with `synchronous=NORMAL`: a
//! commit is one append to the log, which outlives the daemon's death
//! (`kill -9`); a commit cut short by it is rolled back when the database
//! is opened again, so what loads is always a state that was committed. A
//! host crash may lose the last commits, which the guest's memory does not
//! outlive either.
//!
//! Records, each a postcard value (see [`crate::state`] for the types):
//! the device-wide fields and where each queue stands; one row per context
//! (timeline, loss, jobs without their command streams); one per buffer;
//! one per chain the device holds (a `SUBMIT` and its command stream); and
//! answers recorded before they are written to a used ring.

use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

use crate::state::{BoState, ContextState, EventState, ParkedChain, RingState};

/// The layout this daemon writes (`PRAGMA user_version`).
const LAYOUT: i64 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {e}")]
    Sql { path: PathBuf, e: rusqlite::Error },
    #[error("{path}: state layout {found}, this daemon reads {LAYOUT}")]
    Layout { path: PathBuf, found: i64 },
    #[error("{path}: a malformed record: {e}")]
    Record { path: PathBuf, e: postcard::Error },
}

/// Where a queue stands: the next chain the device takes, and the next
/// used entry it writes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuePos {
    pub next_avail: u16,
    pub next_used: u16,
}

/// The device-wide fields.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    pub features: u64,
    pub next_ctx: u32,
    pub next_token: u64,
    pub events: Vec<EventState>,
    /// Where the rings are (from their first start on this connection).
    pub rings: Vec<RingState>,
    pub queues: Vec<QueuePos>,
}

/// A `SUBMIT` the device holds: its chain and its command stream, or its
/// answer once the job is over and the answer not written yet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Chain {
    pub parked: ParkedChain,
    /// The job's out-fence.
    pub fence: u64,
    pub cmd: Vec<u8>,
    /// The encoded `SUBMIT` response, once there is one.
    pub answer: Option<Vec<u8>>,
}

/// An answer the device writes into queue `queue` as used entry `pos`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Intent {
    pub queue: u16,
    pub pos: u16,
    pub head: u16,
    pub write: Vec<(u64, u32)>,
    pub bytes: Vec<u8>,
}

/// One commit: what changed since the last.
#[derive(Debug, Default)]
pub struct Batch {
    /// Drop every record first (the device was reset).
    pub clear: bool,
    pub meta: Meta,
    /// `None`: the context is gone, with its buffers.
    pub contexts: Vec<(u32, Option<ContextState>)>,
    pub bos: Vec<((u32, u32), Option<BoState>)>,
    pub chains: Vec<(u64, Option<Chain>)>,
    pub intents: Vec<Intent>,
    /// Answers now in their used ring: `(queue, pos)`.
    pub written: Vec<(u16, u16)>,
}

/// What a store held.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded {
    pub meta: Meta,
    /// With their buffers, and their jobs' command streams where the chain
    /// is still held.
    pub contexts: Vec<ContextState>,
    pub chains: Vec<Chain>,
    /// In order of queue, then position.
    pub intents: Vec<Intent>,
}

pub struct Store {
    conn: Connection,
    path: PathBuf,
}

fn de<T: for<'a> Deserialize<'a>>(path: &Path, bytes: &[u8]) -> Result<T, StoreError> {
    postcard::from_bytes(bytes).map_err(|e| StoreError::Record {
        path: path.to_owned(),
        e,
    })
}

fn ser<T: Serialize>(v: &T) -> Vec<u8> {
    // Serializing into a Vec cannot fail for these types.
    postcard::to_allocvec(v).unwrap_or_default()
}

impl Store {
    /// Opens (or creates) the database at `path`.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let sql = |e| StoreError::Sql {
            path: path.to_owned(),
            e,
        };
        let conn = Connection::open(path).map_err(sql)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(sql)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(sql)?;
        let found: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(sql)?;
        if found == 0 {
            conn.execute_batch(
                "BEGIN;
                 CREATE TABLE meta (id INTEGER PRIMARY KEY CHECK (id = 0), value BLOB NOT NULL);
                 CREATE TABLE contexts (id INTEGER PRIMARY KEY, value BLOB NOT NULL);
                 CREATE TABLE bos (ctx INTEGER, handle INTEGER, value BLOB NOT NULL,
                                   PRIMARY KEY (ctx, handle));
                 CREATE TABLE chains (token INTEGER PRIMARY KEY, value BLOB NOT NULL);
                 CREATE TABLE intents (queue INTEGER, pos INTEGER, value BLOB NOT NULL,
                                       PRIMARY KEY (queue, pos));
                 PRAGMA user_version = 1;
                 COMMIT;",
            )
            .map_err(sql)?;
        } else if found != LAYOUT {
            return Err(StoreError::Layout {
                path: path.to_owned(),
                found,
            });
        }
        Ok(Store {
            conn,
            path: path.to_owned(),
        })
    }

    fn sql(&self, e: rusqlite::Error) -> StoreError {
        StoreError::Sql {
            path: self.path.clone(),
            e,
        }
    }

    /// What the store holds, if anything.
    pub fn load(&self) -> Result<Option<Loaded>, StoreError> {
        let meta: Option<Vec<u8>> = self
            .conn
            .query_row("SELECT value FROM meta WHERE id = 0", [], |r| r.get(0))
            .optional()
            .map_err(|e| self.sql(e))?;
        let Some(meta) = meta else {
            return Ok(None);
        };
        let meta: Meta = de(&self.path, &meta)?;
        let rows = |q: &str| -> Result<Vec<Vec<u8>>, StoreError> {
            let mut st = self.conn.prepare(q).map_err(|e| self.sql(e))?;
            let it = st
                .query_map([], |r| r.get::<_, Vec<u8>>(0))
                .map_err(|e| self.sql(e))?;
            it.collect::<Result<_, _>>().map_err(|e| self.sql(e))
        };
        let chains: Vec<Chain> = rows("SELECT value FROM chains ORDER BY token")?
            .iter()
            .map(|b| de(&self.path, b))
            .collect::<Result<_, _>>()?;
        let mut contexts: Vec<ContextState> = rows("SELECT value FROM contexts ORDER BY id")?
            .iter()
            .map(|b| de(&self.path, b))
            .collect::<Result<_, _>>()?;
        let mut st = self
            .conn
            .prepare("SELECT ctx, value FROM bos ORDER BY ctx, handle")
            .map_err(|e| self.sql(e))?;
        let bos = st
            .query_map([], |r| Ok((r.get::<_, u32>(0)?, r.get::<_, Vec<u8>>(1)?)))
            .map_err(|e| self.sql(e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.sql(e))?;
        for (ctx, b) in bos {
            let bo: BoState = de(&self.path, &b)?;
            if let Some(c) = contexts.iter_mut().find(|c| c.id == ctx) {
                c.bos.push(bo);
            }
        }
        for c in &mut contexts {
            for j in &mut c.jobs {
                if let Some(ch) = chains.iter().find(|ch| ch.parked.token == j.token) {
                    j.cmd = ch.cmd.clone();
                }
            }
        }
        let intents = rows("SELECT value FROM intents ORDER BY queue, pos")?
            .iter()
            .map(|b| de(&self.path, b))
            .collect::<Result<_, _>>()?;
        Ok(Some(Loaded {
            meta,
            contexts,
            chains,
            intents,
        }))
    }

    /// Writes one batch as one transaction.
    pub fn commit(&mut self, b: &Batch) -> Result<(), StoreError> {
        let path = self.path.clone();
        let sql = |e| StoreError::Sql {
            path: path.clone(),
            e,
        };
        let tx = self.conn.transaction().map_err(sql)?;
        if b.clear {
            tx.execute_batch(
                "DELETE FROM contexts; DELETE FROM bos; DELETE FROM chains; DELETE FROM intents;",
            )
            .map_err(sql)?;
        }
        tx.execute(
            "INSERT OR REPLACE INTO meta (id, value) VALUES (0, ?1)",
            params![ser(&b.meta)],
        )
        .map_err(sql)?;
        for (id, c) in &b.contexts {
            match c {
                Some(c) => tx.execute(
                    "INSERT OR REPLACE INTO contexts (id, value) VALUES (?1, ?2)",
                    params![id, ser(c)],
                ),
                None => tx
                    .execute("DELETE FROM contexts WHERE id = ?1", params![id])
                    .and_then(|_| tx.execute("DELETE FROM bos WHERE ctx = ?1", params![id])),
            }
            .map_err(sql)?;
        }
        for ((ctx, h), bo) in &b.bos {
            match bo {
                Some(bo) => tx.execute(
                    "INSERT OR REPLACE INTO bos (ctx, handle, value) VALUES (?1, ?2, ?3)",
                    params![ctx, h, ser(bo)],
                ),
                None => tx.execute(
                    "DELETE FROM bos WHERE ctx = ?1 AND handle = ?2",
                    params![ctx, h],
                ),
            }
            .map_err(sql)?;
        }
        for (token, c) in &b.chains {
            // Tokens are below 2^63: one per chain taken.
            let token = *token as i64;
            match c {
                Some(c) => tx.execute(
                    "INSERT OR REPLACE INTO chains (token, value) VALUES (?1, ?2)",
                    params![token, ser(c)],
                ),
                None => tx.execute("DELETE FROM chains WHERE token = ?1", params![token]),
            }
            .map_err(sql)?;
        }
        for (q, pos) in &b.written {
            tx.execute(
                "DELETE FROM intents WHERE queue = ?1 AND pos = ?2",
                params![q, pos],
            )
            .map_err(sql)?;
        }
        for i in &b.intents {
            tx.execute(
                "INSERT OR REPLACE INTO intents (queue, pos, value) VALUES (?1, ?2, ?3)",
                params![i.queue, i.pos, ser(i)],
            )
            .map_err(sql)?;
        }
        tx.commit().map_err(sql)
    }

    /// Forgets everything: the VM is gone.
    pub fn clear(&mut self) -> Result<(), StoreError> {
        self.conn
            .execute_batch(
                "BEGIN; DELETE FROM meta; DELETE FROM contexts; DELETE FROM bos;
                 DELETE FROM chains; DELETE FROM intents; COMMIT;",
            )
            .map_err(|e| self.sql(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::JobState;

    fn dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "vaccel-store-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn ctx(id: u32, jobs: Vec<JobState>) -> ContextState {
        ContextState {
            id,
            priority: 1,
            next_bo: 3,
            last_submitted: 4,
            completed: 2,
            lost: None,
            bos: Vec::new(),
            jobs,
        }
    }

    fn job(token: u64) -> JobState {
        JobState {
            token,
            out_fence: 3 + token,
            bos: vec![(1, 1)],
            waits: Vec::new(),
            cmd: Vec::new(),
            doomed: None,
            ran: false,
        }
    }

    #[test]
    fn what_is_committed_loads_back_with_buffers_and_commands_in_place() {
        let path = dir().join("a.db");
        let _ = std::fs::remove_file(&path);
        let mut s = Store::open(&path).unwrap();
        assert_eq!(s.load().unwrap(), None);
        let bo = BoState {
            handle: 1,
            size: 4096,
            flags: 0,
            backing: Some(vec![(0x1000, 4096)]),
        };
        let chain = Chain {
            parked: ParkedChain {
                token: 7,
                head: 3,
                ctx: 5,
                write: vec![(0x8000, 32)],
            },
            fence: 10,
            cmd: vec![9; 40],
            answer: None,
        };
        s.commit(&Batch {
            meta: Meta {
                next_ctx: 6,
                queues: vec![QueuePos::default(); 3],
                ..Meta::default()
            },
            contexts: vec![(5, Some(ctx(5, vec![job(7)]))), (6, Some(ctx(6, vec![])))],
            bos: vec![((5, 1), Some(bo.clone()))],
            chains: vec![(7, Some(chain.clone()))],
            intents: vec![Intent {
                queue: 1,
                pos: 9,
                head: 2,
                write: vec![(0x9000, 32)],
                bytes: vec![1; 32],
            }],
            ..Batch::default()
        })
        .unwrap();
        // Context 6 goes, an answer is in its ring.
        s.commit(&Batch {
            meta: Meta {
                next_ctx: 7,
                ..Meta::default()
            },
            contexts: vec![(6, None)],
            written: vec![(1, 9)],
            ..Batch::default()
        })
        .unwrap();
        drop(s);
        let l = Store::open(&path).unwrap().load().unwrap().unwrap();
        assert_eq!(l.meta.next_ctx, 7);
        assert_eq!(l.contexts.len(), 1);
        assert_eq!(l.contexts[0].bos, vec![bo]);
        assert_eq!(l.contexts[0].jobs[0].cmd, chain.cmd);
        assert_eq!(l.chains, vec![chain]);
        assert!(l.intents.is_empty());
    }

    #[test]
    fn an_uncommitted_transaction_is_not_loaded() {
        let path = dir().join("b.db");
        let _ = std::fs::remove_file(&path);
        let mut s = Store::open(&path).unwrap();
        s.commit(&Batch {
            meta: Meta {
                next_ctx: 2,
                ..Meta::default()
            },
            contexts: vec![(1, Some(ctx(1, vec![])))],
            ..Batch::default()
        })
        .unwrap();
        // A transaction begun and never committed, as when the daemon dies
        // in the middle of one.
        s.conn
            .execute_batch("BEGIN; DELETE FROM contexts; DELETE FROM meta;")
            .unwrap();
        std::mem::forget(s);
        let l = Store::open(&path).unwrap().load().unwrap().unwrap();
        assert_eq!((l.meta.next_ctx, l.contexts.len()), (2, 1));
    }

    #[test]
    fn another_layout_is_refused() {
        let path = dir().join("c.db");
        let _ = std::fs::remove_file(&path);
        Store::open(&path)
            .unwrap()
            .conn
            .pragma_update(None, "user_version", 7)
            .unwrap();
        assert!(matches!(
            Store::open(&path),
            Err(StoreError::Layout { found: 7, .. })
        ));
    }
}

//! Durable state: one embedded, transactional redb database in the data dir.
//!
//! Every record is a JSON value under a string key. A write is one redb transaction committed
//! with `Durability::Immediate` (fsync) before the caller answers, so an acknowledged write
//! survives SIGKILL and power loss, and a crash mid-write leaves the previous commit intact:
//! redb's copy-on-write B-trees and checksummed commit slots never expose a half-written state.
//! The data dir is held with an exclusive lock on `ecsd.lock` for the daemon's lifetime.

use std::fs::{self, File, TryLockError};
use std::marker::PhantomData;
use std::ops::{Bound, ControlFlow};
use std::path::{Path, PathBuf};

use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;

pub mod records;

type Raw = TableDefinition<'static, &'static str, &'static [u8]>;

/// A table of JSON records of type `V` under string keys.
#[derive(Debug)]
pub struct Table<V> {
    name: &'static str,
    _v: PhantomData<fn() -> V>,
}

impl<V> Table<V> {
    pub const fn new(name: &'static str) -> Self {
        Table { name, _v: PhantomData }
    }

    fn def(&self) -> Raw {
        TableDefinition::new(self.name)
    }
}

impl<V> Clone for Table<V> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<V> Copy for Table<V> {}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("data dir {path} is already in use by another ecsd (lock file {lock} is held)")]
    Locked { path: PathBuf, lock: PathBuf },
    #[error("cannot prepare data dir {path}")]
    DataDir { path: PathBuf, source: std::io::Error },
    #[error("database error")]
    Database(#[from] redb::Error),
    #[error("record {table}/{key} cannot be decoded")]
    Corrupt { table: &'static str, key: String, source: serde_json::Error },
    #[error("record {table}/{key} cannot be encoded")]
    Encode { table: &'static str, key: String, source: serde_json::Error },
}

fn db_err(e: impl Into<redb::Error>) -> StoreError {
    StoreError::Database(e.into())
}

/// The durable store. Cheap to share behind an `Arc`; reads run concurrently with the one
/// writer (MVCC).
#[derive(Debug)]
pub struct Store {
    db: redb::Database,
    _lock: File,
}

impl Store {
    /// Opens (creating if needed) the store in `dir`, taking the data dir's lock.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let data_dir_err = |source| StoreError::DataDir { path: dir.to_owned(), source };
        fs::create_dir_all(dir).map_err(data_dir_err)?;
        let lock_path = dir.join("ecsd.lock");
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(data_dir_err)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(StoreError::Locked { path: dir.to_owned(), lock: lock_path });
            }
            Err(TryLockError::Error(e)) => return Err(data_dir_err(e)),
        }
        let db = redb::Database::create(dir.join("state.redb")).map_err(db_err)?;
        let store = Store { db, _lock: lock };
        // Every table exists from the start, so read transactions never meet a missing one.
        let tx = store.db.begin_write().map_err(db_err)?;
        for name in records::ALL_TABLES {
            tx.open_table(Raw::new(name)).map_err(db_err)?;
        }
        tx.commit().map_err(db_err)?;
        Ok(store)
    }

    /// Runs `f` on a consistent snapshot.
    pub fn read<T, E: From<StoreError>>(&self, f: impl FnOnce(&Reader<'_>) -> Result<T, E>) -> Result<T, E> {
        let tx = self.db.begin_read().map_err(db_err)?;
        f(&Reader { tx: Tx::Read(&tx) })
    }

    /// Runs `f` in a write transaction and commits durably when it returns `Ok`; on `Err`
    /// nothing `f` wrote is kept.
    pub fn write<T, E: From<StoreError>>(&self, f: impl FnOnce(&Writer<'_>) -> Result<T, E>) -> Result<T, E> {
        let tx = self.db.begin_write().map_err(db_err)?;
        let out = f(&Writer { tx: &tx })?;
        tx.commit().map_err(db_err)?;
        Ok(out)
    }
}

enum Tx<'a> {
    Read(&'a redb::ReadTransaction),
    Write(&'a redb::WriteTransaction),
}

/// Read access inside a transaction (a read snapshot or the current write).
pub struct Reader<'a> {
    tx: Tx<'a>,
}

impl std::fmt::Debug for Reader<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Reader")
    }
}

/// Read and write access inside one write transaction.
pub struct Writer<'a> {
    tx: &'a redb::WriteTransaction,
}

impl std::fmt::Debug for Writer<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Writer")
    }
}

/// The key range of a scan.
#[derive(Debug, Clone)]
pub struct Scan<'k> {
    pub from: Bound<&'k str>,
    pub to: Bound<&'k str>,
    pub reverse: bool,
}

impl<'k> Scan<'k> {
    pub fn all() -> Self {
        Scan { from: Bound::Unbounded, to: Bound::Unbounded, reverse: false }
    }
}

fn decode<V: DeserializeOwned>(table: &'static str, key: &str, bytes: &[u8]) -> Result<V, StoreError> {
    serde_json::from_slice(bytes).map_err(|source| StoreError::Corrupt { table, key: key.to_owned(), source })
}

fn get_in<V: DeserializeOwned>(
    t: &impl ReadableTable<&'static str, &'static [u8]>,
    name: &'static str,
    key: &str,
) -> Result<Option<V>, StoreError> {
    match t.get(key).map_err(db_err)? {
        Some(v) => decode(name, key, v.value()).map(Some),
        None => Ok(None),
    }
}

fn scan_in<V: DeserializeOwned>(
    t: &impl ReadableTable<&'static str, &'static [u8]>,
    name: &'static str,
    scan: &Scan<'_>,
    f: &mut dyn FnMut(&str, V) -> ControlFlow<()>,
) -> Result<(), StoreError> {
    let range = t.range::<&str>((scan.from, scan.to)).map_err(db_err)?;
    let mut visit = |item: Result<
        (redb::AccessGuard<'_, &'static str>, redb::AccessGuard<'_, &'static [u8]>),
        redb::StorageError,
    >| {
        let (k, v) = item.map_err(db_err)?;
        let key = k.value();
        let value = decode(name, key, v.value())?;
        Ok::<_, StoreError>(f(key, value))
    };
    if scan.reverse {
        for item in range.rev() {
            if visit(item)?.is_break() {
                break;
            }
        }
    } else {
        for item in range {
            if visit(item)?.is_break() {
                break;
            }
        }
    }
    Ok(())
}

macro_rules! with_table {
    ($self:expr, $table:expr, |$t:ident| $body:expr) => {
        match &$self.tx {
            Tx::Read(tx) => {
                let $t = tx.open_table($table.def()).map_err(db_err)?;
                $body
            }
            Tx::Write(tx) => {
                let $t = tx.open_table($table.def()).map_err(db_err)?;
                $body
            }
        }
    };
}

impl Reader<'_> {
    pub fn get<V: DeserializeOwned>(&self, table: Table<V>, key: &str) -> Result<Option<V>, StoreError> {
        with_table!(self, table, |t| get_in(&t, table.name, key))
    }

    /// Visits records in key order (or reverse) until `f` breaks.
    pub fn scan<V: DeserializeOwned>(
        &self,
        table: Table<V>,
        scan: Scan<'_>,
        mut f: impl FnMut(&str, V) -> ControlFlow<()>,
    ) -> Result<(), StoreError> {
        with_table!(self, table, |t| scan_in(&t, table.name, &scan, &mut f))
    }
}

impl Writer<'_> {
    /// Reads within this transaction, seeing its own writes.
    pub fn reader(&self) -> Reader<'_> {
        Reader { tx: Tx::Write(self.tx) }
    }

    pub fn get<V: DeserializeOwned>(&self, table: Table<V>, key: &str) -> Result<Option<V>, StoreError> {
        self.reader().get(table, key)
    }

    pub fn put<V: Serialize>(&self, table: Table<V>, key: &str, value: &V) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(value).map_err(|source| StoreError::Encode {
            table: table.name,
            key: key.to_owned(),
            source,
        })?;
        let mut t = self.tx.open_table(table.def()).map_err(db_err)?;
        t.insert(key, bytes.as_slice()).map_err(db_err)?;
        Ok(())
    }

    pub fn delete<V>(&self, table: Table<V>, key: &str) -> Result<bool, StoreError> {
        let mut t = self.tx.open_table(table.def()).map_err(db_err)?;
        let existed = t.remove(key).map_err(db_err)?.is_some();
        Ok(existed)
    }
}

/// The upper bound of all keys starting with `prefix` (for prefix scans): `prefix` followed
/// by the highest character.
pub fn prefix_end(prefix: &str) -> String {
    format!("{prefix}\u{10FFFF}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Table<serde_json::Value> = Table::new("clusters");

    #[test]
    fn a_second_open_of_the_same_dir_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _a = Store::open(dir.path()).unwrap();
        let err = Store::open(dir.path()).unwrap_err();
        assert!(matches!(err, StoreError::Locked { .. }), "{err}");
        assert!(err.to_string().contains("already in use"));
    }

    #[test]
    fn writes_commit_or_vanish_together() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        s.write(|w| w.put(T, "a", &serde_json::json!(1))).unwrap();
        let failed: Result<(), StoreError> = s.write(|w| {
            w.put(T, "b", &serde_json::json!(2))?;
            Err(StoreError::DataDir { path: "x".into(), source: std::io::Error::other("boom") })
        });
        assert!(failed.is_err());
        let got: Vec<String> = s
            .read(|r| {
                let mut keys = vec![];
                r.scan(T, Scan::all(), |k, _| {
                    keys.push(k.to_owned());
                    ControlFlow::Continue(())
                })?;
                Ok::<_, StoreError>(keys)
            })
            .unwrap();
        assert_eq!(got, vec!["a"]);
        drop(s);
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.read(|r| r.get(T, "a")).unwrap(), Some(serde_json::json!(1)));
    }

    #[test]
    fn scans_ranges_in_both_directions() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        s.write(|w| {
            for k in ["a\u{0}1", "a\u{0}2", "ab\u{0}1", "b\u{0}1"] {
                w.put(T, k, &serde_json::json!(k))?;
            }
            Ok::<_, StoreError>(())
        })
        .unwrap();
        let end = prefix_end("a\u{0}");
        let collect = |reverse| {
            s.read(|r| {
                let mut keys = vec![];
                r.scan(
                    T,
                    Scan { from: Bound::Included("a\u{0}"), to: Bound::Excluded(&end), reverse },
                    |k, _| {
                        keys.push(k.to_owned());
                        ControlFlow::Continue(())
                    },
                )?;
                Ok::<_, StoreError>(keys)
            })
            .unwrap()
        };
        assert_eq!(collect(false), vec!["a\u{0}1", "a\u{0}2"]);
        assert_eq!(collect(true), vec!["a\u{0}2", "a\u{0}1"]);
    }
}

//! Durable state: one embedded, transactional redb database in the data dir.
//!
//! Every record is a JSON value under a string key. A write is one redb transaction; the call
//! returns once that transaction is on disk, so an acknowledged write survives SIGKILL and
//! power loss, and a crash mid-write leaves the previous commit intact: redb's copy-on-write
//! B-trees and checksummed commit slots never expose a half-written state.
//!
//! Writes are group-committed: each transaction commits without an fsync (redb's
//! `Durability::None`, visible to readers at once), then waits for the store's syncer thread,
//! whose one durable commit makes every transaction before it durable. Concurrent writers
//! (supervisors recording task changes, API calls) share one fsync instead of queueing for one
//! each, and async callers ([`Store::write_async`]) never block a runtime worker on the disk.
//! Reads run concurrently with all of it (MVCC).
//!
//! The data dir is held with an exclusive lock on `ecsd.lock` until [`Store::close`] (or the
//! last drop), so the next ecsd on the same dir can open it as soon as this one has closed.

use std::fs::{self, File, TryLockError};
use std::marker::PhantomData;
use std::ops::{Bound, ControlFlow};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::Duration;

use redb::{Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;

mod cache;
pub mod records;

type Raw = TableDefinition<'static, &'static str, &'static [u8]>;

/// The layout of the records this ecsd writes. An ecsd refuses a data dir of a higher format
/// (it would misread it), and upgrades a lower one at open. Format 0 is every data dir from
/// before the format was recorded; 1 is the same records with the format stamped.
pub const STORE_FORMAT: u32 = 1;
/// Where the format is kept: the `meta` table, as a JSON string.
const FORMAT_KEY: &str = "store_format";

/// A table of JSON records of type `V` under string keys.
#[derive(Debug)]
pub struct Table<V> {
    name: &'static str,
    /// Its records are kept in the read cache ([`Store::get_raw`]).
    cached: bool,
    _v: PhantomData<fn() -> V>,
}

impl<V> Table<V> {
    pub const fn new(name: &'static str) -> Self {
        Table { name, cached: false, _v: PhantomData }
    }

    /// A table whose hot records are served from memory by [`Store::get_raw`].
    pub const fn cached(name: &'static str) -> Self {
        Table { name, cached: true, _v: PhantomData }
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
    #[error("the store is closed: ecsd is shutting down")]
    Closed,
    #[error("the store's syncer stopped: {0}")]
    Sync(String),
    #[error(
        "data dir {path} was written by a newer ecsd (store format {found}; this ecsd reads formats up to {supported}): run that ecsd or a newer one on it, or give this one another --data-dir"
    )]
    NewerFormat { path: PathBuf, found: u32, supported: u32 },
}

fn db_err(e: impl Into<redb::Error>) -> StoreError {
    StoreError::Database(e.into())
}

/// How long [`open_database`] waits for the database file's lock.
const DATABASE_LOCK_WAIT: Duration = Duration::from_secs(3);

/// Opens (creating) the database. We hold the data dir's lock, so a database that is still
/// locked is ours being let go: by the last transaction of a store just closed, or by a
/// process another thread was starting at that moment, which holds a copy of the file's
/// descriptor until its exec. Both end within moments; it is asked again until then.
fn open_database(path: &Path) -> Result<redb::Database, StoreError> {
    let deadline = std::time::Instant::now() + DATABASE_LOCK_WAIT;
    loop {
        match redb::Database::create(path) {
            Err(redb::DatabaseError::DatabaseAlreadyOpen) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            other => return other.map_err(db_err),
        }
    }
}

/// The format recorded in `db`; 0 when none is (a new database, or one from before formats).
fn stored_format(db: &redb::Database) -> Result<u32, StoreError> {
    let tx = db.begin_read().map_err(db_err)?;
    let table = match tx.open_table(Raw::new(records::META.name)) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(0),
        Err(e) => return Err(db_err(e)),
    };
    let Some(raw) = table.get(FORMAT_KEY).map_err(db_err)? else { return Ok(0) };
    let corrupt = |source| StoreError::Corrupt { table: records::META.name, key: FORMAT_KEY.into(), source };
    let text: String = serde_json::from_slice(raw.value()).map_err(corrupt)?;
    text.parse::<u32>().map_err(|_| {
        corrupt(<serde_json::Error as serde::de::Error>::custom(format!("{text:?} is not a format number")))
    })
}

/// Group commit: commits are numbered as they complete; `durable` is the highest number the
/// syncer has made durable.
#[derive(Debug, Default)]
struct Sync {
    state: Mutex<SyncState>,
    /// Wakes the syncer (work to do, or close) and blocked writers (work done).
    changed: Condvar,
    committed: AtomicU64,
    /// Async writers wait on this.
    durable_tx: Option<tokio::sync::watch::Sender<u64>>,
}

#[derive(Debug, Default)]
struct SyncState {
    /// The highest commit number someone waits to see durable.
    wanted: u64,
    durable: u64,
    /// Why the syncer stopped, if it did.
    failed: Option<String>,
    closing: bool,
}

#[derive(Debug)]
struct Open {
    db: Arc<redb::Database>,
    lock: File,
    syncer: Option<std::thread::JoinHandle<()>>,
}

/// The durable store. Cheap to share behind an `Arc`; reads run concurrently with writers.
#[derive(Debug)]
pub struct Store {
    open: RwLock<Option<Open>>,
    sync: Arc<Sync>,
    cache: cache::Cache,
    durable_rx: tokio::sync::watch::Receiver<u64>,
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
        let db = Arc::new(open_database(&dir.join("state.redb"))?);
        // Checked before anything is written: a newer format is left exactly as it is.
        let found = stored_format(&db)?;
        if found > STORE_FORMAT {
            return Err(StoreError::NewerFormat { path: dir.to_owned(), found, supported: STORE_FORMAT });
        }
        // Every table exists from the start, so read transactions never meet a missing one.
        let tx = db.begin_write().map_err(db_err)?;
        for name in records::ALL_TABLES {
            tx.open_table(Raw::new(name)).map_err(db_err)?;
        }
        if found < STORE_FORMAT {
            // 0 → 1 changes no record; later formats migrate here, in the same transaction.
            let value = serde_json::to_vec(&STORE_FORMAT.to_string()).map_err(|source| {
                StoreError::Encode { table: records::META.name, key: FORMAT_KEY.into(), source }
            })?;
            tx.open_table(Raw::new(records::META.name))
                .map_err(db_err)?
                .insert(FORMAT_KEY, value.as_slice())
                .map_err(db_err)?;
        }
        tx.commit().map_err(db_err)?;
        let (durable_tx, durable_rx) = tokio::sync::watch::channel(0);
        let sync = Arc::new(Sync { durable_tx: Some(durable_tx), ..Sync::default() });
        let syncer = {
            let (db, sync) = (Arc::clone(&db), Arc::clone(&sync));
            std::thread::Builder::new()
                .name("ecsd-store-sync".into())
                .spawn(move || run_syncer(&db, &sync))
                .map_err(data_dir_err)?
        };
        Ok(Store {
            open: RwLock::new(Some(Open { db, lock, syncer: Some(syncer) })),
            sync,
            cache: cache::Cache::default(),
            durable_rx,
        })
    }

    /// The store format of the open data dir (after any upgrade: [`STORE_FORMAT`]).
    pub fn format(&self) -> Result<u32, StoreError> {
        stored_format(self.db()?.as_ref())
    }

    fn db(&self) -> Result<Arc<redb::Database>, StoreError> {
        let open = self.open.read().unwrap_or_else(|e| e.into_inner());
        open.as_ref().map(|o| Arc::clone(&o.db)).ok_or(StoreError::Closed)
    }

    /// Makes every commit so far durable, then releases the database and the data dir's lock.
    /// Later calls fail with [`StoreError::Closed`]. Blocks until the syncer has finished.
    pub fn close(&self) {
        let open = self.open.write().unwrap_or_else(|e| e.into_inner()).take();
        let Some(mut open) = open else { return };
        {
            let mut st = self.sync.state.lock().unwrap_or_else(|e| e.into_inner());
            st.closing = true;
            st.wanted = st.wanted.max(self.sync.committed.load(Ordering::SeqCst));
        }
        self.sync.changed.notify_all();
        if let Some(syncer) = open.syncer.take() {
            let _ = syncer.join();
        }
        // Whoever commits from now on is told, not left waiting for a syncer that is gone.
        self.sync
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .failed
            .get_or_insert_with(|| "the store is closed".into());
        self.sync.changed.notify_all();
        if let Some(tx) = &self.sync.durable_tx {
            tx.send_modify(|_| {});
        }
        // Released explicitly, not only by closing the descriptor: a process another thread is
        // starting right now holds a copy of it until its exec, and with it the lock.
        if let Err(e) = open.lock.unlock() {
            tracing::warn!(error = %e, "cannot release the data dir's lock; it goes when ecsd exits");
        }
        // Transactions of callers that were mid-way hold the database until they end; the lock
        // file goes with `open` now, the database file with its last user.
        drop(open);
    }

    /// The stored JSON of one record of a cached table, from memory when it was read before
    /// and not written since. Blocks on a miss (a store read).
    pub fn get_raw<V>(&self, table: Table<V>, key: &str) -> Result<Option<Arc<[u8]>>, StoreError> {
        if let Some(hit) = self.cached_raw(table, key) {
            return Ok(hit);
        }
        let seen = self.sync.committed.load(Ordering::SeqCst);
        let tx = self.db()?.begin_read().map_err(db_err)?;
        let t = tx.open_table(table.def()).map_err(db_err)?;
        let value: Option<Arc<[u8]>> = t.get(key).map_err(db_err)?.map(|v| Arc::from(v.value()));
        if table.cached {
            self.cache.fill(table.name, key, seen, self.sync.committed.load(Ordering::SeqCst), value.clone());
        }
        Ok(value)
    }

    /// [`Store::get_raw`] when memory has the answer, without touching the database: `None`
    /// when it does not know.
    pub fn cached_raw<V>(&self, table: Table<V>, key: &str) -> Option<Option<Arc<[u8]>>> {
        if table.cached { self.cache.get(table.name, key) } else { None }
    }

    /// One record of a cached table, decoded; see [`Store::get_raw`].
    pub fn get_cached<V: DeserializeOwned>(
        &self,
        table: Table<V>,
        key: &str,
    ) -> Result<Option<V>, StoreError> {
        self.get_raw(table, key)?.map(|bytes| decode(table.name, key, &bytes)).transpose()
    }

    /// Runs `f` on a consistent snapshot.
    pub fn read<T, E: From<StoreError>>(&self, f: impl FnOnce(&Reader<'_>) -> Result<T, E>) -> Result<T, E> {
        let tx = self.db()?.begin_read().map_err(db_err)?;
        f(&Reader { tx: Tx::Read(&tx) })
    }

    /// Runs `f` in a write transaction and returns once it is durable, when `f` returns `Ok`;
    /// on `Err` nothing `f` wrote is kept. Blocks: call it from a blocking thread.
    pub fn write<T, E: From<StoreError>>(&self, f: impl FnOnce(&Writer<'_>) -> Result<T, E>) -> Result<T, E> {
        let (out, seq) = self.commit(f)?;
        self.wait_durable(seq)?;
        Ok(out)
    }

    /// [`Store::write`] for async callers: the transaction runs on the blocking pool and the
    /// wait for the disk does not hold a runtime worker.
    pub async fn write_async<T, E, F>(self: &Arc<Self>, f: F) -> Result<T, E>
    where
        F: FnOnce(&Writer<'_>) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        let store = Arc::clone(self);
        let (out, seq) = tokio::task::spawn_blocking(move || store.commit(f))
            .await
            .map_err(|e| StoreError::Sync(format!("the write was abandoned: {e}")))??;
        self.durable(seq).await?;
        Ok(out)
    }

    /// Commits without waiting for the disk; returns the commit's number.
    fn commit<T, E: From<StoreError>>(
        &self,
        f: impl FnOnce(&Writer<'_>) -> Result<T, E>,
    ) -> Result<(T, u64), E> {
        let db = self.db()?;
        let mut tx = db.begin_write().map_err(db_err)?;
        tx.set_durability(Durability::None).map_err(|e| StoreError::Sync(e.to_string()))?;
        let writer = Writer { tx: &tx, touched: std::cell::RefCell::new(vec![]) };
        let out = f(&writer)?;
        let touched = writer.touched.take();
        tx.commit().map_err(db_err)?;
        // Numbered after the commit, so the syncer's durable commit, which starts after it
        // reads the number, always includes every commit up to that number.
        let seq = self.sync.committed.fetch_add(1, Ordering::SeqCst) + 1;
        if !touched.is_empty() {
            self.cache.invalidate(seq, touched);
        }
        let mut st = self.sync.state.lock().unwrap_or_else(|e| e.into_inner());
        st.wanted = st.wanted.max(seq);
        drop(st);
        self.sync.changed.notify_all();
        Ok((out, seq))
    }

    fn wait_durable(&self, seq: u64) -> Result<(), StoreError> {
        let mut st = self.sync.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if st.durable >= seq {
                return Ok(());
            }
            if let Some(why) = &st.failed {
                return Err(StoreError::Sync(why.clone()));
            }
            st = self.sync.changed.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }

    async fn durable(&self, seq: u64) -> Result<(), StoreError> {
        let mut rx = self.durable_rx.clone();
        loop {
            if *rx.borrow_and_update() >= seq {
                return Ok(());
            }
            if let Some(why) = self.sync.state.lock().unwrap_or_else(|e| e.into_inner()).failed.clone() {
                return Err(StoreError::Sync(why));
            }
            if rx.changed().await.is_err() {
                return Err(StoreError::Sync("the syncer is gone".into()));
            }
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.close();
    }
}

/// The syncer: whenever commits wait to be durable, one durable (empty) commit makes all of
/// them so. Runs until the store closes, finishing what was asked before it.
fn run_syncer(db: &redb::Database, sync: &Sync) {
    loop {
        {
            let mut st = sync.state.lock().unwrap_or_else(|e| e.into_inner());
            while st.wanted <= st.durable && !st.closing {
                st = sync.changed.wait(st).unwrap_or_else(|e| e.into_inner());
            }
            if st.wanted <= st.durable && st.closing {
                return;
            }
        }
        let target = sync.committed.load(Ordering::SeqCst);
        let result = db.begin_write().map_err(db_err).and_then(|tx| tx.commit().map_err(db_err));
        let mut st = sync.state.lock().unwrap_or_else(|e| e.into_inner());
        match result {
            Ok(()) => {
                st.durable = st.durable.max(target);
                if let Some(tx) = &sync.durable_tx {
                    tx.send_replace(st.durable);
                }
            }
            Err(e) => {
                tracing::error!(error = %crate::error_chain(&e), "cannot make the store's commits durable");
                st.failed = Some(crate::error_chain(&e));
                drop(st);
                sync.changed.notify_all();
                if let Some(tx) = &sync.durable_tx {
                    tx.send_modify(|_| {});
                }
                return;
            }
        }
        drop(st);
        sync.changed.notify_all();
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
    /// The keys of cached tables this transaction wrote.
    touched: std::cell::RefCell<Vec<(&'static str, String)>>,
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
        self.touch(table, key);
        Ok(())
    }

    pub fn delete<V>(&self, table: Table<V>, key: &str) -> Result<bool, StoreError> {
        let mut t = self.tx.open_table(table.def()).map_err(db_err)?;
        let existed = t.remove(key).map_err(db_err)?.is_some();
        self.touch(table, key);
        Ok(existed)
    }

    fn touch<V>(&self, table: Table<V>, key: &str) {
        if table.cached {
            self.touched.borrow_mut().push((table.name, key.to_owned()));
        }
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

    /// Writes `format` as the data dir's recorded store format, as a newer ecsd would.
    fn stamp(dir: &Path, format: &str) {
        let db = redb::Database::create(dir.join("state.redb")).unwrap();
        let tx = db.begin_write().unwrap();
        tx.open_table(Raw::new("meta"))
            .unwrap()
            .insert(FORMAT_KEY, serde_json::to_vec(format).unwrap().as_slice())
            .unwrap();
        tx.commit().unwrap();
    }

    #[test]
    fn a_new_store_is_stamped_and_a_newer_format_is_refused_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.format().unwrap(), STORE_FORMAT);
        s.write(|w| w.put(T, "a", &serde_json::json!(1))).unwrap();
        s.close();

        stamp(dir.path(), &(STORE_FORMAT + 1).to_string());
        let err = Store::open(dir.path()).unwrap_err();
        assert!(matches!(err, StoreError::NewerFormat { found, .. } if found == STORE_FORMAT + 1), "{err}");
        assert_eq!(
            err.to_string(),
            format!(
                "data dir {} was written by a newer ecsd (store format {}; this ecsd reads formats up to {STORE_FORMAT}): run that ecsd or a newer one on it, or give this one another --data-dir",
                dir.path().display(),
                STORE_FORMAT + 1
            )
        );
        // Its format is left as it was (no upgrade, no stamp of this ecsd's).
        let db = redb::Database::create(dir.path().join("state.redb")).unwrap();
        assert_eq!(stored_format(&db).unwrap(), STORE_FORMAT + 1);
        drop(db);
        // The lock went with the refusal: the right ecsd can open it at once.
        stamp(dir.path(), &STORE_FORMAT.to_string());
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.read(|r| r.get(T, "a")).unwrap(), Some(serde_json::json!(1)));
    }

    #[test]
    fn an_unreadable_format_is_a_corrupt_record() {
        let dir = tempfile::tempdir().unwrap();
        stamp(dir.path(), "one");
        let err = Store::open(dir.path()).unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { table: "meta", .. }), "{err}");
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

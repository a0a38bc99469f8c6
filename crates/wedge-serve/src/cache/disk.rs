//! The disk tier: a `redb` file that survives restarts, bounded by value bytes (oldest entries
//! go first), TTL checked on every read, every value checksummed (CRC-32) so a damaged one is
//! dropped, not served, and written in redb transactions, so a crash mid-write leaves the
//! previous state. Writes go through one writer thread that commits whatever has accumulated
//! in one transaction, so requests never wait for `fsync`; [`DiskCache::flush`] waits for them.

use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::future::BoxFuture;
use redb::{
    Database, DatabaseError, ReadableDatabase, ReadableTable, ReadableTableMetadata, StorageError, TableDefinition,
};

use super::{Cached, Key, Tier};
use crate::ServeError;
use crate::completions::Completion;
use crate::metrics::Metrics;

const ENTRIES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("entries");
/// Insertion order: sequence number → key, for eviction of the oldest.
const ORDER: TableDefinition<u64, &[u8]> = TableDefinition::new("order");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// A record holding an embedding: `count` little-endian f32s.
const MAGIC_VECTOR: u32 = 0x5745_4331; // "WEC1"
/// A record holding a completion: `count` bytes of JSON.
const MAGIC_COMPLETION: u32 = 0x5745_4332; // "WEC2"
/// magic, seq, expires (unix ms), count, crc
const RECORD_HEADER: usize = 4 + 8 + 8 + 4 + 4;

pub(super) fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

pub(super) fn encode(seq: u64, expires: u64, value: &Cached) -> Vec<u8> {
    let (magic, count, payload) = match value {
        Cached::Vector(v) => {
            let mut payload = Vec::with_capacity(v.len() * 4);
            for x in v.iter() {
                payload.extend_from_slice(&x.to_le_bytes());
            }
            (MAGIC_VECTOR, v.len(), payload)
        }
        Cached::Completion(c) => {
            let payload = c.to_bytes();
            (MAGIC_COMPLETION, payload.len(), payload)
        }
    };
    let mut out = Vec::with_capacity(RECORD_HEADER + payload.len());
    out.extend_from_slice(&magic.to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&expires.to_le_bytes());
    out.extend_from_slice(&(count as u32).to_le_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(&out);
    crc.update(&payload);
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

/// A decoded record: its sequence number, expiry and value.
pub(super) struct Record {
    pub(super) seq: u64,
    pub(super) expires: u64,
    pub(super) value: Cached,
}

pub(super) fn decode(bytes: &[u8]) -> Option<Record> {
    let word = |at: usize| -> Option<u32> { Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?)) };
    let long = |at: usize| -> Option<u64> { Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?)) };
    let magic = word(0)?;
    let width = match magic {
        MAGIC_VECTOR => 4,
        MAGIC_COMPLETION => 1,
        _ => return None,
    };
    let (seq, expires, n) = (long(4)?, long(12)?, word(20)? as usize);
    let stored = word(24)?;
    let payload = bytes.get(RECORD_HEADER..)?;
    if payload.len() != n.checked_mul(width)? {
        return None;
    }
    let mut crc = crc32fast::Hasher::new();
    crc.update(&bytes[..24]);
    crc.update(payload);
    if crc.finalize() != stored {
        return None;
    }
    let value = if magic == MAGIC_VECTOR {
        let v: Vec<f32> = payload.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        Cached::Vector(v.into())
    } else {
        Cached::Completion(Arc::new(Completion::from_bytes(payload)?))
    };
    Some(Record { seq, expires, value })
}

enum Write {
    Put(Key, Cached),
    Remove(Key),
    Flush(mpsc::Sender<()>),
}

/// Tier 2: a bounded, checksummed, crash-safe store in one redb file.
pub struct DiskCache {
    db: Arc<Database>,
    ttl_ms: u64,
    writer: Mutex<Option<(mpsc::SyncSender<Write>, std::thread::JoinHandle<()>)>>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for DiskCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskCache").field("ttl_ms", &self.ttl_ms).finish_non_exhaustive()
    }
}

fn db_err(e: impl std::fmt::Display) -> ServeError {
    ServeError::Config(format!("disk cache: {e}"))
}

/// Whether opening failed on the file's content (as opposed to permissions, a lock, ...).
fn not_a_database(e: &DatabaseError) -> bool {
    use std::io::ErrorKind;
    match e {
        DatabaseError::Storage(StorageError::Corrupted(_)) | DatabaseError::UpgradeRequired(_) => true,
        DatabaseError::Storage(StorageError::Io(io)) => {
            matches!(io.kind(), ErrorKind::InvalidData | ErrorKind::UnexpectedEof)
        }
        _ => false,
    }
}

impl DiskCache {
    /// Opens (or creates) the cache file; one that is not a database is set aside as
    /// `<path>.damaged` and replaced by an empty cache.
    pub fn open(path: &Path, max_bytes: u64, ttl: Duration, metrics: Arc<Metrics>) -> Result<DiskCache, ServeError> {
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir).map_err(|e| db_err(format!("{}: {e}", dir.display())))?;
        }
        // redb asserts on some truncated files rather than returning an error: a panic
        // while opening counts as an unreadable file too.
        let opened = std::panic::catch_unwind(|| Database::create(path)).unwrap_or_else(|_| {
            Err(DatabaseError::Storage(StorageError::Corrupted("redb panicked reading it".into())))
        });
        let db = match opened {
            Ok(db) => db,
            // A cache file that is not a database (a crash while it was first written, a
            // truncated or foreign file) is set aside for inspection and replaced by an
            // empty cache: the node starts, and at most one damaged copy is kept.
            Err(e) if not_a_database(&e) => {
                let mut aside = path.as_os_str().to_owned();
                aside.push(".damaged");
                let aside = std::path::PathBuf::from(aside);
                tracing::warn!(path = %path.display(), error = %e, set_aside = %aside.display(), "disk cache unreadable, starting empty");
                metrics.cache_corrupt.inc();
                std::fs::rename(path, &aside)
                    .map_err(|e| db_err(format!("{}: cannot set the damaged file aside: {e}", path.display())))?;
                Database::create(path).map_err(|e| db_err(format!("{}: {e}", path.display())))?
            }
            Err(e) => return Err(db_err(format!("{}: {e}", path.display()))),
        };
        let txn = db.begin_write().map_err(db_err)?;
        {
            txn.open_table(ENTRIES).map_err(db_err)?;
            txn.open_table(ORDER).map_err(db_err)?;
            txn.open_table(META).map_err(db_err)?;
        }
        txn.commit().map_err(db_err)?;
        let db = Arc::new(db);
        let (tx, rx) = mpsc::sync_channel(4096);
        let ttl_ms = ttl.as_millis().min(u128::from(u64::MAX / 2)) as u64;
        let wdb = db.clone();
        let handle = std::thread::Builder::new()
            .name("wedge-cache-writer".into())
            .spawn(move || writer(&wdb, &rx, max_bytes, ttl_ms))
            .map_err(|e| db_err(format!("cannot start the writer thread: {e}")))?;
        Ok(DiskCache { db, ttl_ms, writer: Mutex::new(Some((tx, handle))), metrics })
    }

    /// A live, intact value, or `None`, read on this thread. A damaged value is counted,
    /// dropped and reported as a miss.
    pub fn lookup(&self, key: &Key) -> Option<Cached> {
        self.found(key, read(&self.db, key))
    }

    fn found(&self, key: &Key, r: Read) -> Option<Cached> {
        match r {
            Read::Value(r) if r.expires > now_ms() => Some(r.value),
            Read::Value(_) | Read::Absent => None, // (an expired value is reclaimed when space is needed)
            Read::Damaged => {
                self.metrics.cache_corrupt.inc();
                tracing::warn!("disk cache value failed its checksum; dropped");
                self.send(Write::Remove(*key));
                None
            }
        }
    }

    /// Stores a value in the background.
    pub fn put(&self, key: Key, v: Cached) {
        self.send(Write::Put(key, v));
    }

    fn send(&self, w: Write) {
        let guard = self.writer.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((tx, _)) = guard.as_ref()
            && tx.try_send(w).is_err()
        {
            self.metrics.cache_write_dropped.inc();
        }
    }

    /// Waits until every write sent so far is committed.
    pub fn flush(&self) {
        let (ack, done) = mpsc::channel();
        let tx = self.writer.lock().unwrap_or_else(std::sync::PoisonError::into_inner).as_ref().map(|(t, _)| t.clone());
        if let Some(tx) = tx
            && tx.send(Write::Flush(ack)).is_ok()
        {
            let _ = done.recv();
        }
    }

    /// Commits pending writes and stops the writer; later writes are dropped.
    pub fn close(&self) {
        let taken = self.writer.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        if let Some((tx, handle)) = taken {
            drop(tx);
            if handle.join().is_err() {
                tracing::error!("the disk cache writer panicked");
            }
        }
    }

    /// Entries stored (live or expired).
    pub fn len(&self) -> usize {
        let count = || -> Result<u64, redb::Error> {
            let txn = self.db.begin_read()?;
            Ok(txn.open_table(ENTRIES)?.len()?)
        };
        count().unwrap_or(0) as usize
    }

    /// Whether nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What a read of one key found.
enum Read {
    Value(Record),
    Absent,
    Damaged,
}

fn read(db: &Database, key: &Key) -> Read {
    let get = || -> Result<Option<Vec<u8>>, redb::Error> {
        let txn = db.begin_read()?;
        let table = txn.open_table(ENTRIES)?;
        Ok(table.get(key.as_slice())?.map(|g| g.value().to_vec()))
    };
    match get() {
        Ok(Some(bytes)) => decode(&bytes).map_or(Read::Damaged, Read::Value),
        Ok(None) => Read::Absent,
        Err(e) => {
            tracing::warn!("disk cache read failed: {e}");
            Read::Absent
        }
    }
}

impl Tier for DiskCache {
    fn name(&self) -> &'static str {
        "disk"
    }

    /// Reads on a blocking thread (redb reads the file).
    fn get<'a>(&'a self, key: &'a Key) -> BoxFuture<'a, Option<Cached>> {
        let (db, k) = (self.db.clone(), *key);
        Box::pin(async move {
            let r = tokio::task::spawn_blocking(move || read(&db, &k)).await.unwrap_or(Read::Absent);
            self.found(key, r)
        })
    }

    /// Queues the write for the writer thread; never waits for the disk.
    fn put(&self, key: Key, value: Cached) -> BoxFuture<'_, ()> {
        DiskCache::put(self, key, value);
        Box::pin(std::future::ready(()))
    }

    fn flush(&self) {
        DiskCache::flush(self);
    }

    fn close(&self) {
        DiskCache::close(self);
    }
}

impl Drop for DiskCache {
    fn drop(&mut self) {
        self.close();
    }
}

fn writer(db: &Database, rx: &mpsc::Receiver<Write>, max_bytes: u64, ttl_ms: u64) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
            if batch.len() >= 1024 {
                break;
            }
        }
        let mut acks = Vec::new();
        if let Err(e) = commit(db, batch, &mut acks, max_bytes, ttl_ms) {
            tracing::warn!("disk cache write failed: {e}");
        }
        for a in acks {
            let _ = a.send(());
        }
    }
}

fn commit(
    db: &Database,
    batch: Vec<Write>,
    acks: &mut Vec<mpsc::Sender<()>>,
    max_bytes: u64,
    ttl_ms: u64,
) -> Result<(), redb::Error> {
    let txn = db.begin_write()?;
    {
        let mut entries = txn.open_table(ENTRIES)?;
        let mut order = txn.open_table(ORDER)?;
        let mut meta = txn.open_table(META)?;
        let mut seq = meta.get("seq")?.map(|g| g.value()).unwrap_or(0);
        let mut bytes = meta.get("bytes")?.map(|g| g.value()).unwrap_or(0);
        let expires = now_ms().saturating_add(ttl_ms);
        for w in batch {
            match w {
                Write::Put(key, v) => {
                    seq += 1;
                    let rec = encode(seq, expires, &v);
                    if rec.len() as u64 > max_bytes {
                        continue;
                    }
                    let old = entries.insert(key.as_slice(), rec.as_slice())?.map(|g| g.value().to_vec());
                    if let Some(old) = old {
                        bytes = bytes.saturating_sub(old.len() as u64);
                        if let Some(r) = decode(&old) {
                            order.remove(r.seq)?;
                        }
                    }
                    order.insert(seq, key.as_slice())?;
                    bytes += rec.len() as u64;
                }
                Write::Remove(key) => {
                    if let Some(old) = entries.remove(key.as_slice())?.map(|g| g.value().to_vec()) {
                        bytes = bytes.saturating_sub(old.len() as u64);
                        if let Some(r) = decode(&old) {
                            order.remove(r.seq)?;
                        }
                    }
                }
                Write::Flush(ack) => acks.push(ack),
            }
        }
        // Over the bound: drop the oldest entries (expired ones are the oldest, since every entry
        // has the same TTL).
        while bytes > max_bytes {
            let Some((_, key)) = order.pop_first()?.map(|(s, k)| (s.value(), k.value().to_vec())) else {
                break;
            };
            if let Some(old) = entries.remove(key.as_slice())?.map(|g| g.value().to_vec()) {
                bytes = bytes.saturating_sub(old.len() as u64);
            }
        }
        meta.insert("seq", seq)?;
        meta.insert("bytes", bytes)?;
    }
    txn.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::registry::Registry;

    fn metrics() -> Arc<Metrics> {
        Arc::new(Metrics::new(&mut Registry::default()))
    }

    fn vector(x: f32, n: usize) -> Cached {
        Cached::Vector((0..n).map(|i| x + i as f32).collect::<Vec<_>>().into())
    }

    #[test]
    fn records_round_trip_and_reject_damage() {
        let completion = Completion::example();
        for v in [Cached::Vector(vec![1.5f32, -2.0, 0.25].into()), Cached::Completion(Arc::new(completion))] {
            let rec = encode(7, 99, &v);
            let r = decode(&rec).unwrap();
            assert_eq!((r.seq, r.expires, &r.value), (7, 99, &v));
            for i in 0..rec.len() {
                for bit in [0x01u8, 0x80] {
                    let mut bad = rec.clone();
                    bad[i] ^= bit;
                    assert!(decode(&bad).is_none(), "flip at {i} accepted");
                }
            }
            for cut in 0..rec.len() {
                assert!(decode(&rec[..cut]).is_none());
            }
        }
    }

    #[test]
    fn survives_reopen_and_drops_corrupt_values() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.redb");
        let m = metrics();
        {
            let c = DiskCache::open(&path, 1 << 20, Duration::from_secs(60), m.clone()).unwrap();
            c.put([1; 32], vector(1.0, 4));
            c.put([2; 32], vector(2.0, 4));
            c.close();
        }
        // Damage one value behind the cache's back.
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut t = txn.open_table(ENTRIES).unwrap();
                let mut v = t.get([2u8; 32].as_slice()).unwrap().unwrap().value().to_vec();
                let last = v.len() - 1;
                v[last] ^= 0x10;
                t.insert([2u8; 32].as_slice(), v.as_slice()).unwrap();
            }
            txn.commit().unwrap();
        }
        let c = DiskCache::open(&path, 1 << 20, Duration::from_secs(60), m.clone()).unwrap();
        assert_eq!(c.lookup(&[1; 32]), Some(vector(1.0, 4)));
        assert_eq!(c.lookup(&[2; 32]), None);
        assert_eq!(m.cache_corrupt.get(), 1);
        c.flush();
        assert_eq!(c.len(), 1, "the damaged value is removed");
    }

    /// Run by `a_crash_mid_write_serves_no_torn_value` in a child process: writes until killed.
    #[test]
    #[ignore = "a helper run in a child process"]
    fn crash_writer_child() {
        let Ok(path) = std::env::var("WEDGE_CRASH_DB") else { return };
        let c = DiskCache::open(Path::new(&path), 1 << 20, Duration::from_secs(60), metrics()).unwrap();
        for i in 0u32.. {
            let mut k = [0u8; 32];
            k[..4].copy_from_slice(&i.to_le_bytes());
            c.put(k, vector(i as f32, 384));
            if i % 64 == 0 {
                c.flush();
                if i == 64 {
                    println!("committed");
                }
            }
        }
    }

    #[test]
    fn a_crash_mid_write_serves_no_torn_value() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("crash.redb");
        for round in 0..3 {
            let mut child = std::process::Command::new(std::env::current_exe().unwrap())
                .args(["--exact", "cache::disk::tests::crash_writer_child", "--ignored", "--nocapture"])
                .env("WEDGE_CRASH_DB", &path)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
            // kill it mid-write, once it has committed something (however loaded the machine)
            let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
            let mut line = String::new();
            while !line.contains("committed") {
                line.clear();
                assert!(std::io::BufRead::read_line(&mut out, &mut line).unwrap() > 0, "the writer exited");
            }
            std::thread::sleep(Duration::from_millis(50 + 100 * round));
            child.kill().unwrap(); // SIGKILL: no destructor, no flush
            child.wait().unwrap();
            let m = metrics();
            let c = DiskCache::open(&path, 1 << 20, Duration::from_secs(60), m.clone()).unwrap();
            let db = c.db.clone();
            let txn = db.begin_read().unwrap();
            let table = txn.open_table(ENTRIES).unwrap();
            let mut n = 0;
            for row in table.iter().unwrap() {
                let (k, v) = row.unwrap();
                let r = decode(v.value()).expect("a stored value failed its checksum");
                let i = u32::from_le_bytes(k.value()[..4].try_into().unwrap());
                assert_eq!(r.value, vector(i as f32, 384));
                n += 1;
            }
            assert!(n > 0, "round {round}: nothing was committed before the kill");
            assert_eq!(m.cache_corrupt.get(), 0);
        }
    }

    #[test]
    fn a_damaged_cache_file_is_set_aside_and_the_cache_starts_empty() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.redb");
        {
            let c = DiskCache::open(&good, 1 << 20, Duration::from_secs(60), metrics()).unwrap();
            for i in 0..50u8 {
                c.put([i; 32], vector(f32::from(i), 384));
            }
            c.close();
        }
        let bytes = std::fs::read(&good).unwrap();
        let path = dir.path().join("cut.redb");
        let mut damaged = bytes.clone();
        damaged[..64].fill(0x5a);
        let cuts: Vec<Vec<u8>> = [1, 100, 512, 4096, bytes.len() / 2].iter().map(|&n| bytes[..n].to_vec()).collect();
        for (i, file) in cuts.iter().chain([&damaged, &b"<html>not a database</html>".to_vec()]).enumerate() {
            std::fs::write(&path, file).unwrap();
            let m = metrics();
            let c = DiskCache::open(&path, 1 << 20, Duration::from_secs(60), m.clone())
                .unwrap_or_else(|e| panic!("case {i} ({} bytes): {e}", file.len()));
            // whatever survived is intact; a put after it works
            for k in 0..50u8 {
                if let Some(v) = c.lookup(&[k; 32]) {
                    assert_eq!(v, vector(f32::from(k), 384));
                }
            }
            c.put([99; 32], vector(1.0, 4));
            c.flush();
            assert!(c.lookup(&[99; 32]).is_some(), "case {i}");
            c.close();
            let _ = std::fs::remove_file(dir.path().join("cut.redb.damaged"));
        }
    }

    #[test]
    fn bounded_by_bytes_oldest_first_and_ttl() {
        let dir = tempfile::tempdir().unwrap();
        let rec = encode(0, 0, &vector(0.0, 16)).len() as u64;
        let c = DiskCache::open(&dir.path().join("c.redb"), rec * 3, Duration::from_secs(60), metrics()).unwrap();
        for i in 0..5u8 {
            c.put([i; 32], vector(f32::from(i), 16));
            c.flush();
        }
        assert_eq!(c.len(), 3);
        assert!(c.lookup(&[0; 32]).is_none() && c.lookup(&[1; 32]).is_none());
        assert!(c.lookup(&[4; 32]).is_some());
        // Re-putting a key replaces it without growing.
        c.put([4; 32], vector(9.0, 16));
        c.flush();
        assert_eq!(c.len(), 3);
        assert_eq!(c.lookup(&[4; 32]), Some(vector(9.0, 16)));

        let c = DiskCache::open(&dir.path().join("t.redb"), 1 << 20, Duration::ZERO, metrics()).unwrap();
        c.put([1; 32], vector(1.0, 4));
        c.flush();
        assert!(c.lookup(&[1; 32]).is_none(), "expired entries are not served");
    }
}

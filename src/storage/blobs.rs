//! The blob cache: `<storage>/blobs/sha256/<hex>`, laid out as an OCI image layout's `blobs/`
//! (an `oci-layout` file beside it), shared by every pull of the user. Only verified blobs
//! carry their digest as a name: a download grows in `<hex>.partial`, is hashed as it is
//! written (and a partial left by an earlier pull is hashed again before it is continued), and
//! is renamed into place only once its digest and size match.
//!
//! One process downloads a blob at a time, by a lock file `<hex>.lock` created with `O_EXCL`
//! (which holds on NFS, where `flock` may not reach the server) holding the owner's pid, boot id
//! and process start time. A lock whose owner is gone (same boot, no such process or another
//! start time) is stale and broken; a lock from another machine (another boot id) is stale once
//! its owner stopped refreshing its modification time for [`FOREIGN_LOCK_STALE`].

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use crate::fsutil::create_private_dir;

/// How long a lock from another machine may go unrefreshed before it counts as stale.
pub const FOREIGN_LOCK_STALE: Duration = Duration::from_secs(120);
/// How often a download refreshes its lock.
const LOCK_REFRESH: Duration = Duration::from_secs(10);

pub struct BlobCache {
    dir: PathBuf,
}

/// `sha256:HEX` → HEX, refusing anything else (a digest becomes a file name).
pub fn digest_hex(digest: &str) -> Result<&str> {
    match digest.strip_prefix("sha256:") {
        Some(hex)
            if hex.len() == 64
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) =>
        {
            Ok(hex)
        }
        _ => bail!("malformed or unsupported digest {digest:?} (nook takes sha256:HEX)"),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl BlobCache {
    pub fn open(storage: &Path) -> Result<BlobCache> {
        let top = storage.join("blobs");
        let dir = top.join("sha256");
        create_private_dir(&top)?;
        create_private_dir(&dir)?;
        let marker = top.join("oci-layout");
        if !marker.exists() {
            crate::fsutil::write_atomic(&marker, br#"{"imageLayoutVersion":"1.0.0"}"#, false)?;
        }
        Ok(BlobCache { dir })
    }

    pub fn path(&self, digest: &str) -> Result<PathBuf> {
        Ok(self.dir.join(digest_hex(digest)?))
    }

    pub fn has(&self, digest: &str) -> bool {
        self.path(digest).is_ok_and(|p| p.is_file())
    }

    /// Takes the download lock of `digest`, waiting while a live process holds it.
    pub fn lock(&self, digest: &str) -> Result<BlobLock> {
        let path = self.dir.join(format!("{}.lock", digest_hex(digest)?));
        let me = LockOwner::current()?;
        let mut waited = false;
        loop {
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
            {
                Ok(mut f) => {
                    f.write_all(me.to_line().as_bytes())
                        .and_then(|()| f.sync_all())
                        .with_context(|| format!("writing {}", path.display()))?;
                    return Ok(BlobLock {
                        path,
                        refreshed: SystemTime::now(),
                        waited,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    if lock_is_stale(&path, &me) {
                        break_lock(&path);
                        continue;
                    }
                    waited = true;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => return Err(e).with_context(|| format!("creating {}", path.display())),
            }
        }
    }

    /// Opens the partial download of `digest` for appending, hashing what it already holds
    /// (that is how a resumed download is verified as a whole). Returns the file, the hasher
    /// and the length continued from. The caller holds the lock.
    pub fn partial(&self, digest: &str, size: u64) -> Result<Partial> {
        let path = self.dir.join(format!("{}.partial", digest_hex(digest)?));
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        let mut hasher = Sha256::new();
        let mut have = 0u64;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = file
                .read(&mut buf)
                .with_context(|| format!("reading {}", path.display()))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            have += n as u64;
        }
        if have > size {
            // Not this blob's beginning: start over.
            file.set_len(0)
                .with_context(|| format!("truncating {}", path.display()))?;
            hasher = Sha256::new();
            have = 0;
        }
        Ok(Partial {
            path,
            file,
            hasher,
            have,
            size,
        })
    }

    /// Moves a complete partial into place once it matches `digest`; a mismatch deletes it.
    pub fn commit(&self, digest: &str, partial: Partial) -> Result<PathBuf> {
        let Partial {
            path,
            file,
            hasher,
            have,
            size,
        } = partial;
        let got = format!("sha256:{}", hex(&hasher.finalize()));
        if got != digest || have != size {
            let _ = fs::remove_file(&path);
            bail!(
                "blob {digest} does not match its digest: the {have} bytes received hash to \
                 {got} ({size} bytes expected); the download was deleted"
            );
        }
        file.sync_all()
            .with_context(|| format!("writing {}", path.display()))?;
        let dest = self.path(digest)?;
        fs::rename(&path, &dest)
            .with_context(|| format!("moving {} into place", path.display()))?;
        Ok(dest)
    }

    /// Stores a small blob held in memory (a config), after checking it.
    pub fn put(&self, digest: &str, data: &[u8]) -> Result<PathBuf> {
        let got = format!("sha256:{}", hex(&Sha256::digest(data)));
        if got != digest {
            bail!("blob {digest} does not match its digest: it hashes to {got}");
        }
        let dest = self.path(digest)?;
        crate::fsutil::write_atomic(&dest, data, false)?;
        Ok(dest)
    }

    /// Removes every blob, partial and stale lock (`nook system prune`); returns the bytes freed.
    pub fn prune(&self) -> Result<u64> {
        let mut freed = 0;
        let me = LockOwner::current()?;
        for entry in
            fs::read_dir(&self.dir).with_context(|| format!("reading {}", self.dir.display()))?
        {
            let entry = entry?;
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".lock") {
                if lock_is_stale(&path, &me) {
                    break_lock(&path);
                }
                continue;
            }
            // A partial another pull is writing stays.
            if let Some(hex) = name.strip_suffix(".partial") {
                if self.dir.join(format!("{hex}.lock")).exists() {
                    continue;
                }
            }
            freed += entry.metadata().map(|m| m.len()).unwrap_or(0);
            fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        }
        Ok(freed)
    }
}

pub struct Partial {
    path: PathBuf,
    file: File,
    hasher: Sha256,
    have: u64,
    size: u64,
}

impl Partial {
    /// Bytes already there (where a `Range` request continues).
    pub fn have(&self) -> u64 {
        self.have
    }

    /// Forgets what is there (the server sent the whole blob instead of the range).
    pub fn restart(&mut self) -> Result<()> {
        self.file
            .set_len(0)
            .with_context(|| format!("truncating {}", self.path.display()))?;
        self.hasher = Sha256::new();
        self.have = 0;
        Ok(())
    }

    /// Appends data; refuses to grow past the declared size.
    pub fn write(&mut self, data: &[u8]) -> Result<()> {
        if self.have + data.len() as u64 > self.size {
            bail!(
                "the blob is larger than the {} bytes the manifest declares",
                self.size
            );
        }
        self.file
            .write_all(data)
            .with_context(|| format!("writing {}", self.path.display()))?;
        self.hasher.update(data);
        self.have += data.len() as u64;
        Ok(())
    }

    pub fn is_complete(&self) -> bool {
        self.have == self.size
    }
}

/// A held download lock; removed on drop.
pub struct BlobLock {
    path: PathBuf,
    refreshed: SystemTime,
    /// Whether another process held it first (its download may have finished meanwhile).
    pub waited: bool,
}

impl BlobLock {
    /// Touches the lock now and then, so that other machines see its owner alive.
    pub fn refresh(&mut self) {
        if self.refreshed.elapsed().unwrap_or_default() >= LOCK_REFRESH {
            if let Ok(f) = File::options().write(true).open(&self.path) {
                let _ = f.set_modified(SystemTime::now());
            }
            self.refreshed = SystemTime::now();
        }
    }
}

impl Drop for BlobLock {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// Who holds a lock: enough to tell, on this machine, whether that process still runs.
#[derive(Debug, PartialEq, Eq)]
struct LockOwner {
    pid: i32,
    boot_id: String,
    start_time: u64,
}

fn boot_id() -> Result<String> {
    Ok(fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .context("reading /proc/sys/kernel/random/boot_id")?
        .trim()
        .to_string())
}

/// Field 22 of /proc/PID/stat: the process's start time in clock ticks since boot.
fn start_time(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    after.split(' ').nth(19)?.parse().ok()
}

impl LockOwner {
    fn current() -> Result<LockOwner> {
        let pid = std::process::id() as i32;
        Ok(LockOwner {
            pid,
            boot_id: boot_id()?,
            start_time: start_time(pid).context("reading this process's start time")?,
        })
    }

    fn to_line(&self) -> String {
        format!("{} {} {}\n", self.pid, self.boot_id, self.start_time)
    }

    fn parse(text: &str) -> Option<LockOwner> {
        let mut f = text.split_whitespace();
        Some(LockOwner {
            pid: f.next()?.parse().ok()?,
            boot_id: f.next()?.to_string(),
            start_time: f.next()?.parse().ok()?,
        })
    }
}

fn lock_is_stale(path: &Path, me: &LockOwner) -> bool {
    let Ok(text) = fs::read_to_string(path) else {
        // Gone meanwhile: not stale, just free.
        return false;
    };
    let age = fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .unwrap_or_default();
    match LockOwner::parse(&text) {
        Some(owner) if owner.boot_id == me.boot_id => {
            start_time(owner.pid) != Some(owner.start_time)
        }
        Some(_) => age >= FOREIGN_LOCK_STALE,
        // Its owner died between creating and writing it (or is writing it now).
        None => age >= Duration::from_secs(5),
    }
}

/// Breaks a stale lock: renamed aside first, so that of two processes breaking it at once only
/// one removes it (the other's rename fails), and a fresh lock taken meanwhile is not removed.
fn break_lock(path: &Path) {
    let aside = path.with_extension(format!("stale-{}", std::process::id()));
    if fs::rename(path, &aside).is_ok() {
        let _ = fs::remove_file(&aside);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DATA: &[u8] = b"hello, blob";

    fn digest_of(d: &[u8]) -> String {
        format!("sha256:{}", hex(&Sha256::digest(d)))
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("nook-blobs-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_partial_resumes_and_is_verified_whole() {
        let dir = scratch("resume");
        let cache = BlobCache::open(&dir).unwrap();
        let digest = digest_of(DATA);
        let mut p = cache.partial(&digest, DATA.len() as u64).unwrap();
        p.write(&DATA[..5]).unwrap();
        drop(p);
        let mut p = cache.partial(&digest, DATA.len() as u64).unwrap();
        assert_eq!(p.have(), 5);
        p.write(&DATA[5..]).unwrap();
        assert!(p.is_complete());
        let path = cache.commit(&digest, p).unwrap();
        assert_eq!(fs::read(path).unwrap(), DATA);
        assert!(cache.has(&digest));
        assert!(dir.join("blobs/oci-layout").is_file());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_mismatch_deletes_the_download_and_names_the_digest() {
        let dir = scratch("mismatch");
        let cache = BlobCache::open(&dir).unwrap();
        let digest = digest_of(b"something else!");
        let mut p = cache.partial(&digest, 15).unwrap();
        assert!(
            p.write(b"0123456789abcdefg").is_err(),
            "larger than declared"
        );
        p.write(b"0123456789abcde").unwrap();
        let err = cache.commit(&digest, p).unwrap_err().to_string();
        assert!(err.contains(&digest), "{err}");
        assert!(fs::read_dir(dir.join("blobs/sha256"))
            .unwrap()
            .next()
            .is_none());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_dead_owners_lock_is_broken_and_a_live_one_waited_for() {
        let dir = scratch("lock");
        let cache = BlobCache::open(&dir).unwrap();
        let digest = digest_of(DATA);
        let lock_path = dir.join(format!(
            "blobs/sha256/{}.lock",
            digest_hex(&digest).unwrap()
        ));
        let me = LockOwner::current().unwrap();
        // A pid that is not running (beyond pid_max) on this boot.
        let dead = LockOwner {
            pid: 99_999_999,
            ..LockOwner::parse(&me.to_line()).unwrap()
        };
        fs::write(&lock_path, dead.to_line()).unwrap();
        let lock = cache.lock(&digest).unwrap();
        assert_eq!(
            LockOwner::parse(&fs::read_to_string(&lock_path).unwrap()),
            Some(me)
        );
        // Held by a live owner: another taker waits until it is dropped.
        let dir2 = dir.clone();
        let d2 = digest.clone();
        let waiter = std::thread::spawn(move || {
            let cache = BlobCache::open(&dir2).unwrap();
            cache.lock(&d2).unwrap().waited
        });
        std::thread::sleep(Duration::from_millis(300));
        drop(lock);
        assert!(waiter.join().unwrap());
        assert!(!lock_path.exists());
        // From another machine: stale only when not refreshed for a while.
        fs::write(&lock_path, "1 other-boot 5\n").unwrap();
        assert!(!lock_is_stale(&lock_path, &LockOwner::current().unwrap()));
        let old = SystemTime::now() - FOREIGN_LOCK_STALE - Duration::from_secs(1);
        File::options()
            .write(true)
            .open(&lock_path)
            .unwrap()
            .set_modified(old)
            .unwrap();
        assert!(lock_is_stale(&lock_path, &LockOwner::current().unwrap()));
        fs::remove_dir_all(&dir).unwrap();
    }
}

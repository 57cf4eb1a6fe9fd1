//! SQLite takes one supervisor per database file: the first holds an exclusive lock on a file
//! beside it (`<database>.supervisor-lock`), and a second one refuses to start, naming it.
//!
//! The lock is `flock(2)` (std's `File::try_lock`), held by the open file: the kernel releases
//! it when the process ends however it ends, SIGKILL included, so a crash never leaves a stale
//! lock behind. The file itself stays (deleting it on exit would race with the next opener,
//! who could lock a file that is no longer the one on disk); it holds the pid of the last
//! holder, for the message. SQLite's own locks would not do: every process may open the file,
//! and two supervisors writing it through their own pools would each assign the same streams.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use sqlx::sqlite::SqliteConnectOptions;

/// Why this process may not run a supervisor on this SQLite database.
#[derive(Debug, thiserror::Error)]
pub enum SingleReplicaError {
    /// Another supervisor holds the database.
    #[error(
        "another data-streams supervisor{pid} is running on the SQLite database {database} (it \
         holds the lock {lock}): SQLite takes one supervisor per database file; stop that one \
         first, or use PostgreSQL to run several"
    )]
    Held {
        database: PathBuf,
        lock: PathBuf,
        /// ` (pid N)` when the holder wrote its pid, else empty.
        pid: String,
    },
    /// The lock file could not be created or locked.
    #[error("cannot lock {lock} beside the SQLite database")]
    Io {
        lock: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Held while this process is the supervisor of a SQLite database; dropping it (or the process
/// ending) lets the next one start.
#[derive(Debug)]
pub struct SingleReplicaGuard {
    /// The locked file: the lock lives as long as it is open.
    _file: File,
    lock: PathBuf,
}

impl SingleReplicaGuard {
    /// Takes the lock of the SQLite database at `database_url` without waiting. `Ok(None)`
    /// for a PostgreSQL URL or an in-memory database, which no other process can open; a URL
    /// that does not parse is left to the database connection to report.
    pub fn acquire(database_url: &str) -> Result<Option<SingleReplicaGuard>, SingleReplicaError> {
        let in_memory = database_url.contains(":memory:") || database_url.contains("mode=memory");
        if !database_url.starts_with("sqlite:") || in_memory {
            return Ok(None);
        }
        let Ok(options) = SqliteConnectOptions::from_str(database_url) else {
            return Ok(None);
        };
        SingleReplicaGuard::acquire_file(options.get_filename()).map(Some)
    }

    /// Takes the lock of the SQLite database file `database`, creating its folder if missing.
    pub fn acquire_file(database: &Path) -> Result<SingleReplicaGuard, SingleReplicaError> {
        let mut lock = database.as_os_str().to_owned();
        lock.push(".supervisor-lock");
        let lock = PathBuf::from(lock);
        let io = |source| SingleReplicaError::Io {
            lock: lock.clone(),
            source,
        };
        if let Some(folder) = lock.parent().filter(|f| !f.as_os_str().is_empty()) {
            std::fs::create_dir_all(folder).map_err(io)?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let pid = match holder.trim().parse::<u32>() {
                    Ok(pid) => format!(" (pid {pid})"),
                    Err(_) => String::new(),
                };
                return Err(SingleReplicaError::Held {
                    database: database.to_owned(),
                    lock,
                    pid,
                });
            }
            Err(TryLockError::Error(source)) => return Err(io(source)),
        }
        // Only a help for the message of the next one: a failure here changes nothing.
        let _ = file
            .set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| writeln!(file, "{}", std::process::id()));
        Ok(SingleReplicaGuard { _file: file, lock })
    }

    /// The lock file.
    pub fn lock_path(&self) -> &Path {
        &self.lock
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_open_is_refused_naming_the_database_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("new/ds.db").display());
        let first = SingleReplicaGuard::acquire(&url).unwrap().expect("a file");
        assert!(first.lock_path().ends_with("new/ds.db.supervisor-lock"));

        let refused = SingleReplicaGuard::acquire(&url).unwrap_err();
        let message = refused.to_string();
        assert!(
            matches!(refused, SingleReplicaError::Held { .. }),
            "{message}"
        );
        assert!(message.contains("ds.db"), "{message}");
        assert!(
            message.contains(&format!("(pid {})", std::process::id())),
            "{message}"
        );
        assert!(
            message.contains("one supervisor per database file"),
            "{message}"
        );

        drop(first);
        let again = SingleReplicaGuard::acquire(&url).unwrap();
        assert!(again.is_some(), "free again once the holder is gone");
    }

    #[test]
    fn postgres_and_in_memory_databases_take_no_lock() {
        for url in [
            "postgres://u@localhost/x",
            "sqlite::memory:",
            "sqlite://file:ds?mode=memory&cache=shared",
        ] {
            assert!(SingleReplicaGuard::acquire(url).unwrap().is_none(), "{url}");
        }
    }
}

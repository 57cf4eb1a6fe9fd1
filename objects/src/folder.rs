//! The embedded default store: buckets are folders under a root, keys are relative paths.
//!
//! Layout of an object `<bucket>/<dir>/<name>`:
//!
//! - `<root>/<bucket>/<dir>/<name>`: the bytes, exactly as given to `put`;
//! - `<root>/<bucket>/<dir>/.<name>.meta.json`: its [`ObjectMeta`] as JSON (the sidecar);
//! - `<root>/<bucket>/<dir>/.<name>.<uuid>.tmp`: a write in progress.
//!
//! Keys never have a segment starting with `.` ([`crate::validate_key`]), so these dot-files
//! cannot clash with an object, and `list` skips every dot-name.
//!
//! A `put` writes the sidecar and the object each to a temporary file, fsyncs both, renames the
//! sidecar into place, then the object, and fsyncs the folder. Renames are atomic, so a reader
//! sees the old object or the new one, never part of one, and an object that is visible already
//! has its sidecar. On an overwrite of an existing key the pair is not replaced as one: between
//! the two renames a `head` sees the new metadata with the old bytes. Keys here are result ids
//! written once (a retried put writes the same bytes), so that window does not matter in practice.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::{
    check_put, validate_bucket_name, validate_key, validate_prefix, ObjectInfo, ObjectMeta,
    ObjectStore, StoreError, StoreOptions,
};

/// An [`ObjectStore`] in a local folder (`file://<path>`). See the module documentation for the
/// layout and why a reader never sees half an object.
#[derive(Debug, Clone)]
pub struct FolderStore {
    root: PathBuf,
    create_buckets: bool,
}

impl FolderStore {
    /// A store rooted at `root`. With `create_buckets`, the root is created when missing (the
    /// embedded default needs no set-up); without, a missing root makes [`ObjectStore::check`]
    /// fail and every call report its bucket missing.
    pub async fn new(root: impl Into<PathBuf>, options: StoreOptions) -> Result<Self, StoreError> {
        let root = root.into();
        if options.create_buckets {
            let folder = root.clone();
            blocking(move || create_root(&folder)).await?;
        }
        Ok(FolderStore {
            root,
            create_buckets: options.create_buckets,
        })
    }

    /// The folder holding the buckets.
    pub fn root(&self) -> &Path {
        &self.root
    }
}

#[async_trait::async_trait]
impl ObjectStore for FolderStore {
    async fn put(
        &self,
        bucket: &str,
        key: &str,
        body: Bytes,
        meta: &ObjectMeta,
    ) -> Result<(), StoreError> {
        check_put(bucket, key, &body, meta)?;
        let sidecar = serde_json::to_vec(&ObjectMeta {
            sha256: meta.sha256.to_ascii_lowercase(),
            ..meta.clone()
        })
        .map_err(|error| StoreError::Backend {
            operation: "encode object metadata",
            target: format!("{bucket}/{key}"),
            detail: error.to_string(),
            transient: false,
            source: Some(Box::new(error)),
        })?;
        let root = self.root.clone();
        let (bucket, key) = (bucket.to_owned(), key.to_owned());
        let create_buckets = self.create_buckets;
        blocking(move || put_blocking(&root, &bucket, &key, &body, &sidecar, create_buckets)).await
    }

    async fn get(&self, bucket: &str, key: &str) -> Result<Bytes, StoreError> {
        self.at_object(bucket, key, |at| match fs::read(&at.path) {
            Ok(bytes) => Ok(Bytes::from(bytes)),
            Err(error) => Err(at.missing_or_io("read", error)),
        })
        .await
    }

    async fn head(&self, bucket: &str, key: &str) -> Result<ObjectInfo, StoreError> {
        self.at_object(bucket, key, |at| {
            let size = match fs::metadata(&at.path) {
                Ok(info) if info.is_file() => info.len(),
                Ok(_) => return Err(no_such_key(&at.bucket, &at.key)),
                Err(error) => return Err(at.missing_or_io("stat", error)),
            };
            let meta = read_sidecar(&sidecar_path(&at.path));
            Ok(ObjectInfo {
                key: at.key,
                size,
                meta,
            })
        })
        .await
    }

    async fn delete(&self, bucket: &str, key: &str) -> Result<(), StoreError> {
        self.at_object(bucket, key, |at| {
            if !at.root.join(&at.bucket).is_dir() {
                return Err(StoreError::NoSuchBucket { bucket: at.bucket });
            }
            match fs::remove_file(&at.path) {
                Ok(()) => {}
                Err(error)
                    if matches!(
                        error.kind(),
                        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                    ) =>
                {
                    return Ok(())
                }
                Err(error) if error.kind() == io::ErrorKind::IsADirectory => {
                    return Ok(()); // a folder of other objects, not an object
                }
                Err(source) => {
                    return Err(StoreError::Io {
                        op: "remove",
                        path: at.path,
                        source,
                    })
                }
            }
            let _ = fs::remove_file(sidecar_path(&at.path));
            sync_folder(at.path.parent().unwrap_or(&at.root))
        })
        .await
    }

    async fn list(&self, bucket: &str, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        validate_bucket_name(bucket)?;
        validate_prefix(prefix)?;
        let root = self.root.clone();
        let (bucket, prefix) = (bucket.to_owned(), prefix.to_owned());
        blocking(move || list_blocking(&root, &bucket, &prefix)).await
    }

    async fn ensure_bucket(&self, bucket: &str) -> Result<(), StoreError> {
        validate_bucket_name(bucket)?;
        let root = self.root.clone();
        let bucket = bucket.to_owned();
        blocking(move || {
            create_root(&root)?;
            create_folders(&root, Path::new(&bucket))
        })
        .await
    }

    async fn check(&self) -> Result<(), StoreError> {
        let root = self.root.clone();
        let endpoint = self.describe();
        blocking(move || match fs::metadata(&root) {
            Ok(info) if info.is_dir() => Ok(()),
            Ok(_) => Err(StoreError::Unreachable {
                endpoint,
                detail: format!("{} is not a folder", root.display()),
                source: "the object store root is not a folder".into(),
            }),
            Err(source) => Err(StoreError::Unreachable {
                endpoint,
                detail: format!("cannot open {}: {source}", root.display()),
                source: Box::new(source),
            }),
        })
        .await
    }

    fn describe(&self) -> String {
        format!("file://{}", self.root.display())
    }
}

/// Run file system work off the async threads. A panic inside is a bug and is passed on.
fn create_root(root: &Path) -> Result<(), StoreError> {
    fs::create_dir_all(root).map_err(|source| StoreError::Io {
        op: "create the root folder",
        path: root.to_path_buf(),
        source,
    })
}

/// One object's names and file, for work on a blocking thread.
struct At {
    root: PathBuf,
    bucket: String,
    key: String,
    path: PathBuf,
}

impl At {
    fn missing_or_io(&self, op: &'static str, error: std::io::Error) -> StoreError {
        missing_or_io(&self.root, &self.bucket, &self.key, op, &self.path, error)
    }
}

impl FolderStore {
    /// Checks the names, then runs `work` on a blocking thread with the object's file.
    async fn at_object<T, F>(&self, bucket: &str, key: &str, work: F) -> Result<T, StoreError>
    where
        F: FnOnce(At) -> Result<T, StoreError> + Send + 'static,
        T: Send + 'static,
    {
        validate_bucket_name(bucket)?;
        validate_key(key)?;
        let path = self.root.join(bucket).join(key);
        let at = At {
            root: self.root.clone(),
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            path,
        };
        blocking(move || work(at)).await
    }
}

async fn blocking<T, F>(work: F) -> Result<T, StoreError>
where
    F: FnOnce() -> Result<T, StoreError> + Send + 'static,
    T: Send + 'static,
{
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result,
        Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
        Err(error) => Err(StoreError::Backend {
            operation: "folder store task",
            target: "the blocking thread pool".into(),
            detail: "cancelled while the runtime shut down".into(),
            transient: true,
            source: Some(Box::new(error)),
        }),
    }
}

fn put_blocking(
    root: &Path,
    bucket: &str,
    key: &str,
    body: &[u8],
    sidecar: &[u8],
    create_buckets: bool,
) -> Result<(), StoreError> {
    let bucket_dir = root.join(bucket);
    match fs::metadata(&bucket_dir) {
        Ok(info) if info.is_dir() => {}
        Ok(_) => {
            return Err(StoreError::Io {
                op: "use as a bucket folder",
                path: bucket_dir,
                source: io::Error::new(io::ErrorKind::NotADirectory, "not a folder"),
            })
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            if !create_buckets {
                return Err(StoreError::NoSuchBucket {
                    bucket: bucket.to_owned(),
                });
            }
            fs::create_dir_all(root).map_err(|source| StoreError::Io {
                op: "create the root folder",
                path: root.to_path_buf(),
                source,
            })?;
            create_folders(root, Path::new(bucket))?;
        }
        Err(source) => {
            return Err(StoreError::Io {
                op: "open the bucket folder",
                path: bucket_dir,
                source,
            })
        }
    }

    let key_path = Path::new(key);
    let object_path = bucket_dir.join(key_path);
    if let Some(parent) = key_path.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_folders(&bucket_dir, parent).map_err(|error| match error {
            // `a/b` is an object, so `a/b/c` cannot be one here (S3 has no such limit).
            StoreError::Io { source, .. }
                if matches!(
                    source.kind(),
                    io::ErrorKind::NotADirectory | io::ErrorKind::AlreadyExists
                ) =>
            {
                StoreError::InvalidName {
                    what: format!("object key {key:?}"),
                    reason: "part of its path is already an object in this folder store".into(),
                }
            }
            other => other,
        })?;
    }
    let folder = object_path
        .parent()
        .unwrap_or(bucket_dir.as_path())
        .to_path_buf();
    let name = key_path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or(key)
        .to_owned();

    if object_path.is_dir() {
        return Err(folder_in_the_way(key));
    }

    let sidecar_tmp = write_temp(&folder, &name, sidecar)?;
    let object_tmp = match write_temp(&folder, &name, body) {
        Ok(path) => path,
        Err(error) => {
            let _ = fs::remove_file(&sidecar_tmp);
            return Err(error);
        }
    };
    let renamed = rename(&sidecar_tmp, &sidecar_path(&object_path)).and_then(|()| {
        rename(&object_tmp, &object_path).map_err(|error| match error {
            StoreError::Io { source, .. } if source.kind() == io::ErrorKind::IsADirectory => {
                folder_in_the_way(key)
            }
            other => other,
        })
    });
    if let Err(error) = renamed {
        let _ = fs::remove_file(&sidecar_tmp);
        let _ = fs::remove_file(&object_tmp);
        return Err(error);
    }
    sync_folder(&folder)
}

/// `a/b/c` is an object, so `a/b` cannot be one here (S3 has no such limit).
fn folder_in_the_way(key: &str) -> StoreError {
    StoreError::InvalidName {
        what: format!("object key {key:?}"),
        reason: "a folder of other objects already has this path in this folder store".into(),
    }
}

/// Write `bytes` to a new hidden temporary file next to `name` and fsync it.
fn write_temp(folder: &Path, name: &str, bytes: &[u8]) -> Result<PathBuf, StoreError> {
    let path = folder.join(format!(".{name}.{}.tmp", uuid::Uuid::new_v4().simple()));
    let written = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .and_then(|mut file| {
            file.write_all(bytes)?;
            file.sync_all()
        });
    match written {
        Ok(()) => Ok(path),
        Err(source) => {
            let _ = fs::remove_file(&path);
            Err(StoreError::Io {
                op: "write",
                path,
                source,
            })
        }
    }
}

fn rename(from: &Path, to: &Path) -> Result<(), StoreError> {
    fs::rename(from, to).map_err(|source| StoreError::Io {
        op: "rename into place",
        path: to.to_path_buf(),
        source,
    })
}

/// fsync a folder, so the names created or renamed in it survive a crash.
fn sync_folder(folder: &Path) -> Result<(), StoreError> {
    File::open(folder)
        .and_then(|dir| dir.sync_all())
        .map_err(|source| StoreError::Io {
            op: "fsync folder",
            path: folder.to_path_buf(),
            source,
        })
}

/// Create each missing folder of `relative` under `base`, fsyncing the parent of each folder
/// created so the new entry is durable before an object inside it is reported stored.
fn create_folders(base: &Path, relative: &Path) -> Result<(), StoreError> {
    let mut current = base.to_path_buf();
    for part in relative.components() {
        let parent = current.clone();
        current.push(part);
        match fs::create_dir(&current) {
            Ok(()) => sync_folder(&parent)?,
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists && current.is_dir() => {}
            Err(source) => {
                return Err(StoreError::Io {
                    op: "create folder",
                    path: current,
                    source,
                })
            }
        }
    }
    Ok(())
}

fn sidecar_path(object_path: &Path) -> PathBuf {
    let name = object_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    object_path.with_file_name(format!(".{name}.meta.json"))
}

/// The metadata beside an object, or `None` when there is none (an object not written by `put`)
/// or it cannot be read; the object itself is still served.
fn read_sidecar(path: &Path) -> Option<ObjectMeta> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return None,
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "cannot read object metadata");
            return None;
        }
    };
    match serde_json::from_slice(&bytes) {
        Ok(meta) => Some(meta),
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "object metadata is not valid JSON");
            None
        }
    }
}

fn no_such_key(bucket: &str, key: &str) -> StoreError {
    StoreError::NoSuchKey {
        bucket: bucket.to_owned(),
        key: key.to_owned(),
    }
}

/// Turn a failed read of an object into `NoSuchBucket`, `NoSuchKey` or an I/O error.
fn missing_or_io(
    root: &Path,
    bucket: &str,
    key: &str,
    op: &'static str,
    path: &Path,
    error: io::Error,
) -> StoreError {
    match error.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory | io::ErrorKind::IsADirectory => {
            if root.join(bucket).is_dir() {
                no_such_key(bucket, key)
            } else {
                StoreError::NoSuchBucket {
                    bucket: bucket.to_owned(),
                }
            }
        }
        _ => StoreError::Io {
            op,
            path: path.to_path_buf(),
            source: error,
        },
    }
}

/// What a stat of a listed entry found: `None` when the entry was overwritten or removed since
/// the folder was read.
fn stat<T>(entry: &fs::DirEntry, result: io::Result<T>) -> Result<Option<T>, StoreError> {
    match result {
        Ok(found) => Ok(Some(found)),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(StoreError::Io {
            op: "stat",
            path: entry.path(),
            source,
        }),
    }
}

fn list_blocking(root: &Path, bucket: &str, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
    let bucket_dir = root.join(bucket);
    if !bucket_dir.is_dir() {
        return Err(StoreError::NoSuchBucket {
            bucket: bucket.to_owned(),
        });
    }
    // Start at the deepest folder the prefix names in full; its last, partial segment only
    // filters.
    let start_key = match prefix.rfind('/') {
        Some(end) => &prefix[..=end],
        None => "",
    };
    let mut found = Vec::new();
    let mut pending = vec![(bucket_dir.join(start_key), start_key.to_owned())];
    while let Some((folder, folder_key)) = pending.pop() {
        let entries = match fs::read_dir(&folder) {
            Ok(entries) => entries,
            // The prefix names a folder that does not exist (or a file): nothing under it.
            Err(error)
                if matches!(
                    error.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                ) =>
            {
                continue
            }
            Err(source) => {
                return Err(StoreError::Io {
                    op: "list folder",
                    path: folder,
                    source,
                })
            }
        };
        for entry in entries {
            let entry = entry.map_err(|source| StoreError::Io {
                op: "list folder",
                path: folder.clone(),
                source,
            })?;
            let Ok(name) = entry.file_name().into_string() else {
                continue; // not UTF-8, so not a key this store wrote
            };
            if name.starts_with('.') {
                continue; // sidecars, writes in progress, and anything else hidden
            }
            let key = format!("{folder_key}{name}");
            let Some(file_type) = stat(&entry, entry.file_type())? else {
                continue;
            };
            if file_type.is_dir() {
                let sub_key = format!("{key}/");
                if sub_key.starts_with(prefix) || prefix.starts_with(&sub_key) {
                    pending.push((entry.path(), sub_key));
                }
            } else if file_type.is_file() && key.starts_with(prefix) {
                let Some(size) = stat(&entry, entry.metadata())?.map(|info| info.len()) else {
                    continue;
                };
                found.push(ObjectInfo {
                    key,
                    size,
                    meta: None,
                });
            }
        }
    }
    // S3 order is byte order of the whole key, which is not folder-by-folder order
    // (`a-b/x` < `a/x`, since '-' < '/').
    found.sort_unstable_by(|a, b| a.key.cmp(&b.key));
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sha256_hex;

    fn meta_for(body: &[u8]) -> ObjectMeta {
        ObjectMeta {
            stream_id: "s1".into(),
            fetched_at: "2024-05-01T10:00:00Z".into(),
            sha256: sha256_hex(body),
        }
    }

    /// A store rooted at `root`.
    async fn store_at(root: &Path, create_buckets: bool) -> FolderStore {
        FolderStore::new(root, StoreOptions { create_buckets })
            .await
            .unwrap()
    }

    /// Stores `body` under `key` in the bucket `results`.
    async fn put(store: &FolderStore, key: &str, body: &Bytes) -> Result<(), StoreError> {
        store
            .put("results", key, body.clone(), &meta_for(body))
            .await
    }

    fn names_in(folder: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(folder)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    #[tokio::test]
    async fn put_leaves_the_object_and_a_hidden_sidecar_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_at(dir.path(), true).await;
        let body = Bytes::from_static(b"{\"a\":1}");
        put(&store, "x/dt=2024-05-01/r1.json", &body).await.unwrap();
        let folder = dir.path().join("results/x/dt=2024-05-01");
        assert_eq!(names_in(&folder), [".r1.json.meta.json", "r1.json"]);
        let sidecar: ObjectMeta =
            serde_json::from_slice(&fs::read(folder.join(".r1.json.meta.json")).unwrap()).unwrap();
        assert_eq!(sidecar, meta_for(&body));
    }

    #[tokio::test]
    async fn hidden_files_and_foreign_objects_are_handled() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_at(dir.path(), false).await;
        let folder = dir.path().join("results/p");
        fs::create_dir_all(&folder).unwrap();
        // A write that crashed half-way, and an object copied in by hand without metadata.
        fs::write(folder.join(".r1.json.0123.tmp"), b"half").unwrap();
        fs::write(folder.join("copied.json"), b"[]").unwrap();
        let listed = store.list("results", "").await.unwrap();
        assert_eq!(
            listed,
            [ObjectInfo {
                key: "p/copied.json".into(),
                size: 2,
                meta: None
            }]
        );
        let head = store.head("results", "p/copied.json").await.unwrap();
        assert_eq!(head.meta, None);
        assert_eq!(head.size, 2);
    }

    #[tokio::test]
    async fn an_object_cannot_also_be_a_folder() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_at(dir.path(), true).await;
        let body = Bytes::from_static(b"1");
        put(&store, "a/b", &body).await.unwrap();
        let err = put(&store, "a/b/c", &body).await.unwrap_err();
        assert!(matches!(err, StoreError::InvalidName { .. }), "{err}");
        let err = put(&store, "a", &body).await.unwrap_err();
        assert!(matches!(err, StoreError::InvalidName { .. }), "{err}");
        assert_eq!(store.get("results", "a/b").await.unwrap(), body);
        // No temporary files are left behind by the failed puts.
        assert_eq!(
            names_in(&dir.path().join("results/a")),
            [".b.meta.json", "b"]
        );
        assert_eq!(names_in(&dir.path().join("results")), ["a"]);
    }

    #[tokio::test]
    async fn check_fails_when_the_root_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("absent");
        let store = store_at(&root, false).await;
        let err = store.check().await.unwrap_err();
        assert!(matches!(err, StoreError::Unreachable { .. }), "{err}");
        assert!(err.is_transient());
        assert!(
            err.to_string().contains(&root.display().to_string()),
            "{err}"
        );
        assert!(!root.exists());
        store.ensure_bucket("results").await.unwrap();
        store.check().await.unwrap();
        assert!(root.join("results").is_dir());
    }
}

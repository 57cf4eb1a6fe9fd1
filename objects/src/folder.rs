//! The embedded default store: buckets are folders under a root, keys are relative paths.
//!
//! Layout of an object `<bucket>/<dir>/<name>`:
//!
//! - `<root>/<bucket>/<dir>/<name>`: the bytes, exactly as given to `put`, with its
//!   [`ObjectMeta`] as JSON in the extended attribute `user.data-streams.meta` of the same file;
//! - `<root>/<bucket>/<dir>/.<name>.<uuid>.tmp`: a write in progress.
//!
//! So a data partition holds the objects and nothing else: a query engine's glob
//! (`…/dt=*/*.json`) reads raw responses only. On a file system without user extended attributes
//! (the store finds out on its first write, or `OBJECT_STORE_FOLDER_METADATA=tree` asks for it)
//! the metadata goes to a parallel tree outside the buckets instead:
//! `<root>/.meta/<bucket>/<dir>/<name>.json`. Objects written by earlier versions have a hidden
//! sidecar `<root>/<bucket>/<dir>/.<name>.meta.json`; `head` still reads it and `delete` removes
//! it (the layout migration moves such objects and drops their sidecars).
//!
//! Keys never have a segment starting with `.` ([`crate::validate_key`]) and bucket names never
//! start with one, so these dot-names cannot clash with an object, and `list` skips them all.
//!
//! A `put` writes the object to a temporary file, sets its metadata attribute, fsyncs it, renames
//! it into place and fsyncs the folder. The rename is atomic, so a reader sees the old object or
//! the new one, never part of one, and the bytes and their metadata are replaced as one. In the
//! tree mode the metadata file is written and renamed first, so a visible object already has its
//! metadata (between the two renames of an overwrite a `head` sees the new metadata with the old
//! bytes; keys here are result ids written once, so that window does not matter in practice).
//!
//! A `put_new` (create only if absent) writes the same fsynced temporary file and publishes it
//! with link(2) instead of rename(2): link never replaces a name, so of two puts racing for a
//! key exactly one gets it, and the other finds a complete object (the temporary name is
//! removed either way, and one folder fsync covers both changes). It needs a file system with
//! hard links (ext4, xfs, btrfs, tmpfs, overlayfs; not FAT).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;

use crate::{
    check_put, validate_bucket_name, validate_key, validate_prefix, Created, ObjectInfo,
    ObjectMeta, ObjectStore, StoreError, StoreOptions,
};

/// The extended attribute holding an object's [`ObjectMeta`] (JSON).
const META_XATTR: &str = "user.data-streams.meta";
/// The folder under the root holding the metadata tree (when extended attributes are not used).
const META_TREE: &str = ".meta";

/// Where the folder store keeps each object's metadata (`OBJECT_STORE_FOLDER_METADATA`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum FolderMetadata {
    /// An extended attribute of the object's file, falling back to the tree on a file system
    /// that has none.
    #[default]
    Auto,
    /// A parallel tree `<root>/.meta/<bucket>/<key>.json`: one more file and fsync per object.
    Tree,
}

/// An [`ObjectStore`] in a local folder (`file://<path>`). See the module documentation for the
/// layout and why a reader never sees half an object.
#[derive(Debug, Clone)]
pub struct FolderStore {
    root: PathBuf,
    create_buckets: bool,
    /// Set when metadata goes to the tree: asked for, or the file system refused an attribute.
    tree: Arc<AtomicBool>,
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
            tree: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Where this store keeps metadata from now on.
    pub fn with_metadata(self, metadata: FolderMetadata) -> Self {
        self.tree
            .store(metadata == FolderMetadata::Tree, Ordering::Relaxed);
        self
    }

    /// Whether metadata goes to the parallel tree (asked for, or no extended attributes here).
    pub fn metadata_in_tree(&self) -> bool {
        self.tree.load(Ordering::Relaxed)
    }

    /// The folder holding the buckets.
    pub fn root(&self) -> &Path {
        &self.root
    }
}

impl FolderStore {
    /// `put` and `put_new`: the same checks and temporary file, published as `publish` says.
    async fn store(
        &self,
        bucket: &str,
        key: &str,
        body: Bytes,
        meta: &ObjectMeta,
        publish: Publish,
    ) -> Result<Created, StoreError> {
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
        let tree = self.tree.clone();
        blocking(move || {
            let object = Object {
                root: &root,
                bucket: &bucket,
                key: &key,
            };
            put_blocking(object, &body, &sidecar, create_buckets, &tree, publish)
        })
        .await
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
        self.store(bucket, key, body, meta, Publish::Replace)
            .await
            .map(|_| ())
    }

    async fn put_new(
        &self,
        bucket: &str,
        key: &str,
        body: Bytes,
        meta: &ObjectMeta,
    ) -> Result<Created, StoreError> {
        self.store(bucket, key, body, meta, Publish::IfAbsent).await
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
            let meta = read_meta(&at.root, &at.bucket, &at.key, &at.path);
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
            let _ = fs::remove_file(tree_path(&at.root, &at.bucket, &at.key));
            sync_folder(at.path.parent().unwrap_or(&at.root))
        })
        .await
    }

    async fn list(&self, bucket: &str, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        validate_bucket_name(bucket)?;
        validate_prefix(prefix)?;
        let root = self.root.clone();
        let (bucket, prefix) = (bucket.to_owned(), prefix.to_owned());
        blocking(move || list_blocking(&root, &bucket, &prefix, "")).await
    }

    async fn list_after(
        &self,
        bucket: &str,
        prefix: &str,
        start_after: &str,
        limit: usize,
    ) -> Result<Vec<ObjectInfo>, StoreError> {
        validate_bucket_name(bucket)?;
        validate_prefix(prefix)?;
        validate_prefix(start_after)?;
        let root = self.root.clone();
        let (bucket, prefix, start_after) =
            (bucket.to_owned(), prefix.to_owned(), start_after.to_owned());
        blocking(move || {
            let mut found = list_blocking(&root, &bucket, &prefix, &start_after)?;
            found.truncate(limit);
            Ok(found)
        })
        .await
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

/// How a complete temporary file becomes the object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Publish {
    /// rename(2): replaces whatever is there.
    Replace,
    /// link(2), then the temporary name is removed: fails with `EEXIST` when the name is
    /// taken, so the first object stored under a key stays.
    IfAbsent,
}

/// One object's names, for work on a blocking thread.
#[derive(Clone, Copy)]
struct Object<'a> {
    root: &'a Path,
    bucket: &'a str,
    key: &'a str,
}

fn put_blocking(
    object: Object<'_>,
    body: &[u8],
    meta: &[u8],
    create_buckets: bool,
    tree: &AtomicBool,
    publish: Publish,
) -> Result<Created, StoreError> {
    let Object { root, bucket, key } = object;
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

    // The metadata rides on the object's own file; only where the file system has no extended
    // attributes does it go to the tree, written and renamed before the object.
    let object_tmp = if tree.load(Ordering::Relaxed) {
        None
    } else {
        match write_temp(&folder, &name, body, Some(meta)) {
            Ok(path) => Some(path),
            Err(StoreError::Io { source, .. }) if xattrs_unsupported(&source) => {
                tracing::warn!(
                    root = %root.display(),
                    "this file system has no user extended attributes: object metadata goes \
                     to {}/{META_TREE}/ instead (one more file and fsync per object)",
                    root.display()
                );
                tree.store(true, Ordering::Relaxed);
                None
            }
            Err(error) => return Err(error),
        }
    };
    if publish == Publish::IfAbsent {
        return publish_if_absent(object, &folder, &name, &object_path, object_tmp, body, meta);
    }
    let object_tmp = match object_tmp {
        Some(path) => path,
        None => {
            put_tree_meta(root, bucket, key, meta)?;
            write_temp(&folder, &name, body, None)?
        }
    };
    if let Err(error) = rename(&object_tmp, &object_path).map_err(|error| match error {
        StoreError::Io { source, .. } if source.kind() == io::ErrorKind::IsADirectory => {
            folder_in_the_way(key)
        }
        other => other,
    }) {
        let _ = fs::remove_file(&object_tmp);
        return Err(error);
    }
    sync_folder(&folder)?;
    Ok(Created::New)
}

/// The second half of a conditional put: `object_tmp` (complete and fsynced, with its metadata
/// attribute; `None` in the tree mode, where the bytes are written here) gets the object's name
/// with link(2), which refuses a name that exists, and loses its own. Only a complete file is
/// ever linked, so a half-written temporary file is never an object, and a name that exists is
/// a whole object (or a folder, which is refused as by `put`).
///
/// In the tree mode the metadata is written after the link, not before as by `put`: written
/// first, it would replace the metadata of an object that turns out to exist. So for a moment
/// (for ever, after a crash right there) the new object has no metadata; `head` then says
/// `None`, and the reconciler hashes the bytes.
fn publish_if_absent(
    object: Object<'_>,
    folder: &Path,
    name: &str,
    object_path: &Path,
    object_tmp: Option<PathBuf>,
    body: &[u8],
    meta: &[u8],
) -> Result<Created, StoreError> {
    let Object { root, bucket, key } = object;
    let in_tree = object_tmp.is_none();
    let object_tmp = match object_tmp {
        Some(path) => path,
        None => write_temp(folder, name, body, None)?,
    };
    let linked = fs::hard_link(&object_tmp, object_path);
    // Linked or not, the temporary name goes: the object (if any) has its own.
    let _ = fs::remove_file(&object_tmp);
    match linked {
        Ok(()) => {
            if in_tree {
                put_tree_meta(root, bucket, key, meta)?;
            }
            sync_folder(folder)?;
            Ok(Created::New)
        }
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {
            let size = match fs::metadata(object_path) {
                Ok(info) if info.is_dir() => return Err(folder_in_the_way(key)),
                Ok(info) => info.len(),
                // Deleted since: a put in a race with a delete; the caller may try again.
                Err(source) => {
                    return Err(StoreError::Io {
                        op: "stat the object already stored at",
                        path: object_path.to_path_buf(),
                        source,
                    })
                }
            };
            Ok(Created::Existing(ObjectInfo {
                key: key.to_owned(),
                size,
                meta: read_meta(root, bucket, key, object_path),
            }))
        }
        Err(source) => Err(StoreError::Io {
            op: "link into place",
            path: object_path.to_path_buf(),
            source,
        }),
    }
}

/// Whether a failed write means "no user extended attributes on this file system".
fn xattrs_unsupported(error: &io::Error) -> bool {
    error.raw_os_error() == Some(libc::ENOTSUP)
}

/// Writes the metadata of `bucket/key` into the tree (temporary file, fsync, rename, fsync).
fn put_tree_meta(root: &Path, bucket: &str, key: &str, meta: &[u8]) -> Result<(), StoreError> {
    let path = tree_path(root, bucket, key);
    let folder = path.parent().unwrap_or(root).to_path_buf();
    let relative = folder.strip_prefix(root).unwrap_or(&folder).to_path_buf();
    create_folders(root, &relative)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = write_temp(&folder, &name, meta, None)?;
    if let Err(error) = rename(&tmp, &path) {
        let _ = fs::remove_file(&tmp);
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

/// Write `bytes` to a new hidden temporary file next to `name`, with `meta` in its metadata
/// attribute when given, and fsync it (the attribute is part of the file's inode, so the same
/// fsync makes it durable).
fn write_temp(
    folder: &Path,
    name: &str,
    bytes: &[u8],
    meta: Option<&[u8]>,
) -> Result<PathBuf, StoreError> {
    use xattr::FileExt as _;
    let path = folder.join(format!(".{name}.{}.tmp", uuid::Uuid::new_v4().simple()));
    let written = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .and_then(|mut file| {
            file.write_all(bytes)?;
            if let Some(meta) = meta {
                file.set_xattr(META_XATTR, meta)?;
            }
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

/// Where the tree mode keeps the metadata of `bucket/key`.
fn tree_path(root: &Path, bucket: &str, key: &str) -> PathBuf {
    root.join(META_TREE)
        .join(bucket)
        .join(format!("{key}.json"))
}

/// The sidecar of an object written before metadata moved out of the partitions.
fn sidecar_path(object_path: &Path) -> PathBuf {
    let name = object_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    object_path.with_file_name(format!(".{name}.meta.json"))
}

/// An object's metadata: its attribute, else its entry in the tree, else an older version's
/// sidecar; `None` when there is none (an object not written by `put`) or it cannot be read; the
/// object itself is still served.
fn read_meta(root: &Path, bucket: &str, key: &str, object_path: &Path) -> Option<ObjectMeta> {
    match xattr::get(object_path, META_XATTR) {
        Ok(Some(bytes)) => return decode_meta(object_path, &bytes),
        Ok(None) => {}
        Err(error) if xattrs_unsupported(&error) => {}
        Err(error) => {
            tracing::warn!(path = %object_path.display(), %error, "cannot read object metadata");
            return None;
        }
    }
    read_meta_file(&tree_path(root, bucket, key))
        .or_else(|| read_meta_file(&sidecar_path(object_path)))
}

fn read_meta_file(path: &Path) -> Option<ObjectMeta> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(error)
            if matches!(
                error.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
            ) =>
        {
            return None
        }
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "cannot read object metadata");
            return None;
        }
    };
    decode_meta(path, &bytes)
}

fn decode_meta(path: &Path, bytes: &[u8]) -> Option<ObjectMeta> {
    match serde_json::from_slice(bytes) {
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

/// Every object under `prefix` whose key sorts after `start_after` (all of them when it is
/// empty), in key order. A folder whose keys all sort before `start_after` is not read: a
/// stream's timeline resumed at its last day reads that day's folder and the ones after.
fn list_blocking(
    root: &Path,
    bucket: &str,
    prefix: &str,
    start_after: &str,
) -> Result<Vec<ObjectInfo>, StoreError> {
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
                if (sub_key.starts_with(prefix) || prefix.starts_with(&sub_key))
                    && !wholly_before(&sub_key, start_after)
                {
                    pending.push((entry.path(), sub_key));
                }
            } else if file_type.is_file() && key.starts_with(prefix) && key.as_str() > start_after {
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

/// Whether every key under the folder `folder_key` (ending in `/`) sorts at or before
/// `start_after`: they all begin with `folder_key`, so that is when `folder_key` sorts before
/// `start_after` and is not a beginning of it.
fn wholly_before(folder_key: &str, start_after: &str) -> bool {
    folder_key < start_after && !start_after.starts_with(folder_key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sha256_hex;

    #[test]
    fn a_folder_is_skipped_only_when_all_its_keys_sort_before_the_start() {
        // Nothing to skip from the beginning.
        assert!(!wholly_before("a/dt=2024-05-01/", ""));
        assert!(wholly_before("a/dt=2024-05-01/", "a/dt=2024-05-02/x.json"));
        // The start is inside the folder: part of it comes after.
        assert!(!wholly_before("a/dt=2024-05-02/", "a/dt=2024-05-02/x.json"));
        // A day prefix without its '/' starts at that day.
        assert!(!wholly_before("a/dt=2024-05-02/", "a/dt=2024-05-02"));
        assert!(!wholly_before("a/dt=2024-05-03/", "a/dt=2024-05-02/x.json"));
        // Byte order, not folder order: "a-b/" < "a/" since '-' < '/'.
        assert!(wholly_before("a-b/", "a/"));
        assert!(!wholly_before("a/", "a-b/"));
    }

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
    async fn put_leaves_the_object_alone_with_its_metadata_attribute() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_at(dir.path(), true).await;
        let body = Bytes::from_static(b"{\"a\":1}");
        put(&store, "x/dt=2024-05-01/r1.json", &body).await.unwrap();
        let folder = dir.path().join("results/x/dt=2024-05-01");
        // A query engine's `dt=*/*.json` glob finds the object and nothing else.
        assert_eq!(names_in(&folder), ["r1.json"]);
        let attribute = xattr::get(folder.join("r1.json"), META_XATTR)
            .unwrap()
            .expect("the metadata attribute");
        let meta: ObjectMeta = serde_json::from_slice(&attribute).unwrap();
        assert_eq!(meta, meta_for(&body));
        assert!(!store.metadata_in_tree());
        assert!(!dir.path().join(META_TREE).exists());
        let head = store
            .head("results", "x/dt=2024-05-01/r1.json")
            .await
            .unwrap();
        assert_eq!(head.meta, Some(meta_for(&body)));
    }

    #[tokio::test]
    async fn the_tree_mode_keeps_metadata_outside_the_buckets() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_at(dir.path(), true)
            .await
            .with_metadata(FolderMetadata::Tree);
        let body = Bytes::from_static(b"[1]");
        put(&store, "x/dt=2024-05-01/r1.json", &body).await.unwrap();
        let folder = dir.path().join("results/x/dt=2024-05-01");
        assert_eq!(names_in(&folder), ["r1.json"]);
        assert_eq!(
            xattr::get(folder.join("r1.json"), META_XATTR).unwrap(),
            None
        );
        let tree = dir
            .path()
            .join(".meta/results/x/dt=2024-05-01/r1.json.json");
        let meta: ObjectMeta = serde_json::from_slice(&fs::read(&tree).unwrap()).unwrap();
        assert_eq!(meta, meta_for(&body));
        let head = store
            .head("results", "x/dt=2024-05-01/r1.json")
            .await
            .unwrap();
        assert_eq!(head.meta, Some(meta_for(&body)));
        // The tree is not a bucket and never lists.
        assert_eq!(store.list("results", "").await.unwrap().len(), 1);
        store
            .delete("results", "x/dt=2024-05-01/r1.json")
            .await
            .unwrap();
        assert!(!tree.exists());
        assert!(names_in(&folder).is_empty());
    }

    #[tokio::test]
    async fn objects_with_an_older_sidecar_keep_their_metadata_until_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_at(dir.path(), true).await;
        let folder = dir.path().join("results/old/dt=2024-05-01");
        fs::create_dir_all(&folder).unwrap();
        let body = b"{}";
        fs::write(folder.join("r1.json"), body).unwrap();
        fs::write(
            folder.join(".r1.json.meta.json"),
            serde_json::to_vec(&meta_for(body)).unwrap(),
        )
        .unwrap();
        let key = "old/dt=2024-05-01/r1.json";
        let head = store.head("results", key).await.unwrap();
        assert_eq!(head.meta, Some(meta_for(body)));
        store.delete("results", key).await.unwrap();
        assert!(names_in(&folder).is_empty(), "{:?}", names_in(&folder));
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
        assert_eq!(names_in(&dir.path().join("results/a")), ["b"]);
        assert_eq!(names_in(&dir.path().join("results")), ["a"]);
    }

    #[tokio::test]
    async fn a_half_written_temporary_file_is_never_the_existing_object() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_at(dir.path(), true).await;
        let folder = dir.path().join("results/s/dt=2024-05-01");
        fs::create_dir_all(&folder).unwrap();
        // A put of the same key killed half-way: its temporary file, under the name `put`
        // gives it, with half the bytes and no metadata.
        let half = folder.join(".r1.json.0123456789abcdef0123456789abcdef.tmp");
        fs::write(&half, b"{\"hal").unwrap();
        let body = Bytes::from_static(b"{\"whole\":true}");
        let key = "s/dt=2024-05-01/r1.json";
        let created = store
            .put_new("results", key, body.clone(), &meta_for(&body))
            .await
            .unwrap();
        assert_eq!(created, Created::New);
        assert_eq!(store.get("results", key).await.unwrap(), body);
        assert_eq!(
            store.head("results", key).await.unwrap().meta,
            Some(meta_for(&body))
        );
        // The stale file stays hidden and untouched (nothing sweeps temporary files); the put's
        // own temporary name is gone.
        assert_eq!(
            names_in(&folder),
            [".r1.json.0123456789abcdef0123456789abcdef.tmp", "r1.json"]
        );
        assert_eq!(fs::read(&half).unwrap(), b"{\"hal");
    }

    #[tokio::test]
    async fn put_new_in_the_tree_mode_keeps_the_first_objects_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_at(dir.path(), true)
            .await
            .with_metadata(FolderMetadata::Tree);
        let key = "x/dt=2024-05-01/r1.json";
        let first = Bytes::from_static(b"[1]");
        let second = Bytes::from_static(b"[2, 2]");
        let created = store
            .put_new("results", key, first.clone(), &meta_for(&first))
            .await
            .unwrap();
        assert_eq!(created, Created::New);
        let created = store
            .put_new("results", key, second.clone(), &meta_for(&second))
            .await
            .unwrap();
        let expected = ObjectInfo {
            key: key.into(),
            size: 3,
            meta: Some(meta_for(&first)),
        };
        assert_eq!(created, Created::Existing(expected.clone()));
        assert_eq!(store.head("results", key).await.unwrap(), expected);
        assert_eq!(
            names_in(&dir.path().join("results/x/dt=2024-05-01")),
            ["r1.json"]
        );
    }

    #[tokio::test]
    async fn put_new_refuses_a_folder_in_the_way() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_at(dir.path(), true).await;
        let body = Bytes::from_static(b"1");
        put(&store, "a/b/c", &body).await.unwrap();
        let err = store
            .put_new("results", "a/b", body.clone(), &meta_for(&body))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::InvalidName { .. }), "{err}");
        assert_eq!(names_in(&dir.path().join("results/a")), ["b"]);
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

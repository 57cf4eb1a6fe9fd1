//! Folder object stores, and the object files in them.

use std::path::{Path, PathBuf};

use uuid::Uuid;

/// The URL of a folder object store at `<dir>/objects`.
pub fn folder_store_url(dir: &Path) -> String {
    format!("file://{}", dir.join("objects").display())
}

/// Every `*.json` object file under a folder store root (hidden names, the metadata tree and
/// temporary files excluded).
pub fn object_files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "json") {
                out.push(path);
            }
        }
    }
    out
}

/// Ids of every object file of `stream_id` under a folder store root, sorted.
pub fn stream_objects(root: &Path, stream_id: &str) -> Vec<Uuid> {
    let mut out: Vec<Uuid> = object_files(root)
        .iter()
        .filter(|path| path.to_string_lossy().contains(stream_id))
        .filter_map(|path| Uuid::parse_str(path.file_stem()?.to_str()?).ok())
        .collect();
    out.sort();
    out
}

/// Panics if any stream of `ids` has two objects for one slot under a folder store `root`: a
/// slot's result id is a UUIDv7 whose time is the slot, so two fetches of one slot that were
/// both stored would show as two ids with the same time.
pub fn assert_each_slot_once(root: &Path, ids: &[String]) {
    for id in ids {
        let mut slots = std::collections::BTreeSet::new();
        for object in stream_objects(root, id) {
            let (secs, nanos) = object.get_timestamp().expect("a UUIDv7").to_unix();
            let ms = secs * 1000 + u64::from(nanos) / 1_000_000;
            assert!(slots.insert(ms), "stream {id}: slot {ms} stored twice");
        }
    }
}

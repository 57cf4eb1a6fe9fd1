//! The connected workers: one session per worker id, the newest connection winning.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use protocol::LinkHandle;

/// A connected worker.
#[derive(Debug, Clone)]
pub(super) struct Session {
    /// Tells this connection apart from an older or newer one of the same worker.
    pub(super) conn_id: u64,
    pub(super) link: LinkHandle,
    pub(super) capacity: u32,
    pub(super) adapters: Vec<String>,
}

/// Every connected worker, by id.
#[derive(Debug, Default)]
pub(super) struct Sessions {
    by_worker: Mutex<HashMap<String, Session>>,
    next_conn: AtomicU64,
}

impl Sessions {
    fn map(&self) -> MutexGuard<'_, HashMap<String, Session>> {
        // Critical sections are single map operations; a poisoned map is still consistent.
        self.by_worker.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a connection; returns its id and the session it replaced, if any.
    pub(super) fn insert(
        &self,
        worker_id: &str,
        capacity: u32,
        adapters: Vec<String>,
        link: LinkHandle,
    ) -> (u64, Option<Session>) {
        let conn_id = self.next_conn.fetch_add(1, Ordering::Relaxed) + 1;
        let session = Session {
            conn_id,
            link,
            capacity,
            adapters,
        };
        let previous = self.map().insert(worker_id.to_owned(), session);
        (conn_id, previous)
    }

    /// Removes the worker's session if it is still connection `conn_id` (a newer connection
    /// stays); returns whether it did.
    pub(super) fn remove(&self, worker_id: &str, conn_id: u64) -> bool {
        let mut map = self.map();
        match map.get(worker_id) {
            Some(s) if s.conn_id == conn_id => map.remove(worker_id).is_some(),
            _ => false,
        }
    }

    pub(super) fn get(&self, worker_id: &str) -> Option<Session> {
        self.map().get(worker_id).cloned()
    }

    pub(super) fn ids(&self) -> HashSet<String> {
        self.map().keys().cloned().collect()
    }

    /// Every session as it is now.
    pub(super) fn snapshot(&self) -> Vec<(String, Session)> {
        self.map()
            .iter()
            .map(|(id, s)| (id.clone(), s.clone()))
            .collect()
    }

    pub(super) fn len(&self) -> usize {
        self.map().len()
    }
}

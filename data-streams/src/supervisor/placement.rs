//! Placement: which connected worker takes each pending stream. A pure function over what the
//! sweep read from the database and the sessions, so its rules are tested without either.

use std::collections::{HashMap, HashSet};

/// A connected worker as placement sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerSlot<'a> {
    pub id: &'a str,
    /// Adapter names it runs.
    pub adapters: &'a [String],
    /// The most streams it takes.
    pub capacity: u32,
    /// Streams assigned to it now; grows as placement hands out more.
    pub load: i64,
}

impl WorkerSlot<'_> {
    fn fits(&self, adapter: &str) -> bool {
        self.adapters.iter().any(|a| a == adapter) && self.load < i64::from(self.capacity)
    }
}

/// A stream waiting for a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingStream<'a> {
    pub adapter: &'a str,
    /// Its key's fingerprint (`SecretKey::fingerprint`).
    pub key: u64,
}

/// For each key, the connected worker that runs most of its streams (ties: the smaller id),
/// from (worker id, key fingerprint, stream count) triples.
pub fn key_homes(
    assigned: impl IntoIterator<Item = (String, u64, i64)>,
    connected: &HashSet<&str>,
) -> HashMap<u64, String> {
    let mut best: HashMap<u64, (i64, String)> = HashMap::new();
    for (worker_id, key, count) in assigned {
        if !connected.contains(worker_id.as_str()) {
            continue;
        }
        match best.get_mut(&key) {
            Some(current) => {
                if count > current.0 || (count == current.0 && worker_id < current.1) {
                    *current = (count, worker_id);
                }
            }
            None => {
                best.insert(key, (count, worker_id));
            }
        }
    }
    best.into_iter().map(|(k, (_, w))| (k, w)).collect()
}

/// Decides, in order, where each pending stream goes, as an index into `workers`:
///
/// - to its key's home when that worker has the adapter and room, so one worker's budget
///   covers the whole key (the API counts calls per key);
/// - else to the least loaded worker that has the adapter and room (ties: the smaller id), which
///   becomes the key's home if it had none;
/// - `None` when no worker can take it (no capacity, no adapter).
///
/// `workers`' loads and `homes` are updated as streams are placed.
pub fn place(
    pending: &[PendingStream<'_>],
    workers: &mut [WorkerSlot<'_>],
    homes: &mut HashMap<u64, String>,
) -> Vec<Option<usize>> {
    pending
        .iter()
        .map(|stream| {
            let home = homes.get(&stream.key).and_then(|home| {
                workers
                    .iter()
                    .position(|w| w.id == home && w.fits(stream.adapter))
            });
            let chosen = home.or_else(|| {
                workers
                    .iter()
                    .enumerate()
                    .filter(|(_, w)| w.fits(stream.adapter))
                    .min_by(|(_, a), (_, b)| a.load.cmp(&b.load).then(a.id.cmp(b.id)))
                    .map(|(i, _)| i)
            })?;
            workers[chosen].load += 1;
            homes
                .entry(stream.key)
                .or_insert_with(|| workers[chosen].id.to_owned());
            Some(chosen)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iqair() -> Vec<String> {
        vec!["IQAIR_DAILY".to_owned()]
    }

    fn stream(key: u64) -> PendingStream<'static> {
        PendingStream {
            adapter: "IQAIR_DAILY",
            key,
        }
    }

    #[test]
    fn the_least_loaded_worker_with_room_takes_a_new_key() {
        let adapters = iqair();
        let mut workers = [
            WorkerSlot {
                id: "a",
                adapters: &adapters,
                capacity: 10,
                load: 3,
            },
            WorkerSlot {
                id: "b",
                adapters: &adapters,
                capacity: 10,
                load: 1,
            },
        ];
        let mut homes = HashMap::new();
        let placed = place(&[stream(1), stream(2), stream(3)], &mut workers, &mut homes);
        // 1 → b (load 1), 2 → b (2 < 3), 3 → a (3 = 3: the smaller id).
        assert_eq!(placed, [Some(1), Some(1), Some(0)]);
        assert_eq!((workers[0].load, workers[1].load), (4, 3));
        assert_eq!(homes[&1], "b");
    }

    #[test]
    fn a_key_stays_with_its_home_while_it_has_room() {
        let adapters = iqair();
        let mut workers = [
            WorkerSlot {
                id: "a",
                adapters: &adapters,
                capacity: 3,
                load: 2,
            },
            WorkerSlot {
                id: "b",
                adapters: &adapters,
                capacity: 10,
                load: 0,
            },
        ];
        let mut homes = HashMap::from([(7, "a".to_owned())]);
        let placed = place(&[stream(7), stream(7), stream(8)], &mut workers, &mut homes);
        // The first goes home; a is then full, so the second spills to b; 8 is new.
        assert_eq!(placed, [Some(0), Some(1), Some(1)]);
        assert_eq!(homes[&7], "a", "a full home stays the home");
    }

    #[test]
    fn nothing_is_placed_without_the_adapter_or_room() {
        let adapters = iqair();
        let other = vec!["OTHER".to_owned()];
        let mut workers = [
            WorkerSlot {
                id: "a",
                adapters: &other,
                capacity: 10,
                load: 0,
            },
            WorkerSlot {
                id: "b",
                adapters: &adapters,
                capacity: 1,
                load: 1,
            },
        ];
        let mut homes = HashMap::new();
        assert_eq!(place(&[stream(1)], &mut workers, &mut homes), [None]);
        assert!(homes.is_empty());
        assert_eq!(
            place(&[], &mut workers, &mut homes),
            Vec::<Option<usize>>::new()
        );
    }

    #[test]
    fn a_key_lives_where_most_of_its_streams_run_among_connected_workers() {
        let connected = HashSet::from(["a", "b"]);
        let homes = key_homes(
            [
                ("a".to_owned(), 1, 2),
                ("b".to_owned(), 1, 5),
                ("gone".to_owned(), 1, 50),
                ("b".to_owned(), 2, 3),
                ("a".to_owned(), 2, 3),
            ],
            &connected,
        );
        assert_eq!(homes[&1], "b", "most streams, disconnected workers ignored");
        assert_eq!(homes[&2], "a", "a tie goes to the smaller id");
        assert_eq!(homes.len(), 2);
    }
}

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
    /// Its key has a call budget (a `rate_limit` other than all zeros): the key is held by one
    /// worker at a time, so one budget covers it.
    pub budgeted: bool,
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
/// - a budgeted key's stream whose home cannot take it is not placed (`None`): the key stays
///   on one worker, and the sweep moves the whole key when another worker has room for all of
///   it ([`move_target`]);
/// - else to the least loaded worker that has the adapter and room (ties: the smaller id),
///   which becomes the key's home if it had none. A budgeted key new to placement goes to the
///   least loaded worker with room for all its streams in `pending`, when one has;
/// - `None` when no worker can take it (no capacity, no adapter).
///
/// `workers`' loads and `homes` are updated as streams are placed.
pub fn place(
    pending: &[PendingStream<'_>],
    workers: &mut [WorkerSlot<'_>],
    homes: &mut HashMap<u64, String>,
) -> Vec<Option<usize>> {
    // How many streams each budgeted key without a home brings, to seat the key whole.
    let mut arriving: HashMap<u64, i64> = HashMap::new();
    for stream in pending.iter().filter(|s| s.budgeted) {
        if !homes.contains_key(&stream.key) {
            *arriving.entry(stream.key).or_insert(0) += 1;
        }
    }
    pending
        .iter()
        .map(|stream| {
            if let Some(home) = homes.get(&stream.key) {
                let at_home = workers.iter().position(|w| w.id == home);
                if let Some(i) = at_home.filter(|&i| workers[i].fits(stream.adapter)) {
                    workers[i].load += 1;
                    return Some(i);
                }
                if stream.budgeted && at_home.is_some() {
                    return None;
                }
            }
            let fitting = || {
                workers
                    .iter()
                    .enumerate()
                    .filter(|(_, w)| w.fits(stream.adapter))
            };
            let least = |(_, a): &(usize, &WorkerSlot<'_>), (_, b): &(usize, &WorkerSlot<'_>)| {
                a.load.cmp(&b.load).then(a.id.cmp(b.id))
            };
            let whole = arriving.get(&stream.key).and_then(|&n| {
                fitting()
                    .filter(|(_, w)| i64::from(w.capacity) - w.load >= n)
                    .min_by(least)
            });
            let chosen = whole.or_else(|| fitting().min_by(least))?.0;
            workers[chosen].load += 1;
            homes
                .entry(stream.key)
                .or_insert_with(|| workers[chosen].id.to_owned());
            Some(chosen)
        })
        .collect()
}

/// Where a budgeted key moves when its home is full: the least loaded other worker (ties: the
/// smaller id) that runs every adapter in `adapters` and has room for `streams` more (the
/// key's streams at home and those waiting). `None`: the key waits at home for room.
pub fn move_target(
    workers: &[WorkerSlot<'_>],
    home: &str,
    adapters: &[&str],
    streams: i64,
) -> Option<usize> {
    workers
        .iter()
        .enumerate()
        .filter(|(_, w)| w.id != home)
        .filter(|(_, w)| adapters.iter().all(|a| w.adapters.iter().any(|b| b == a)))
        .filter(|(_, w)| i64::from(w.capacity) - w.load >= streams)
        .min_by(|(_, a), (_, b)| a.load.cmp(&b.load).then(a.id.cmp(b.id)))
        .map(|(i, _)| i)
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
            budgeted: false,
        }
    }

    fn budgeted(key: u64) -> PendingStream<'static> {
        PendingStream {
            budgeted: true,
            ..stream(key)
        }
    }

    fn slot<'a>(id: &'a str, adapters: &'a [String], capacity: u32, load: i64) -> WorkerSlot<'a> {
        WorkerSlot {
            id,
            adapters,
            capacity,
            load,
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
    fn a_budgeted_key_waits_at_a_full_home_and_moves_whole() {
        let adapters = iqair();
        let mut workers = [slot("a", &adapters, 3, 2), slot("b", &adapters, 10, 0)];
        let mut homes = HashMap::from([(7, "a".to_owned())]);
        let placed = place(
            &[budgeted(7), budgeted(7), budgeted(8)],
            &mut workers,
            &mut homes,
        );
        // The first fills its home; the second waits rather than spend a second budget on b.
        assert_eq!(placed, [Some(0), None, Some(1)]);
        // b (load 1 now) has room for the key's 3 streams at home and the one waiting.
        assert_eq!(move_target(&workers, "a", &["IQAIR_DAILY"], 4), Some(1));
        assert_eq!(move_target(&workers, "a", &["IQAIR_DAILY"], 10), None);
        assert_eq!(move_target(&workers, "a", &["OTHER"], 1), None);
    }

    #[test]
    fn a_new_budgeted_key_goes_where_all_of_it_fits() {
        let adapters = iqair();
        let mut workers = [slot("a", &adapters, 2, 0), slot("b", &adapters, 10, 1)];
        let mut homes = HashMap::new();
        let placed = place(
            &[budgeted(7), budgeted(7), budgeted(7), stream(8)],
            &mut workers,
            &mut homes,
        );
        // a is less loaded but cannot hold all three; the unbudgeted key takes the least loaded.
        assert_eq!(placed, [Some(1), Some(1), Some(1), Some(0)]);
        assert_eq!(homes[&7], "b");
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

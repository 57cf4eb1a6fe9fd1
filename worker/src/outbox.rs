//! Events waiting for the supervisor's acknowledgement. Every event gets a sequence number that
//! keeps counting across reconnects; the supervisor acknowledges cumulatively after its commit,
//! and whatever is unacknowledged when a link drops is sent again on the next one. The outbox is
//! bounded: past the bound the oldest event is dropped (and counted) — the reconciler recovers
//! references from the object store, so a dropped event loses an index row, never data.

use std::collections::VecDeque;
use std::sync::Mutex;

use protocol::Event;
use tokio::sync::Notify;

/// The worker's unacknowledged events.
#[derive(Debug)]
pub struct Outbox {
    state: Mutex<State>,
    notify: Notify,
    /// Woken by every acknowledgement (the sender's window opens).
    acked: Notify,
    limit: usize,
}

#[derive(Debug)]
struct State {
    next_seq: u64,
    events: VecDeque<(u64, Event)>,
    dropped: u64,
}

impl Outbox {
    /// An outbox holding at most `limit` unacknowledged events.
    pub fn new(limit: usize) -> Self {
        Outbox {
            state: Mutex::new(State {
                next_seq: 1,
                events: VecDeque::new(),
                dropped: 0,
            }),
            notify: Notify::new(),
            acked: Notify::new(),
            limit: limit.max(1),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // Every critical section leaves the state consistent, so a poisoned lock is usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queue an event; returns its sequence number.
    pub fn push(&self, event: Event) -> u64 {
        let seq = {
            let mut state = self.state();
            let seq = state.next_seq;
            state.next_seq += 1;
            if state.events.len() >= self.limit {
                state.events.pop_front();
                state.dropped += 1;
                tracing::warn!(
                    limit = self.limit,
                    "outbox full: dropped the oldest unacknowledged event (the reconciler recovers its reference)"
                );
            }
            state.events.push_back((seq, event));
            seq
        };
        self.notify.notify_one();
        seq
    }

    /// Forget every event up to and including `seq`.
    pub fn ack(&self, seq: u64) {
        {
            let mut state = self.state();
            while state.events.front().is_some_and(|(s, _)| *s <= seq) {
                state.events.pop_front();
            }
        }
        self.acked.notify_waiters();
    }

    /// How many events up to and including `seq` wait for an acknowledgement (of those sent
    /// through `seq`: the ones in flight).
    pub fn unacked_through(&self, seq: u64) -> usize {
        self.state().events.partition_point(|(s, _)| *s <= seq)
    }

    /// A future for the next acknowledgement. Create it (and `enable` it) before checking the
    /// window, so an acknowledgement in between is not missed.
    pub fn acked(&self) -> tokio::sync::futures::Notified<'_> {
        self.acked.notified()
    }

    /// Up to `max` events with a sequence number above `after`, oldest first.
    pub fn after(&self, after: u64, max: usize) -> Vec<(u64, Event)> {
        let state = self.state();
        let start = state.events.partition_point(|(s, _)| *s <= after);
        state.events.range(start..).take(max).cloned().collect()
    }

    /// Wait until something is pushed (returns at once if a push happened since the last wait).
    pub async fn changed(&self) {
        self.notify.notified().await
    }

    /// How many events wait for an acknowledgement.
    pub fn len(&self) -> usize {
        self.state().events.len()
    }

    /// Whether nothing waits for an acknowledgement.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many events were dropped because the bound was hit.
    pub fn dropped(&self) -> u64 {
        self.state().dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev() -> Event {
        Event::WorkerAvailable {
            running: vec![],
            last: true,
        }
    }

    #[test]
    fn ack_is_cumulative_and_after_resumes_past_a_cursor() {
        let outbox = Outbox::new(10);
        for _ in 0..5 {
            outbox.push(ev());
        }
        assert_eq!(outbox.after(0, 100).len(), 5);
        assert_eq!(
            outbox
                .after(2, 100)
                .iter()
                .map(|(s, _)| *s)
                .collect::<Vec<_>>(),
            vec![3, 4, 5]
        );
        outbox.ack(3);
        assert_eq!(outbox.len(), 2);
        assert_eq!(outbox.after(0, 1)[0].0, 4);
        outbox.ack(99);
        assert!(outbox.is_empty());
        assert_eq!(outbox.push(ev()), 6, "sequence numbers never restart");
    }

    #[test]
    fn the_bound_drops_the_oldest_and_counts_it() {
        let outbox = Outbox::new(3);
        for _ in 0..5 {
            outbox.push(ev());
        }
        assert_eq!(outbox.len(), 3);
        assert_eq!(outbox.dropped(), 2);
        assert_eq!(outbox.after(0, 10)[0].0, 3);
    }

    #[test]
    fn in_flight_counts_sent_events_until_they_are_acknowledged() {
        let outbox = Outbox::new(10);
        for _ in 0..6 {
            outbox.push(ev());
        }
        assert_eq!(outbox.unacked_through(0), 0);
        assert_eq!(outbox.unacked_through(4), 4);
        outbox.ack(3);
        assert_eq!(outbox.unacked_through(4), 1);
        assert_eq!(outbox.unacked_through(6), 3);
        outbox.ack(6);
        assert_eq!(outbox.unacked_through(6), 0);
    }
}

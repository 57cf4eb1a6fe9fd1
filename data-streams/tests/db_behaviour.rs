//! The persistence layer's behaviour, written once and run on both backends: every case is an
//! `async fn(Db)` (or `async fn(url)`), stamped out as `sqlite::<case>` and `postgres::<case>`,
//! each on its own fresh database. PostgreSQL comes from `TEST_POSTGRES_URL`, a postgres
//! `DATABASE_URL`, or `postgres://postgres@127.0.0.1:5432/postgres`; an unreachable server
//! fails the tests, it never skips them.

#[path = "db_behaviour/connect.rs"]
mod connect;
#[path = "db_behaviour/events.rs"]
mod events;
#[path = "db_behaviour/fixtures.rs"]
mod fixtures;
#[path = "db_behaviour/harness.rs"]
mod harness;
#[path = "db_behaviour/streams.rs"]
mod streams;

/// One test per backend for each case: `db: Db` cases get a connected, migrated database;
/// `url: String` cases get the URL of an empty one.
macro_rules! on_both_backends {
    (
        db: [$($db_case:path => $db_name:ident),* $(,)?],
        url: [$($url_case:path => $url_name:ident),* $(,)?] $(,)?
    ) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $db_name() {
                    crate::harness::run_sqlite($db_case).await;
                }
            )*
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $url_name() {
                    crate::harness::with_sqlite_url($url_case).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $db_name() {
                    crate::harness::run_postgres($db_case).await;
                }
            )*
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $url_name() {
                    crate::harness::with_postgres_url($url_case).await;
                }
            )*
        }
    };
}

on_both_backends! {
    db: [
        crate::streams::stream_crud_round_trip => stream_crud_round_trip,
        crate::streams::stream_update => stream_update,
        crate::streams::delete_cascades => delete_cascades,
        crate::streams::set_state_failed_and_running => set_state_failed_and_running,
        crate::streams::assign_bumps_generation_and_stale_unassign_is_noop
            => assign_bumps_generation_and_stale_unassign_is_noop,
        crate::streams::release_worker_frees_its_streams => release_worker_frees_its_streams,
        crate::streams::assignable_streams_order_limit_and_filter
            => assignable_streams_order_limit_and_filter,
        crate::streams::assigned_counts_per_worker => assigned_counts_per_worker,
        crate::streams::workers_lifecycle => workers_lifecycle,
        crate::streams::corrupt_rows_are_reported_as_corrupt
            => corrupt_rows_are_reported_as_corrupt,
        crate::streams::secrets_are_never_printed => secrets_are_never_printed,
        crate::events::persist_events_stores_and_replay_inserts_nothing
            => persist_events_stores_and_replay_inserts_nothing,
        crate::events::duplicate_ids_within_one_batch => duplicate_ids_within_one_batch,
        crate::events::readings_dedup_per_stream_and_ts => readings_dedup_per_stream_and_ts,
        crate::events::unknown_stream_is_skipped => unknown_stream_is_skipped,
        crate::events::last_result_and_error_bookkeeping => last_result_and_error_bookkeeping,
        crate::events::failures_recorded_and_listed => failures_recorded_and_listed,
        crate::events::keyset_pagination_newest_first => keyset_pagination_newest_first,
        crate::events::keyset_pagination_is_stable_while_rows_arrive
            => keyset_pagination_is_stable_while_rows_arrive,
        crate::events::measurements_from_to_filter => measurements_from_to_filter,
        crate::events::reconciled_refs_are_idempotent => reconciled_refs_are_idempotent,
        crate::events::schedule_lag_round_trips => schedule_lag_round_trips,
        crate::events::concurrent_writers_lose_nothing => concurrent_writers_lose_nothing,
    ],
    url: [
        crate::streams::reconnect_keeps_data => reconnect_keeps_data,
    ],
}

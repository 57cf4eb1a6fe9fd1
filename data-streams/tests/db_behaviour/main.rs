//! The persistence layer's behaviour, written once and run on both backends: every case is an
//! `async fn(Db)` (run by `harness::run`, on a connected, migrated database) or an
//! `async fn(url)` (run by `harness::with_url`, with the URL of an empty one), stamped out as
//! `sqlite::<case>` and `postgres::<case>`, each on its own fresh database
//! (`support::FreshDatabase`). An unreachable PostgreSQL server fails the tests, it never skips
//! them.

mod support;

mod connect;
mod coverage;
mod events;
mod fixtures;
mod harness;
mod push;
mod reports;
mod runs;
mod streams;

crate::on_both_backends! {
    crate::harness::run: [
        crate::streams::stream_crud_round_trip => stream_crud_round_trip,
        crate::streams::stream_update => stream_update,
        crate::streams::delete_cascades => delete_cascades,
        crate::streams::set_state_failed_and_running => set_state_failed_and_running,
        crate::streams::assign_bumps_generation_and_stale_unassign_is_noop
            => assign_bumps_generation_and_stale_unassign_is_noop,
        crate::streams::release_worker_frees_its_streams => release_worker_frees_its_streams,
        crate::streams::assignable_streams_order_limit_and_filter
            => assignable_streams_order_limit_and_filter,
        crate::streams::assignable_streams_read_on_after_a_cursor
            => assignable_streams_read_on_after_a_cursor,
        crate::streams::key_streams_move_under_their_generation
            => key_streams_move_under_their_generation,
        crate::streams::a_followers_changes_wait_for_the_leader
            => a_followers_changes_wait_for_the_leader,
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
        crate::events::one_slot_from_two_workers_is_one_reference
            => one_slot_from_two_workers_is_one_reference,
        crate::reports::report_by_country_matches_the_hand_computed_figures
            => report_by_country_matches_the_hand_computed_figures,
        crate::reports::report_drills_down_and_windows => report_drills_down_and_windows,
        crate::coverage::coverage_worker_down_span_is_exactly_the_missing_slots
            => coverage_worker_down_span_is_exactly_the_missing_slots,
        crate::coverage::coverage_counts_failures_by_class_and_skips
            => coverage_counts_failures_by_class_and_skips,
        crate::coverage::coverage_stopped_periods_and_time_before_creation_are_not_missing
            => coverage_stopped_periods_and_time_before_creation_are_not_missing,
        crate::coverage::coverage_leaves_the_open_end_unjudged
            => coverage_leaves_the_open_end_unjudged,
        crate::coverage::coverage_of_a_cron_stream_counts_its_fire_times
            => coverage_of_a_cron_stream_counts_its_fire_times,
        crate::coverage::coverage_refuses_empty_and_oversized_windows
            => coverage_refuses_empty_and_oversized_windows,
        crate::runs::single_fetch_runs_come_from_their_result_or_failure
            => single_fetch_runs_come_from_their_result_or_failure,
        crate::runs::reported_runs_go_forward_never_back => reported_runs_go_forward_never_back,
        crate::runs::a_failed_report_is_a_failure_and_keeps_the_window
            => a_failed_report_is_a_failure_and_keeps_the_window,
        crate::runs::one_stream_reads_many_places_at_one_time
            => one_stream_reads_many_places_at_one_time,
        crate::runs::a_report_completes_a_page_the_reconciler_indexed_first
            => a_report_completes_a_page_the_reconciler_indexed_first,
        crate::push::a_push_commits_its_reference_readings_intent_and_progress_together
            => a_push_commits_its_reference_readings_intent_and_progress_together,
        crate::push::push_streams_are_never_handed_to_a_worker
            => push_streams_are_never_handed_to_a_worker,
        crate::push::ingest_tokens_are_found_by_hash_until_revoked
            => ingest_tokens_are_found_by_hash_until_revoked,
    ],
    crate::harness::with_url: [
        crate::streams::reconnect_keeps_data => reconnect_keeps_data,
    ],
}

//! One behaviour suite for every object store: each case in `cases.rs` runs against a folder
//! store in a temporary folder, against aws-sdk-s3 talking to a real S3 server on loopback
//! (`s3s-fs`, from `objects::test_server`), and against MinIO when `TEST_S3_ENDPOINT` is set at
//! build time (with `TEST_S3_ACCESS_KEY` and `TEST_S3_SECRET_KEY`).
//!
//! Failures only S3 can have (unreachable endpoint, silent server, wrong secret) are in
//! `s3_failures.rs`.

mod backends;
mod cases;
mod s3_failures;

/// One `#[tokio::test]` per case for the backend that `$factory` builds.
macro_rules! stamp {
    ($factory:path; $($case:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let backend = $factory().await;
                crate::cases::$case(&backend).await;
                backend.finish().await;
            }
        )+
    };
}

/// The same cases for every backend, one module per backend so a failure names both.
macro_rules! behaviour_suite {
    ($($case:ident),+ $(,)?) => {
        mod folder {
            stamp!(crate::backends::folder; $($case),+);
        }
        mod s3s_fs {
            stamp!(crate::backends::s3s_fs; $($case),+);
        }
        // Compiled only when TEST_S3_ENDPOINT is set (see objects/src/build.rs), so a run
        // without MinIO has no MinIO tests at all rather than tests that pass vacuously.
        #[cfg(objects_minio)]
        mod minio {
            stamp!(crate::backends::minio; $($case),+);
        }
    };
}

behaviour_suite!(
    round_trip_is_byte_exact,
    head_returns_size_and_metadata,
    list_is_a_timeline_across_partitions,
    list_follows_pagination_past_1000_objects,
    list_after_resumes_a_timeline_past_1000_objects,
    list_uses_byte_order_and_plain_prefixes,
    list_never_shows_partial_objects,
    missing_bucket_without_create_is_no_such_bucket,
    missing_bucket_with_create_is_created_on_put,
    ensure_bucket_creates_and_is_idempotent,
    missing_object_is_no_such_key,
    large_object_round_trips,
    invalid_names_are_rejected,
    checksum_must_match_the_body,
    concurrent_puts_of_different_keys,
    overwrite_is_atomic_and_readable,
    delete_removes_the_object_and_is_idempotent,
    check_passes_and_describe_hides_secrets,
    put_new_stores_once_and_answers_with_the_first,
    put_new_races_have_exactly_one_winner,
    put_new_creates_a_missing_bucket_and_checks_like_put,
);

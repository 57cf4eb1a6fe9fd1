//! The behaviour every object store must have, one `async fn` per case, each taking the
//! [`Backend`] under test.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::{self, StreamExt, TryStreamExt};
use objects::{sha256_hex, Created, ObjectInfo, ObjectMeta, ObjectStore, StoreError};

use crate::backends::Backend;

fn meta(stream_id: &str, body: &[u8]) -> ObjectMeta {
    ObjectMeta {
        stream_id: stream_id.to_owned(),
        fetched_at: "2024-05-01T10:00:00.123Z".to_owned(),
        sha256: sha256_hex(body),
    }
}

/// A UUIDv7 result id for a fetch at `unix_seconds`, as the worker makes them.
fn result_id(unix_seconds: u64) -> uuid::Uuid {
    uuid::Uuid::new_v7(uuid::Timestamp::from_unix(uuid::NoContext, unix_seconds, 0))
}

fn object_key(stream_id: &str, day: &str, id: uuid::Uuid) -> String {
    format!("iqair/{stream_id}/dt={day}/{id}.json")
}

/// Deterministic bytes covering every value, not valid UTF-8.
fn noise(len: usize, seed: u64) -> Bytes {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect::<Vec<u8>>()
        .into()
}

async fn put(store: &dyn ObjectStore, bucket: &str, key: &str, body: impl Into<Bytes>) {
    let body = body.into();
    let meta = meta("stream-1", &body);
    store
        .put(bucket, key, body, &meta)
        .await
        .unwrap_or_else(|error| panic!("put {bucket}/{key}: {error}"));
}

fn keys(listed: &[ObjectInfo]) -> Vec<&str> {
    listed.iter().map(|info| info.key.as_str()).collect()
}

/// Every message is a single line that names what it is about.
fn assert_one_line_naming(error: &StoreError, names: &[&str]) {
    let message = error.to_string();
    assert!(!message.contains('\n'), "not one line: {message}");
    for name in names {
        assert!(message.contains(name), "{message:?} does not name {name:?}");
    }
}

pub async fn round_trip_is_byte_exact(b: &Backend) {
    let bodies: [(&str, Bytes); 4] = [
        (
            "bin/not-utf8.json",
            Bytes::from_static(&[0xff, 0xfe, 0x00, 0x80, 0xc3, 0x28, 0x0a, 0x0d]),
        ),
        ("bin/noise.json", noise(70_000, 7)),
        (
            "json/ünïcode.json",
            Bytes::from("{\"city\":\"Zürich\",\"aqi\":17,\"emoji\":\"🌫\"}\r\n"),
        ),
        ("json/empty.json", Bytes::new()),
    ];
    for (key, body) in &bodies {
        put(&*b.store, &b.bucket, key, body.clone()).await;
    }
    for (key, body) in &bodies {
        let got = b.store.get(&b.bucket, key).await.unwrap();
        assert_eq!(got, body, "{}: {key} came back changed", b.name);
        let head = b.store.head(&b.bucket, key).await.unwrap();
        assert_eq!(head.size, body.len() as u64, "{}: {key}", b.name);
    }
}

pub async fn head_returns_size_and_metadata(b: &Backend) {
    let body = Bytes::from_static(br#"{"status":"success","data":{"city":"Berlin"}}"#);
    let key = object_key(
        "0190a1b2-c3d4-7000-8000-00000000abcd",
        "2024-05-01",
        result_id(1_714_557_600),
    );
    let meta = ObjectMeta {
        stream_id: "0190a1b2-c3d4-7000-8000-00000000abcd".into(),
        fetched_at: "2024-05-01T10:00:00.123+00:00".into(),
        sha256: sha256_hex(&body),
    };
    b.store
        .put(&b.bucket, &key, body.clone(), &meta)
        .await
        .unwrap();
    let head = b.store.head(&b.bucket, &key).await.unwrap();
    assert_eq!(
        head,
        ObjectInfo {
            key: key.clone(),
            size: body.len() as u64,
            meta: Some(meta),
        },
        "{}",
        b.name
    );
}

pub async fn list_is_a_timeline_across_partitions(b: &Backend) {
    // Fetches every 30 minutes from 2024-01-30T20:00Z to 2024-02-01T02:00Z (three `dt=`
    // partitions), stored out of order.
    let start: u64 = 1_706_644_800;
    let mut timeline = Vec::new();
    for step in 0..60 {
        let seconds = start + step * 1_800;
        let day = chrono::DateTime::from_timestamp(seconds as i64, 0)
            .unwrap()
            .format("%Y-%m-%d")
            .to_string();
        timeline.push(object_key("stream-1", &day, result_id(seconds)));
    }
    assert!(timeline[0].contains("dt=2024-01-30/") && timeline[59].contains("dt=2024-02-01/"));
    let mut shuffled = timeline.clone();
    shuffled.reverse();
    shuffled.rotate_left(17);
    for key in &shuffled {
        put(&*b.store, &b.bucket, key, key.clone().into_bytes()).await;
    }
    // Neighbours a sloppy prefix match would pick up.
    let other_stream = object_key("stream-10", "2024-01-31", result_id(start));
    let other_adapter = format!("openaq/stream-1/dt=2024-01-31/{}.json", result_id(start));
    put(&*b.store, &b.bucket, &other_stream, "x").await;
    put(&*b.store, &b.bucket, &other_adapter, "x").await;

    let listed = b.store.list(&b.bucket, "iqair/stream-1/").await.unwrap();
    assert_eq!(keys(&listed), timeline, "{}: not the timeline", b.name);
    for info in &listed {
        assert_eq!(info.size, info.key.len() as u64, "{}: {}", b.name, info.key);
    }

    let january = b
        .store
        .list(&b.bucket, "iqair/stream-1/dt=2024-01")
        .await
        .unwrap();
    let expected: Vec<&str> = timeline
        .iter()
        .map(String::as_str)
        .filter(|key| !key.contains("dt=2024-02"))
        .collect();
    assert_eq!(keys(&january), expected, "{}", b.name);

    let one_day = b
        .store
        .list(&b.bucket, "iqair/stream-1/dt=2024-01-31/")
        .await
        .unwrap();
    assert!(!one_day.is_empty());
    assert!(
        one_day
            .iter()
            .all(|info| info.key.contains("/dt=2024-01-31/")),
        "{}: {:?}",
        b.name,
        keys(&one_day)
    );

    // A prefix is a plain string prefix, as in S3: without the '/', stream-10 matches too.
    let loose = b.store.list(&b.bucket, "iqair/stream-1").await.unwrap();
    assert_eq!(loose.len(), timeline.len() + 1, "{}", b.name);
    assert!(keys(&loose).contains(&other_stream.as_str()));
}

pub async fn list_follows_pagination_past_1000_objects(b: &Backend) {
    let mut expected: Vec<String> = (0..1_100u64)
        .map(|n| {
            let day = if n < 600 { "2024-03-01" } else { "2024-03-02" };
            object_key("busy", day, result_id(1_709_251_200 + n * 60))
        })
        .collect();
    let store = b.store.clone();
    stream::iter(expected.clone())
        .map(|key| {
            let store = store.clone();
            let bucket = b.bucket.clone();
            async move {
                let body = Bytes::from(key.clone());
                let meta = meta("busy", &body);
                store.put(&bucket, &key, body, &meta).await
            }
        })
        .buffer_unordered(32)
        .try_collect::<Vec<()>>()
        .await
        .unwrap();
    expected.sort();

    let listed = b.store.list(&b.bucket, "iqair/busy/").await.unwrap();
    assert_eq!(listed.len(), 1_100, "{}", b.name);
    assert_eq!(keys(&listed), expected, "{}", b.name);

    let second_day = b
        .store
        .list(&b.bucket, "iqair/busy/dt=2024-03-02/")
        .await
        .unwrap();
    assert_eq!(keys(&second_day), expected[600..], "{}", b.name);
}

pub async fn list_after_resumes_a_timeline_past_1000_objects(b: &Backend) {
    let mut expected: Vec<String> = (0..1_100u64)
        .map(|n| {
            let day = if n < 600 { "2024-03-01" } else { "2024-03-02" };
            object_key("resume", day, result_id(1_709_251_200 + n * 60))
        })
        .collect();
    let store = b.store.clone();
    stream::iter(expected.clone())
        .map(|key| {
            let store = store.clone();
            let bucket = b.bucket.clone();
            async move {
                let body = Bytes::from(key.clone());
                let meta = meta("resume", &body);
                store.put(&bucket, &key, body, &meta).await
            }
        })
        .buffer_unordered(32)
        .try_collect::<Vec<()>>()
        .await
        .unwrap();
    expected.sort();
    // A neighbour on both sides that a sloppy prefix or start would pick up.
    put(
        &*b.store,
        &b.bucket,
        "iqair/resume-2/dt=2024-03-01/x.json",
        "x",
    )
    .await;
    put(
        &*b.store,
        &b.bucket,
        "iqair/resum/dt=2024-03-03/x.json",
        "x",
    )
    .await;
    let prefix = "iqair/resume/";

    // Pages of 1,003: the first crosses S3's 1,000-key page, the second is the rest.
    let first = b
        .store
        .list_after(&b.bucket, prefix, "", 1_003)
        .await
        .unwrap();
    assert_eq!(keys(&first), expected[..1_003], "{}", b.name);
    let last = &first.last().unwrap().key;
    let rest = b
        .store
        .list_after(&b.bucket, prefix, last, 1_003)
        .await
        .unwrap();
    assert_eq!(keys(&rest), expected[1_003..], "{}", b.name);
    for info in first.iter().chain(&rest) {
        assert_eq!(info.size, info.key.len() as u64, "{}: {}", b.name, info.key);
    }

    // A day's prefix without its '/' starts at that day; a start that is no object works too.
    let second_day = b
        .store
        .list_after(&b.bucket, prefix, "iqair/resume/dt=2024-03-02", usize::MAX)
        .await
        .unwrap();
    assert_eq!(keys(&second_day), expected[600..], "{}", b.name);
    let between = format!("{}~", &expected[41][..expected[41].len() - 5]);
    let after_between = b
        .store
        .list_after(&b.bucket, prefix, &between, 3)
        .await
        .unwrap();
    assert_eq!(keys(&after_between), expected[42..45], "{}", b.name);

    // After the last key, and with no room: nothing.
    let end = b
        .store
        .list_after(&b.bucket, prefix, expected.last().unwrap(), 10)
        .await
        .unwrap();
    assert!(end.is_empty(), "{}: {:?}", b.name, keys(&end));
    let none = b.store.list_after(&b.bucket, prefix, "", 0).await.unwrap();
    assert!(none.is_empty(), "{}", b.name);

    // `list` is unchanged beside it.
    assert_eq!(
        keys(&b.store.list(&b.bucket, prefix).await.unwrap()),
        expected,
        "{}",
        b.name
    );
    let error = b
        .store
        .list_after(&b.bucket_name("absent"), prefix, "", 10)
        .await
        .unwrap_err();
    assert!(
        matches!(error, StoreError::NoSuchBucket { .. }),
        "{}: {error:?}",
        b.name
    );
}

pub async fn list_uses_byte_order_and_plain_prefixes(b: &Backend) {
    for key in ["p/a/x.json", "p/a0", "p/a.b/y.json", "p/a-b/x.json", "q/z"] {
        put(&*b.store, &b.bucket, key, "1").await;
    }
    // Whole keys in byte order, not folder by folder: '-' < '.' < '/' < '0'.
    let all_p = ["p/a-b/x.json", "p/a.b/y.json", "p/a/x.json", "p/a0"];
    let cases: [(&str, &[&str]); 7] = [
        ("p/", &all_p),
        ("p/a", &all_p),
        ("p/a/", &["p/a/x.json"]),
        ("p/a.", &["p/a.b/y.json"]),
        ("p/a/x.json", &["p/a/x.json"]),
        ("nothing/", &[]),
        (
            "",
            &["p/a-b/x.json", "p/a.b/y.json", "p/a/x.json", "p/a0", "q/z"],
        ),
    ];
    for (prefix, expected) in cases {
        let listed = b.store.list(&b.bucket, prefix).await.unwrap();
        assert_eq!(keys(&listed), expected, "{}: prefix {prefix:?}", b.name);
    }
}

pub async fn list_never_shows_partial_objects(b: &Backend) {
    const OBJECTS: usize = 60;
    const SIZE: usize = 96 * 1024;
    let expected: BTreeSet<String> = (0..OBJECTS)
        .map(|n| format!("partial/dt=2024-05-01/{n:03}.json"))
        .collect();
    let writer = {
        let store = b.store.clone();
        let bucket = b.bucket.clone();
        let keys = expected.clone();
        tokio::spawn(async move {
            for (n, key) in keys.into_iter().enumerate() {
                let body = noise(SIZE, n as u64);
                let meta = meta("stream-1", &body);
                store.put(&bucket, &key, body, &meta).await.unwrap();
            }
        })
    };
    let mut listings = 0;
    while !writer.is_finished() {
        for info in b.store.list(&b.bucket, "partial/").await.unwrap() {
            assert!(
                expected.contains(&info.key),
                "{}: stray {:?}",
                b.name,
                info.key
            );
            assert_eq!(
                info.size, SIZE as u64,
                "{}: {} listed part-written",
                b.name, info.key
            );
        }
        listings += 1;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    writer.await.unwrap();
    assert!(listings > 0);
    let listed = b.store.list(&b.bucket, "partial/").await.unwrap();
    let listed: BTreeSet<String> = listed.into_iter().map(|info| info.key).collect();
    assert_eq!(listed, expected, "{}", b.name);
}

pub async fn missing_bucket_without_create_is_no_such_bucket(b: &Backend) {
    let bucket = b.bucket_name("absent");
    let body = Bytes::from_static(b"{}");
    let error = b
        .strict
        .put(&bucket, "a/b.json", body.clone(), &meta("s", &body))
        .await
        .unwrap_err();
    assert!(
        matches!(&error, StoreError::NoSuchBucket { bucket: named } if *named == bucket),
        "{}: {error:?}",
        b.name
    );
    assert!(!error.is_transient());
    assert_one_line_naming(&error, &[&bucket]);

    // Reads never create a bucket, whatever the options.
    for store in [&b.strict, &b.store] {
        let error = store.get(&bucket, "a/b.json").await.unwrap_err();
        assert!(
            matches!(error, StoreError::NoSuchBucket { .. }),
            "{}: get {error:?}",
            b.name
        );
        let error = store.head(&bucket, "a/b.json").await.unwrap_err();
        assert!(
            matches!(error, StoreError::NoSuchBucket { .. }),
            "{}: head {error:?}",
            b.name
        );
        let error = store.list(&bucket, "a/").await.unwrap_err();
        assert!(
            matches!(error, StoreError::NoSuchBucket { .. }),
            "{}: list {error:?}",
            b.name
        );
        assert_one_line_naming(&error, &[&bucket]);
    }
}

pub async fn missing_bucket_with_create_is_created_on_put(b: &Backend) {
    let bucket = b.bucket_name("created");
    let body = Bytes::from_static(b"{\"first\":true}");
    b.store
        .put(
            &bucket,
            "a/dt=2024-05-01/b.json",
            body.clone(),
            &meta("s", &body),
        )
        .await
        .unwrap();
    assert_eq!(
        b.strict
            .get(&bucket, "a/dt=2024-05-01/b.json")
            .await
            .unwrap(),
        body
    );
    let listed = b.strict.list(&bucket, "").await.unwrap();
    assert_eq!(keys(&listed), ["a/dt=2024-05-01/b.json"], "{}", b.name);
}

pub async fn ensure_bucket_creates_and_is_idempotent(b: &Backend) {
    let bucket = b.bucket_name("ensured");
    b.strict.ensure_bucket(&bucket).await.unwrap();
    b.strict.ensure_bucket(&bucket).await.unwrap();
    assert!(b.strict.list(&bucket, "").await.unwrap().is_empty());
    put(&*b.strict, &bucket, "k.json", "1").await;
    // Ensuring an existing bucket keeps its objects.
    b.strict.ensure_bucket(&bucket).await.unwrap();
    assert_eq!(keys(&b.strict.list(&bucket, "").await.unwrap()), ["k.json"]);
}

pub async fn missing_object_is_no_such_key(b: &Backend) {
    put(
        &*b.store,
        &b.bucket,
        "iqair/s/dt=2024-05-01/present.json",
        "1",
    )
    .await;
    for key in [
        "iqair/s/dt=2024-05-01/absent.json",
        "iqair/s/dt=2024-05-01",
        "iqair/s/dt",
        "nowhere/x.json",
    ] {
        let error = b.store.get(&b.bucket, key).await.unwrap_err();
        assert!(
            matches!(&error, StoreError::NoSuchKey { bucket, key: k } if *bucket == b.bucket && k == key),
            "{}: get {key}: {error:?}",
            b.name
        );
        assert!(!error.is_transient());
        assert_one_line_naming(&error, &[&b.bucket, key]);
        let error = b.store.head(&b.bucket, key).await.unwrap_err();
        assert!(
            matches!(&error, StoreError::NoSuchKey { key: k, .. } if k == key),
            "{}: head {key}: {error:?}",
            b.name
        );
    }
}

pub async fn large_object_round_trips(b: &Backend) {
    let body = noise(8 * 1024 * 1024, 42);
    let meta = meta("big", &body);
    b.store
        .put(&b.bucket, "big/object.json", body.clone(), &meta)
        .await
        .unwrap();
    let got = b.store.get(&b.bucket, "big/object.json").await.unwrap();
    assert_eq!(got.len(), body.len(), "{}", b.name);
    assert!(got == body, "{}: 8 MiB object came back changed", b.name);
    let head = b.store.head(&b.bucket, "big/object.json").await.unwrap();
    assert_eq!(head.size, 8 * 1024 * 1024);
    assert_eq!(head.meta, Some(meta));
}

pub async fn invalid_names_are_rejected(b: &Backend) {
    let body = Bytes::from_static(b"{}");
    let good_meta = meta("s", &body);
    let bad_buckets = [
        "",
        "ab",
        "Results",
        "my_bucket",
        "-abc",
        "abc-",
        "a..b",
        "192.168.0.1",
        "../etc",
    ];
    for bucket in bad_buckets {
        let errors = [
            b.store
                .put(bucket, "k.json", body.clone(), &good_meta)
                .await
                .err(),
            b.store.get(bucket, "k.json").await.err(),
            b.store.head(bucket, "k.json").await.err(),
            b.store.list(bucket, "").await.err(),
            b.store.ensure_bucket(bucket).await.err(),
        ];
        for error in errors {
            let error = error.unwrap_or_else(|| panic!("{}: bucket {bucket:?} accepted", b.name));
            assert!(
                matches!(error, StoreError::InvalidName { .. }),
                "{}: {error:?}",
                b.name
            );
            assert!(!error.is_transient());
            assert_one_line_naming(&error, &["bucket name", &format!("{bucket:?}")]);
        }
    }
    let bad_keys = [
        "",
        "/etc/passwd",
        "../escape.json",
        "a/../../escape.json",
        "a/./b",
        "a//b",
        "a/",
        "a\\b",
        ".hidden",
        "a/.b.json.meta.json",
        "line\nbreak",
    ];
    for key in bad_keys {
        let errors = [
            b.store
                .put(&b.bucket, key, body.clone(), &good_meta)
                .await
                .err(),
            b.store.get(&b.bucket, key).await.err(),
            b.store.head(&b.bucket, key).await.err(),
        ];
        for error in errors {
            let error = error.unwrap_or_else(|| panic!("{}: key {key:?} accepted", b.name));
            assert!(
                matches!(error, StoreError::InvalidName { .. }),
                "{}: {error:?}",
                b.name
            );
            assert_one_line_naming(&error, &["object key"]);
        }
    }
    for prefix in ["/", "../", "a//", ".meta/"] {
        let error = b.store.list(&b.bucket, prefix).await.unwrap_err();
        assert!(
            matches!(error, StoreError::InvalidName { .. }),
            "{}: {error:?}",
            b.name
        );
    }
    let bad_meta = ObjectMeta {
        fetched_at: "last tuesday".into(),
        ..good_meta.clone()
    };
    let error = b
        .store
        .put(&b.bucket, "k.json", body.clone(), &bad_meta)
        .await
        .unwrap_err();
    assert!(
        matches!(error, StoreError::InvalidName { .. }),
        "{}: {error:?}",
        b.name
    );
    // Nothing was stored by any of the rejected calls.
    let listed = b.store.list(&b.bucket, "").await.unwrap();
    assert!(listed.is_empty(), "{}: {:?}", b.name, keys(&listed));
}

pub async fn checksum_must_match_the_body(b: &Backend) {
    let body = Bytes::from_static(b"{\"aqius\":17}");
    let wrong = meta("s", b"{\"aqius\":18}");
    let error = b
        .store
        .put(&b.bucket, "k.json", body.clone(), &wrong)
        .await
        .unwrap_err();
    assert!(
        matches!(error, StoreError::ChecksumMismatch { .. }),
        "{}: {error:?}",
        b.name
    );
    assert!(!error.is_transient());
    assert_one_line_naming(&error, &[&b.bucket, "k.json", &wrong.sha256]);
    let error = b.store.head(&b.bucket, "k.json").await.unwrap_err();
    assert!(
        matches!(error, StoreError::NoSuchKey { .. }),
        "{}: {error:?}",
        b.name
    );
}

pub async fn concurrent_puts_of_different_keys(b: &Backend) {
    let tasks: Vec<_> = (0..64u64)
        .map(|n| {
            let store = b.store.clone();
            let bucket = b.bucket.clone();
            tokio::spawn(async move {
                let key = object_key("many", "2024-05-01", result_id(1_714_521_600 + n));
                let body = noise(1_000 + n as usize * 100, n);
                let meta = meta("many", &body);
                store.put(&bucket, &key, body.clone(), &meta).await.unwrap();
                (key, body)
            })
        })
        .collect();
    let mut written = Vec::new();
    for task in tasks {
        written.push(task.await.unwrap());
    }
    let listed = b.store.list(&b.bucket, "iqair/many/").await.unwrap();
    assert_eq!(listed.len(), 64, "{}", b.name);
    for (key, body) in written {
        assert_eq!(
            b.store.get(&b.bucket, &key).await.unwrap(),
            body,
            "{}: {key}",
            b.name
        );
    }
}

pub async fn overwrite_is_atomic_and_readable(b: &Backend) {
    let key = "iqair/s/dt=2024-05-01/same.json";
    let first = Bytes::from(vec![b'a'; 256 * 1024]);
    let second = Bytes::from(vec![b'b'; 300 * 1024]);
    put(&*b.store, &b.bucket, key, first.clone()).await;

    let writer = {
        let store: Arc<dyn ObjectStore> = b.store.clone();
        let bucket = b.bucket.clone();
        let bodies = [first.clone(), second.clone()];
        tokio::spawn(async move {
            for round in 0..40 {
                let body = bodies[round % 2].clone();
                let meta = meta("stream-1", &body);
                store.put(&bucket, key, body, &meta).await.unwrap();
            }
        })
    };
    let mut reads = 0;
    while !writer.is_finished() {
        let got = b.store.get(&b.bucket, key).await.unwrap();
        assert!(
            got == first || got == second,
            "{}: read {} bytes that are neither version",
            b.name,
            got.len()
        );
        reads += 1;
    }
    writer.await.unwrap();
    assert!(reads > 0);

    let last = meta("stream-2", &second);
    b.store
        .put(&b.bucket, key, second.clone(), &last)
        .await
        .unwrap();
    assert_eq!(b.store.get(&b.bucket, key).await.unwrap(), second);
    let head = b.store.head(&b.bucket, key).await.unwrap();
    assert_eq!(head.size, second.len() as u64);
    assert_eq!(head.meta, Some(last), "{}", b.name);
    assert_eq!(
        keys(&b.store.list(&b.bucket, "iqair/s/").await.unwrap()),
        [key]
    );
}

pub async fn check_passes_and_describe_hides_secrets(b: &Backend) {
    b.store.check().await.unwrap();
    b.strict.check().await.unwrap();
    let described = b.store.describe();
    assert!(
        described.starts_with("file://") || described.starts_with("s3 endpoint "),
        "{described}"
    );
    if let Some(secret) = &b.secret {
        assert!(!described.contains(secret.as_str()), "{described}");
        assert!(!format!("{:?}", b.store).contains(secret.as_str()));
    }
}

pub async fn delete_removes_the_object_and_is_idempotent(b: &Backend) {
    let (kept, gone) = (
        "iqair/s/dt=2024-05-01/kept.json",
        "iqair/s/dt=2024-05-01/gone.json",
    );
    put(&*b.store, &b.bucket, kept, "1").await;
    put(&*b.store, &b.bucket, gone, "2").await;
    b.store.delete(&b.bucket, gone).await.unwrap();
    let error = b.store.get(&b.bucket, gone).await.unwrap_err();
    assert!(
        matches!(error, StoreError::NoSuchKey { .. }),
        "{}: get after delete {error:?}",
        b.name
    );
    let error = b.store.head(&b.bucket, gone).await.unwrap_err();
    assert!(
        matches!(error, StoreError::NoSuchKey { .. }),
        "{}: head after delete {error:?}",
        b.name
    );
    let listed: Vec<String> = b
        .store
        .list(&b.bucket, "iqair/")
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert_eq!(listed, [kept], "{}", b.name);
    // A retried delete, and one of a key that never was, succeed.
    b.store.delete(&b.bucket, gone).await.unwrap();
    b.store
        .delete(&b.bucket, "iqair/s/dt=2024-05-01/never.json")
        .await
        .unwrap();
    // The same key can be written again and reads back with its metadata.
    put(&*b.store, &b.bucket, gone, "3").await;
    let head = b.store.head(&b.bucket, gone).await.unwrap();
    assert_eq!(head.size, 1, "{}", b.name);
    assert!(head.meta.is_some(), "{}", b.name);
    // A bucket that does not exist is named, as for every other call; a bad key is refused.
    let absent = b.bucket_name("absent");
    let error = b.store.delete(&absent, gone).await.unwrap_err();
    assert!(
        matches!(&error, StoreError::NoSuchBucket { bucket } if *bucket == absent),
        "{}: delete in a missing bucket {error:?}",
        b.name
    );
    let error = b.store.delete(&b.bucket, "../x").await.unwrap_err();
    assert!(
        matches!(error, StoreError::InvalidName { .. }),
        "{}: {error:?}",
        b.name
    );
}

/// `put_new` of `body` under `key`, with metadata naming `stream_id`.
async fn put_new(
    store: &dyn ObjectStore,
    bucket: &str,
    key: &str,
    stream_id: &str,
    body: &Bytes,
) -> Created {
    store
        .put_new(bucket, key, body.clone(), &meta(stream_id, body))
        .await
        .unwrap_or_else(|error| panic!("put_new {bucket}/{key}: {error}"))
}

pub async fn put_new_stores_once_and_answers_with_the_first(b: &Backend) {
    let key = object_key("slot", "2024-05-01", result_id(1_714_557_600));
    let first = Bytes::from_static(br#"{"worker":"a"}"#);
    assert_eq!(
        put_new(&*b.store, &b.bucket, &key, "stream-a", &first).await,
        Created::New,
        "{}",
        b.name
    );
    // The same bytes again (a retry whose first answer was lost): the object is there.
    let again = put_new(&*b.store, &b.bucket, &key, "stream-a", &first).await;
    let expected = ObjectInfo {
        key: key.clone(),
        size: first.len() as u64,
        meta: Some(meta("stream-a", &first)),
    };
    assert_eq!(again, Created::Existing(expected.clone()), "{}", b.name);
    // Other bytes (another worker's fetch of the same slot): the first stored wins, untouched,
    // and the answer describes it, not the bytes offered.
    let other = Bytes::from_static(br#"{"worker":"b","longer":true}"#);
    let answer = put_new(&*b.store, &b.bucket, &key, "stream-b", &other).await;
    assert_eq!(answer, Created::Existing(expected), "{}", b.name);
    assert_eq!(
        b.store.get(&b.bucket, &key).await.unwrap(),
        first,
        "{}",
        b.name
    );
    assert_eq!(
        b.store.head(&b.bucket, &key).await.unwrap().meta,
        Some(meta("stream-a", &first)),
        "{}",
        b.name
    );
    let listed = b.store.list(&b.bucket, "iqair/slot/").await.unwrap();
    assert_eq!(keys(&listed), [key.as_str()], "{}", b.name);
    // A plain `put` still replaces (the warehouse rewrites its day files with it).
    put(&*b.store, &b.bucket, &key, other.clone()).await;
    assert_eq!(
        b.store.get(&b.bucket, &key).await.unwrap(),
        other,
        "{}",
        b.name
    );
}

pub async fn put_new_races_have_exactly_one_winner(b: &Backend) {
    let key = object_key("race", "2024-05-01", result_id(1_714_557_600));
    let tasks: Vec<_> = (0..16u64)
        .map(|n| {
            let store = b.store.clone();
            let bucket = b.bucket.clone();
            let key = key.clone();
            tokio::spawn(async move {
                let body = noise(20_000 + n as usize * 1_000, n);
                let created = store
                    .put_new(&bucket, &key, body.clone(), &meta("race", &body))
                    .await
                    .unwrap();
                (created, body)
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await.unwrap());
    }
    let winners: Vec<&Bytes> = outcomes
        .iter()
        .filter(|(created, _)| *created == Created::New)
        .map(|(_, body)| body)
        .collect();
    assert_eq!(winners.len(), 1, "{}: {} winners", b.name, winners.len());
    let winner = winners[0].clone();
    assert_eq!(
        b.store.get(&b.bucket, &key).await.unwrap(),
        winner,
        "{}",
        b.name
    );
    for (created, _) in &outcomes {
        if let Created::Existing(info) = created {
            assert_eq!(info.size, winner.len() as u64, "{}", b.name);
            assert_eq!(
                info.meta.as_ref().map(|m| m.sha256.as_str()),
                Some(sha256_hex(&winner).as_str()),
                "{}: a loser was told of bytes that are not stored",
                b.name
            );
        }
    }
    let listed = b.store.list(&b.bucket, "iqair/race/").await.unwrap();
    assert_eq!(keys(&listed), [key.as_str()], "{}", b.name);
}

pub async fn put_new_creates_a_missing_bucket_and_checks_like_put(b: &Backend) {
    let bucket = b.bucket_name("slots");
    let key = "a/dt=2024-05-01/b.json";
    let body = Bytes::from_static(b"{}");
    let err = b
        .strict
        .put_new(&bucket, key, body.clone(), &meta("s", &body))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::NoSuchBucket { .. }),
        "{}: {err}",
        b.name
    );
    assert_eq!(
        put_new(&*b.store, &bucket, key, "s", &body).await,
        Created::New,
        "{}",
        b.name
    );
    assert_eq!(b.strict.get(&bucket, key).await.unwrap(), body);
    // Two workers creating one missing bucket at once: both puts succeed (S3 servers answer
    // the loser's CreateBucket with BucketAlreadyOwnedByYou or BucketAlreadyExists).
    let raced = b.bucket_name("raced");
    let body_meta = meta("s", &body);
    let (one, two) = tokio::join!(
        b.store
            .put_new(&raced, "a/1.json", body.clone(), &body_meta),
        b.store
            .put_new(&raced, "a/2.json", body.clone(), &body_meta),
    );
    assert_eq!(one.unwrap(), Created::New, "{}", b.name);
    assert_eq!(two.unwrap(), Created::New, "{}", b.name);
    let err = b
        .store
        .put_new(&b.bucket, "a/../b.json", body.clone(), &meta("s", &body))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::InvalidName { .. }),
        "{}: {err}",
        b.name
    );
    let err = b
        .store
        .put_new(&b.bucket, "a/c.json", body.clone(), &meta("s", b"other"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::ChecksumMismatch { .. }),
        "{}: {err}",
        b.name
    );
    assert!(
        matches!(
            b.store.head(&b.bucket, "a/c.json").await,
            Err(StoreError::NoSuchKey { .. })
        ),
        "{}: a refused put_new left an object",
        b.name
    );
}

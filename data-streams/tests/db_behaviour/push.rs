//! Push streams' persistence: an object's reference, readings, intent and request progress in
//! one commit; push streams are never handed to a worker; idempotent requests; ingest tokens.

use data_streams::db::{Db, PushCommit, PushObject, PushProgress, TokenRow};
use data_streams::stream::StreamState;
use serde_json::json;
use uuid::Uuid;

use crate::fixtures::{reading, spec_of, stream, v7, T0};

async fn push_stream(db: &Db) -> Uuid {
    let spec = spec_of(json!({"adapter": "PUSH", "bucket_name": "results", "records": "iqair"}));
    db.insert_stream(Uuid::new_v4(), &spec, StreamState::Running, T0)
        .await
        .expect("insert a push stream")
        .id
}

fn object(stream_id: Uuid, at: i64) -> PushObject {
    let result_id = v7(at);
    PushObject {
        result_id,
        stream_id,
        bucket: "results".into(),
        key: format!("PUSH/stream_id={stream_id}/dt=2026-01-01/{result_id}.json"),
        fetched_at: at,
        received_at: at - 10,
        size: 120,
        sha256: "ab".repeat(32),
    }
}

pub async fn a_push_commits_its_reference_readings_intent_and_progress_together(db: Db) {
    let id = push_stream(&db).await;
    let first = object(id, T0 + 1_000);
    db.push_intent(first.result_id, &first.bucket, &first.key, T0)
        .await
        .expect("intent");
    // Two readings of one place and hour: the first wins; another hour is another reading.
    let readings = [
        reading(T0, 40.0),
        reading(T0, 99.0),
        reading(T0 + 3_600_000, 41.0),
    ];
    let ids = [first.result_id];
    let progress = PushProgress {
        idempotency_key: "k1",
        lines: 3,
        accepted: 3,
        result_ids: &ids,
    };
    let done = db
        .commit_push(&first, &readings, Some(progress))
        .await
        .expect("commit");
    assert_eq!(done, PushCommit::Stored { readings: 2 });
    // A replay of the same commit adds nothing.
    let again = db
        .commit_push(&first, &readings, None)
        .await
        .expect("replay");
    assert_eq!(again, PushCommit::Stored { readings: 0 });

    let (results, _) = db.list_results(id, 10, None).await.expect("results");
    assert_eq!(results.len(), 1);
    assert_eq!(results[0].key, first.key);
    assert_eq!(results[0].scheduled_at, None);
    assert_eq!(results[0].started_at, Some(first.received_at));
    let rows = db
        .list_measurements(id, None, None, 10)
        .await
        .expect("measurements");
    let aqis: Vec<Option<f64>> = rows.iter().map(|r| r.aqius).collect();
    assert_eq!(rows.len(), 2, "{aqis:?}");
    assert!(
        aqis.contains(&Some(40.0)) && !aqis.contains(&Some(99.0)),
        "{aqis:?}"
    );
    // The intent went with the commit.
    assert!(db
        .stale_push_intents(i64::MAX)
        .await
        .expect("intents")
        .is_empty());
    let stream = db.get_stream(id).await.expect("get").expect("the stream");
    assert_eq!(stream.last_result_at, Some(first.fetched_at));

    let request = db
        .ingest_request(id, "k1")
        .await
        .expect("request")
        .expect("its progress");
    assert_eq!((request.lines, request.accepted), (3, 3));
    assert_eq!(request.result_ids, ids);
    assert_eq!(request.answer, None);
    db.finish_ingest_request(id, "k1", (3, 3, &ids), 202, "{\"accepted\":3}")
        .await
        .expect("finish");
    let request = db
        .ingest_request(id, "k1")
        .await
        .expect("request")
        .expect("it");
    assert_eq!(request.answer, Some((202, "{\"accepted\":3}".to_owned())));
    assert_eq!(db.ingest_request(id, "k2").await.expect("none"), None);

    // A stream deleted while its push ran: nothing is written.
    let orphan = object(id, T0 + 2_000);
    db.push_intent(orphan.result_id, &orphan.bucket, &orphan.key, T0 + 2_000)
        .await
        .expect("intent");
    assert!(db.delete_stream(id).await.expect("delete"));
    let gone = db.commit_push(&orphan, &[], None).await.expect("commit");
    assert_eq!(gone, PushCommit::NoStream);
    // Its intent is left for the reconciler, older ones first; forgetting it ends it.
    let stale = db.stale_push_intents(T0 + 2_001).await.expect("intents");
    assert_eq!(
        stale,
        vec![(orphan.result_id, orphan.bucket.clone(), orphan.key.clone())]
    );
    assert!(db
        .stale_push_intents(T0 + 2_000)
        .await
        .expect("intents")
        .is_empty());
    db.forget_push_intent(orphan.result_id)
        .await
        .expect("forget");
    assert!(db
        .stale_push_intents(i64::MAX)
        .await
        .expect("intents")
        .is_empty());
}

pub async fn push_streams_are_never_handed_to_a_worker(db: Db) {
    let fetched = stream(&db, T0).await;
    let pushed = push_stream(&db).await;
    let assignable: Vec<Uuid> = db
        .assignable_streams(100)
        .await
        .expect("assignable")
        .iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(assignable, vec![fetched.id]);
    let row = db.get_stream(pushed).await.expect("get").expect("it");
    assert!(row.spec.is_push());
}

pub async fn ingest_tokens_are_found_by_hash_until_revoked(db: Db) {
    let a = push_stream(&db).await;
    let b = push_stream(&db).await;
    let token = TokenRow {
        id: Uuid::now_v7(),
        stream_id: a,
        name: Some("sensor".into()),
        created_at: T0,
        revoked_at: None,
    };
    db.insert_ingest_token(&token, "hash-a")
        .await
        .expect("insert");
    assert_eq!(
        db.ingest_token_stream("hash-a").await.expect("find"),
        Some(a)
    );
    assert_eq!(db.ingest_token_stream("hash-b").await.expect("find"), None);
    // Another stream cannot revoke it.
    assert!(!db
        .revoke_ingest_token(b, token.id, T0 + 1)
        .await
        .expect("revoke"));
    assert!(db
        .revoke_ingest_token(a, token.id, T0 + 5)
        .await
        .expect("revoke"));
    assert!(db
        .revoke_ingest_token(a, token.id, T0 + 9)
        .await
        .expect("again"));
    assert_eq!(db.ingest_token_stream("hash-a").await.expect("find"), None);
    let listed = db.list_ingest_tokens(a).await.expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(
        listed[0].revoked_at,
        Some(T0 + 5),
        "the first revocation stands"
    );
    // Tokens go with their stream.
    assert!(db.delete_stream(a).await.expect("delete"));
    assert!(db.list_ingest_tokens(a).await.expect("list").is_empty());
}

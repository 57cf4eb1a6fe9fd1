//! Schemathesis against `GET /openapi.json` on a live stack (the real `iqair-sim`,
//! `data-streams` with an API token, and a `worker` running a stream): every operation, with
//! generated and mutated requests and its stateful links, checked for "no 5xx, and every answer
//! as the document says" (`not_a_server_error`, `status_code_conformance`,
//! `content_type_conformance`, `response_headers_conformance`, `response_schema_conformance`)
//! and for the token being needed (`ignored_auth`). RFC.md §8 says why the two data-acceptance
//! checks are not among them.
//!
//! Needs schemathesis from PyPI: scripts/test.sh installs it in `target/test-venv`; `SCHEMATHESIS`
//! names another. Missing, the test fails saying so; it never skips.

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use support::{Stack, API_TOKEN, IQAIR_KEY};

const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,\
                      response_headers_conformance,response_schema_conformance,ignored_auth";

fn schemathesis() -> PathBuf {
    support::test_venv_program("SCHEMATHESIS", "schemathesis", "schemathesis")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_answers_as_its_openapi_document_says() {
    let program = schemathesis();
    let dir = tempfile::tempdir().expect("a temporary folder");
    let logs = dir.path();
    let stack = Stack::start(logs, "st-worker");
    let (sim, supervisor) = (&stack.sim, &stack.supervisor);
    // Data for the read routes and the stateful links: a stream with results and a reading.
    let stream = supervisor
        .api
        .create_stream(&support::unlimited(support::iqair_stream(
            &support::nearest_city(sim),
            IQAIR_KEY,
            2_000,
        )))
        .await;
    let id = stream["id"].as_str().expect("an id").to_owned();
    supervisor
        .api
        .results_at_least(&id, 1, Duration::from_secs(20))
        .await;

    let url = format!("http://{}/openapi.json", supervisor.http);
    let output = tokio::task::spawn_blocking(move || {
        Command::new(&program)
            .args([
                "run",
                &url,
                "--header",
                &format!("Authorization: Bearer {API_TOKEN}"),
                "--checks",
                CHECKS,
                "--max-examples",
                "50",
                "--generation-database",
                "none",
                "--request-timeout",
                "30",
                "--no-color",
            ])
            .current_dir(std::env::temp_dir())
            .output()
            .expect("schemathesis runs")
    })
    .await
    .expect("the schemathesis thread");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    println!("{report}");
    assert!(
        output.status.success(),
        "schemathesis found problems (its report is above; the supervisor's log follows):\n{}",
        supervisor.proc.log_text()
    );
    assert!(report.contains("passed"), "{report}");
    // The stack was still serving when it ended. (Not the seeded stream itself: the stateful
    // phase may follow a create with a delete, and the seed is fair game for it.)
    let (status, body) = supervisor.api.get("/streams").await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = supervisor.api.get("/workers").await;
    assert_eq!(status, 200, "{body}");
}

//! The one support module of the data-streams integration tests; every test binary that needs a
//! helper declares `mod support;` and takes what it needs from here.
//!
//! - [`procs`]: the real binaries as child processes ([`Proc`]), and the one way to start
//!   iqair-sim, a supervisor and a worker ([`sim_env`], [`supervisor_env`], [`worker_env`]).
//! - [`app`]: a supervisor, the simulator and workers in the test's own process ([`spawn_app`]).
//! - [`client`]: the HTTP client of the supervisor's API ([`Api`]), for both kinds of test.
//! - [`database`]: a fresh database per test on either backend ([`FreshDatabase`]), PostgreSQL
//!   ones dropped `WITH (FORCE)` afterwards, also when the test panics.
//! - [`store`]: folder object stores and the files in them.
//! - [`duckdb`]: DuckDB (the Python package) running an analyst's SQL ([`duckdb_query`]).
//! - [`fixtures`]: readings, result records and stream bodies.
//! - [`poll`]: waiting for something to happen ([`eventually`]) or to stop changing.
//! - [`logs`]: the in-process supervisor's log lines, captured for assertions.
//! - [`proxy`]: a loopback TCP proxy that can be frozen, cut, restored, and can record.
//!
//! The binaries `api` and `db_behaviour` are folders (`tests/<name>/main.rs`); their `support`
//! is a symbolic link to this folder, so that a plain `mod support;` finds it there too.

// Each test binary compiles all of this and uses a different part of it: what one binary leaves
// unused, another one needs.
#![allow(dead_code)]

pub mod app;
pub mod client;
pub mod database;
pub mod duckdb;
pub mod fixtures;
pub mod logs;
pub mod poll;
pub mod procs;
pub mod proxy;
pub mod store;

// Everything at `support::<name>`; a binary that uses nothing of one module leaves its glob unused.
#[allow(unused_imports)]
pub use self::{
    app::*, client::*, database::*, duckdb::*, fixtures::*, logs::*, poll::*, procs::*, proxy::*,
    store::*,
};

/// The token workers present, in-process and as child processes.
pub const WORKER_TOKEN: &str = "worker-test-token";
/// The bearer token of the supervisor's API.
pub const API_TOKEN: &str = "api-test-token";
/// The IQAir key the simulators accept.
pub const IQAIR_KEY: &str = "iqair-test-key";
/// The bucket every test stream writes to.
pub const BUCKET: &str = "results";

/// One test per backend for each case, as `sqlite::<name>` and `postgres::<name>`: each test
/// awaits `<run>(Backend::Sqlite | Backend::Postgres, <case>)`.
///
/// ```ignore
/// crate::on_both_backends! {
///     crate::harness::run: [crate::streams::stream_update => stream_update],
/// }
/// ```
#[macro_export]
macro_rules! on_both_backends {
    (@backend $module:ident, $backend:ident, $($run:path : [$($case:path => $name:ident),*]),*) => {
        mod $module {
            $($(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    $run($crate::support::Backend::$backend, $case).await;
                }
            )*)*
        }
    };
    ($($run:path : [$($case:path => $name:ident),* $(,)?]),* $(,)?) => {
        $crate::on_both_backends!(@backend sqlite, Sqlite, $($run : [$($case => $name),*]),*);
        $crate::on_both_backends!(@backend postgres, Postgres, $($run : [$($case => $name),*]),*);
    };
}

//! The production stack, checked without a Docker engine: docker-compose.yml and the Dockerfile
//! are read as files and held against the workspace itself.
//!
//! The environment names a service sets must be settings its binary accepts. Those come from the
//! binaries (`--help` prints clap's `[env: NAME]` markers) and from the workspace's bin targets
//! (`cargo metadata`), never from a list kept here, so renaming a setting or a binary fails this
//! test instead of a deployment. The only names kept here are the ones no `--help` can print:
//! the object store's AWS settings and `RUST_LOG`.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

use serde_norway::{Mapping, Value};
use support::{bin, workspace_root};

/// Read outside clap when `OBJECT_STORE_URL=s3://`: `S3_FORCE_PATH_STYLE` by
/// `objects::S3Settings::from_env`, the `AWS_*` names by the AWS SDK's chain it defers to. Keep
/// in step with objects/src/s3.rs (which exports no list of them).
const OBJECT_STORE_ENV: &[&str] = &[
    "AWS_ENDPOINT_URL",
    "AWS_REGION",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "S3_FORCE_PATH_STYLE",
];

/// Read by every binary's `tracing_subscriber::EnvFilter`.
const LOG_ENV: &str = "RUST_LOG";

/// The bucket the streams of the documented examples (DESIGN, deploy/README.md) write to.
const BUCKET: &str = "results";

/// The services the stack is made of (deploy/README.md).
const EXPECTED_SERVICES: &[&str] = &[
    "postgres",
    "minio",
    "minio-init",
    "data-streams",
    "data-streams-2",
    "worker",
    "iqair-sim",
];

/// The services that run the supervisor: two replicas on the one PostgreSQL database, a leader
/// and a follower (RFC §4, Replicas), in the order the workers dial them.
const SUPERVISORS: &[&str] = &["data-streams", "data-streams-2"];

// ---- the files ---------------------------------------------------------------------------------

/// docker-compose.yml, with YAML merge keys (`<<: *anchor`) applied as Compose applies them.
fn compose() -> &'static Value {
    static COMPOSE: OnceLock<Value> = OnceLock::new();
    COMPOSE.get_or_init(|| {
        let path = workspace_root().join("docker-compose.yml");
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        let mut value: Value = serde_norway::from_str(&text)
            .unwrap_or_else(|e| panic!("{} is not YAML: {e}", path.display()));
        value
            .apply_merge()
            .unwrap_or_else(|e| panic!("{}: bad merge key: {e}", path.display()));
        value
    })
}

fn services() -> &'static Mapping {
    compose()
        .get("services")
        .and_then(Value::as_mapping)
        .expect("docker-compose.yml has a services mapping")
}

fn service(name: &str) -> &'static Value {
    services()
        .get(name)
        .unwrap_or_else(|| panic!("docker-compose.yml has no service {name:?}"))
}

fn service_names() -> BTreeSet<String> {
    services()
        .keys()
        .map(|k| scalar(k).expect("service names are strings"))
        .collect()
}

/// A scalar as Compose reads it (`true` and `2` are strings to it); `None` for null or a
/// collection.
fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A `command`/`entrypoint`/healthcheck `test` as words: the list form, or the string form split
/// on whitespace (good enough for the plain commands this file uses).
fn words(value: Option<&Value>) -> Vec<String> {
    match value {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Sequence(items)) => items
            .iter()
            .map(|v| scalar(v).expect("command words are scalars"))
            .collect(),
        Some(other) => scalar(other)
            .expect("a command is a string or a list")
            .split_whitespace()
            .map(str::to_owned)
            .collect(),
    }
}

fn command(name: &str) -> Vec<String> {
    words(service(name).get("command"))
}

/// A service's `environment`, map form (`NAME: value`) or list form (`- NAME=value`); a name
/// without a value is passed through from Compose's own environment and maps to `None`.
fn environment(name: &str) -> BTreeMap<String, Option<String>> {
    match service(name).get("environment") {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(Value::Mapping(map)) => map
            .iter()
            .map(|(k, v)| (scalar(k).expect("variable names are strings"), scalar(v)))
            .collect(),
        Some(Value::Sequence(items)) => items
            .iter()
            .map(|item| {
                let item = scalar(item).expect("list entries are NAME=value strings");
                match item.split_once('=') {
                    Some((k, v)) => (k.to_owned(), Some(v.to_owned())),
                    None => (item, None),
                }
            })
            .collect(),
        Some(other) => panic!("service {name}: environment is neither a map nor a list: {other:?}"),
    }
}

/// The value a service sets for a variable; fails the test when it sets none.
fn env_value(service_name: &str, variable: &str) -> String {
    environment(service_name)
        .remove(variable)
        .flatten()
        .unwrap_or_else(|| panic!("service {service_name} sets no value for {variable}"))
}

/// `depends_on` as dependency -> condition (`service_started` for the list form).
fn depends_on(name: &str) -> BTreeMap<String, String> {
    match service(name).get("depends_on") {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(Value::Sequence(items)) => items
            .iter()
            .map(|v| {
                (
                    scalar(v).expect("dependencies are names"),
                    "service_started".to_owned(),
                )
            })
            .collect(),
        Some(Value::Mapping(map)) => map
            .iter()
            .map(|(k, v)| {
                let condition = v
                    .get("condition")
                    .and_then(scalar)
                    .unwrap_or_else(|| "service_started".to_owned());
                (scalar(k).expect("dependencies are names"), condition)
            })
            .collect(),
        Some(other) => panic!("service {name}: depends_on is neither a list nor a map: {other:?}"),
    }
}

fn profiles(name: &str) -> Vec<String> {
    words(service(name).get("profiles"))
}

/// The named volumes a service mounts (short `name:/path` or long `{type: volume, source}`).
fn named_volumes(name: &str) -> Vec<String> {
    let Some(Value::Sequence(volumes)) = service(name).get("volumes") else {
        return Vec::new();
    };
    volumes
        .iter()
        .filter_map(|v| match v {
            Value::Mapping(_) => (v.get("type").and_then(scalar).as_deref() == Some("volume"))
                .then(|| v.get("source").and_then(scalar))
                .flatten(),
            other => {
                let spec = scalar(other)?;
                let source = spec.split(':').next()?.to_owned();
                // A bind mount starts with a path; a named volume is a bare name.
                let is_path = source.starts_with(['.', '/', '~', '$']);
                (!is_path && spec.contains(':')).then_some(source)
            }
        })
        .collect()
}

/// The container ports a service publishes (`[ip:]host:container[/proto]` or long syntax).
fn published_container_ports(name: &str) -> Vec<u16> {
    let Some(Value::Sequence(ports)) = service(name).get("ports") else {
        return Vec::new();
    };
    ports
        .iter()
        .map(|p| {
            let target = match p {
                Value::Mapping(_) => p.get("target").and_then(scalar),
                other => scalar(other).map(|spec| {
                    let spec = spec.split('/').next().unwrap_or_default();
                    spec.rsplit(':').next().unwrap_or_default().to_owned()
                }),
            };
            target
                .and_then(|t| t.parse().ok())
                .unwrap_or_else(|| panic!("service {name}: cannot read the port in {p:?}"))
        })
        .collect()
}

fn healthcheck_test(name: &str) -> Vec<String> {
    let healthcheck = service(name)
        .get("healthcheck")
        .unwrap_or_else(|| panic!("service {name} has no healthcheck"));
    let test = words(healthcheck.get("test"));
    assert!(
        !test.is_empty() && test[0] != "NONE",
        "service {name}: the healthcheck has no test"
    );
    test
}

/// Whether a value is a required reference, `${NAME:?message}`: Compose refuses to start without
/// it, so no secret has a default in the file.
fn is_required_reference(value: &str) -> bool {
    value.starts_with("${") && value.ends_with('}') && value.contains(":?")
}

/// The port of a `host:port` address.
fn port_of(addr: &str) -> &str {
    addr.rsplit_once(':')
        .unwrap_or_else(|| panic!("{addr:?} is not host:port"))
        .1
}

/// A Compose value with each `${NAME:-default}` replaced by its default: what it is when the
/// environment sets nothing. References without a default stay as written.
fn with_defaults(value: &str) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let reference = &rest[start + 2..];
        let end = reference
            .find('}')
            .unwrap_or_else(|| panic!("{value:?} has an unclosed ${{"));
        match reference[..end].split_once(":-") {
            Some((_, default)) => out.push_str(default),
            None => out.push_str(&rest[start..start + 2 + end + 1]),
        }
        rest = &reference[end + 1..];
    }
    out.push_str(rest);
    out
}

/// The host ports a service publishes, with their defaults (`${NAME:-8080}` is 8080): the
/// `host` of `[ip:]host:container[/proto]`, or `published` in the long syntax. Ports left to
/// Docker to pick (no host side) are not listed: they never collide.
fn published_host_ports(name: &str) -> Vec<String> {
    let Some(Value::Sequence(ports)) = service(name).get("ports") else {
        return Vec::new();
    };
    ports
        .iter()
        .filter_map(|p| match p {
            Value::Mapping(_) => p
                .get("published")
                .and_then(scalar)
                .map(|h| with_defaults(&h)),
            other => {
                let spec = with_defaults(
                    &scalar(other)
                        .unwrap_or_else(|| panic!("service {name}: cannot read the port {p:?}")),
                );
                let spec = spec.split('/').next().unwrap_or_default();
                let (host, _container) = spec.rsplit_once(':')?;
                Some(host.rsplit(':').next().unwrap_or_default().to_owned())
            }
        })
        .filter(|host| !host.is_empty())
        .collect()
}

// ---- the binaries ------------------------------------------------------------------------------

/// Every product bin target of the workspace, with the package it belongs to, from `cargo
/// metadata`. Bins behind `required-features` are test tools (e.g. `s3-test-server`, which needs
/// `objects/test-server`) that a default build never produces, and packages with `publish =
/// false` are tooling (the `bench` crate's `ds-bench`): both stay out of the image.
fn workspace_bins() -> &'static BTreeMap<String, String> {
    static BINS: OnceLock<BTreeMap<String, String>> = OnceLock::new();
    BINS.get_or_init(|| {
        let output = Command::new(env!("CARGO"))
            .args(["metadata", "--no-deps", "--format-version", "1"])
            .current_dir(workspace_root())
            .output()
            .expect("cargo metadata runs");
        assert!(
            output.status.success(),
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let metadata: serde_json::Value =
            serde_json::from_slice(&output.stdout).expect("cargo metadata prints JSON");
        let mut bins = BTreeMap::new();
        for package in metadata["packages"].as_array().expect("packages") {
            let package_name = package["name"].as_str().expect("a package name");
            if package["publish"].as_array().is_some_and(|p| p.is_empty()) {
                continue;
            }
            for target in package["targets"].as_array().expect("targets") {
                let is_bin = target["kind"]
                    .as_array()
                    .is_some_and(|kinds| kinds.iter().any(|k| k == "bin"));
                let test_tool = target["required-features"]
                    .as_array()
                    .is_some_and(|features| !features.is_empty());
                if is_bin && !test_tool {
                    let name = target["name"].as_str().expect("a target name");
                    bins.insert(name.to_owned(), package_name.to_owned());
                }
            }
        }
        assert!(
            bins.contains_key("data-streams"),
            "cargo metadata lists no data-streams binary: {bins:?}"
        );
        bins
    })
}

/// The environment names clap prints in `--help`: `[env: NAME=value]`, or `[env: NAME]` for
/// settings with hidden values. Whitespace is normalised first, so a wrapped line still matches.
fn env_markers(help: &str) -> BTreeSet<String> {
    let help = help.split_whitespace().collect::<Vec<_>>().join(" ");
    help.split("[env: ")
        .skip(1)
        .map(|rest| {
            rest.chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect::<String>()
        })
        .filter(|name| !name.is_empty())
        .collect()
}

/// The environment names a binary reads: its `--help` markers, the log filter's, and, when it
/// has an object store (an `OBJECT_STORE_URL` setting), the S3 ones.
fn accepted_env(binary: &str) -> BTreeSet<String> {
    let path = bin(binary);
    let output = Command::new(&path)
        .arg("--help")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {} --help: {e}", path.display()));
    assert!(
        output.status.success(),
        "{binary} --help failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut names = env_markers(&String::from_utf8_lossy(&output.stdout));
    assert!(
        !names.is_empty(),
        "{binary} --help shows no [env: ...] markers; has clap's `env` feature gone?"
    );
    if names.contains("OBJECT_STORE_URL") {
        names.extend(OBJECT_STORE_ENV.iter().map(|s| s.to_string()));
    }
    names.insert(LOG_ENV.to_owned());
    names
}

/// The services that run a workspace binary, with that binary (the first word of `command`).
fn project_services() -> BTreeMap<String, String> {
    service_names()
        .into_iter()
        .filter_map(|name| {
            let binary = command(&name).into_iter().next()?;
            workspace_bins()
                .contains_key(&binary)
                .then_some((name, binary))
        })
        .collect()
}

// ---- compose: shape ----------------------------------------------------------------------------

#[test]
fn the_expected_services_are_defined() {
    let names = service_names();
    for expected in EXPECTED_SERVICES {
        assert!(
            names.contains(*expected),
            "docker-compose.yml lacks the {expected} service (has {names:?})"
        );
    }
}

#[test]
fn every_dependency_is_a_service_that_can_start_with_it() {
    const CONDITIONS: &[&str] = &[
        "service_started",
        "service_healthy",
        "service_completed_successfully",
    ];
    let names = service_names();
    for name in &names {
        for (dependency, condition) in depends_on(name) {
            assert!(
                names.contains(&dependency),
                "service {name} depends on {dependency:?}, which is not a service"
            );
            assert!(
                CONDITIONS.contains(&condition.as_str()),
                "service {name}: unknown condition {condition:?} on {dependency}"
            );
            if condition == "service_healthy" {
                healthcheck_test(&dependency);
            }
            // A dependency behind a profile the dependent does not share would not be started.
            let needed = profiles(&dependency);
            let own = profiles(name);
            assert!(
                needed.is_empty() || needed.iter().any(|p| own.contains(p)),
                "service {name} depends on {dependency}, which only runs with profiles {needed:?}"
            );
        }
    }
}

#[test]
fn project_services_run_one_image_built_from_the_dockerfile() {
    let expected = BTreeMap::from([
        ("data-streams".to_owned(), "data-streams".to_owned()),
        ("data-streams-2".to_owned(), "data-streams".to_owned()),
        ("worker".to_owned(), "worker".to_owned()),
        ("iqair-sim".to_owned(), "iqair-sim".to_owned()),
    ]);
    let project = project_services();
    for (name, binary) in &expected {
        assert_eq!(
            project.get(name),
            Some(binary),
            "service {name} should run the {binary} binary (command: {:?})",
            command(name)
        );
        assert!(
            workspace_bins().contains_key(binary),
            "{binary} is not a binary of the workspace"
        );
    }

    let mut images = BTreeSet::new();
    for name in service_names() {
        let built = service(&name).get("build");
        if project.contains_key(&name) {
            assert!(
                built.is_some(),
                "service {name} runs a workspace binary but has no build section"
            );
        }
        let Some(build) = built else { continue };
        assert!(
            project.contains_key(&name),
            "service {name} builds the image but runs no workspace binary"
        );
        let (context, dockerfile) = match build {
            Value::Mapping(_) => (
                build.get("context").and_then(scalar).unwrap_or(".".into()),
                build
                    .get("dockerfile")
                    .and_then(scalar)
                    .unwrap_or("Dockerfile".into()),
            ),
            other => (
                scalar(other).expect("build is a context path"),
                "Dockerfile".into(),
            ),
        };
        let context = workspace_root().join(context);
        assert_eq!(
            context.canonicalize().expect("the build context exists"),
            workspace_root()
                .canonicalize()
                .expect("the workspace exists"),
            "service {name} builds from another context"
        );
        assert_eq!(
            dockerfile, "Dockerfile",
            "service {name} builds another Dockerfile"
        );
        assert!(
            context.join(&dockerfile).is_file(),
            "{dockerfile} is missing"
        );
        let image = service(&name)
            .get("image")
            .and_then(scalar)
            .unwrap_or_else(|| panic!("service {name} names no image, so Compose makes one each"));
        images.insert(image);
    }
    assert_eq!(
        images.len(),
        1,
        "the project's services should share one image, not {images:?}"
    );
}

#[test]
fn every_variable_set_on_a_project_service_is_a_setting_of_its_binary() {
    let project = project_services();
    assert!(!project.is_empty(), "no service runs a workspace binary");
    let mut accepted_by: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    let mut problems = Vec::new();
    for (name, binary) in &project {
        let accepted = accepted_by
            .entry(binary.as_str())
            .or_insert_with(|| accepted_env(binary));
        let unknown: Vec<String> = environment(name)
            .into_keys()
            .filter(|variable| !accepted.contains(variable))
            .collect();
        if !unknown.is_empty() {
            problems.push(format!(
                "service {name} sets {unknown:?}, which {binary} does not read; it reads {accepted:?}"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn help_markers_are_read_with_and_without_values() {
    let help = "  --a <A>  Address [env: DATA_STREAMS_HTTP_ADDR=] [default: x]\n  \
                --t <T>  Secret [env: DATA_STREAMS_WORKER_TOKEN]\n  \
                --w <W>  Wrapped [env:\n          WORKER_ID=host-1]\n  \
                --d <D>  Set [env: DATABASE_URL=postgres://u:p@h/db]";
    let names: Vec<String> = env_markers(help).into_iter().collect();
    assert_eq!(
        names,
        [
            "DATABASE_URL",
            "DATA_STREAMS_HTTP_ADDR",
            "DATA_STREAMS_WORKER_TOKEN",
            "WORKER_ID"
        ]
    );
}

// ---- compose: the production backends ----------------------------------------------------------

#[test]
fn the_supervisors_are_every_service_that_runs_data_streams() {
    let running: Vec<String> = project_services()
        .into_iter()
        .filter(|(_, binary)| binary == "data-streams")
        .map(|(name, _)| name)
        .collect();
    let mut expected: Vec<String> = SUPERVISORS.iter().map(|s| s.to_string()).collect();
    expected.sort();
    // A supervisor the workers' list leaves out could lead, and no worker would reach it.
    assert_eq!(
        running, expected,
        "the services running data-streams should be the supervisor replicas"
    );
}

#[test]
fn supervisors_run_on_one_postgres_and_s3() {
    let mut databases = BTreeSet::new();
    for &name in SUPERVISORS {
        let database_url = env_value(name, "DATABASE_URL");
        let rest = database_url
            .strip_prefix("postgres://")
            .or_else(|| database_url.strip_prefix("postgresql://"))
            .unwrap_or_else(|| {
                // SQLite takes one supervisor only: a second one exits at start-up.
                panic!("service {name}: DATABASE_URL is not a postgres:// URL: {database_url:?}")
            });
        let (credentials, location) = rest
            .rsplit_once('@')
            .expect("DATABASE_URL names a user and password");
        assert!(
            location.starts_with("postgres:") || location.starts_with("postgres/"),
            "service {name}: DATABASE_URL should point at the postgres service: {database_url:?}"
        );
        let (_, password) = credentials
            .split_once(':')
            .expect("DATABASE_URL carries a password");
        assert!(
            is_required_reference(password),
            "service {name}: the database password should be a required \
             ${{POSTGRES_PASSWORD:?...}}, not {password:?}"
        );
        databases.insert(database_url);

        let deps = depends_on(name);
        assert_eq!(
            deps.get("postgres").map(String::as_str),
            Some("service_healthy"),
            "{name} should wait for a healthy postgres"
        );
        assert_eq!(
            deps.get("minio-init").map(String::as_str),
            Some("service_completed_successfully"),
            "{name} should wait for the bucket to exist"
        );
    }
    // The replicas elect their leader in that database: two databases would make two leaders.
    assert_eq!(
        databases.len(),
        1,
        "the supervisors should share one database, not {databases:?}"
    );

    for name in SUPERVISORS.iter().copied().chain(["worker"]) {
        assert_eq!(
            env_value(name, "OBJECT_STORE_URL"),
            "s3://",
            "service {name}"
        );
        let endpoint = env_value(name, "AWS_ENDPOINT_URL");
        assert!(
            endpoint.starts_with("http://minio:") || endpoint.starts_with("https://minio:"),
            "service {name}: AWS_ENDPOINT_URL should point at the minio service, not {endpoint:?}"
        );
        assert_eq!(
            env_value(name, "S3_FORCE_PATH_STYLE"),
            "true",
            "service {name}: MinIO needs path-style addressing"
        );
        for variable in ["AWS_REGION", "AWS_ACCESS_KEY_ID"] {
            env_value(name, variable);
        }
        let secret = env_value(name, "AWS_SECRET_ACCESS_KEY");
        assert!(
            is_required_reference(&secret),
            "service {name}: AWS_SECRET_ACCESS_KEY should be a required reference, not {secret:?}"
        );
    }
}

#[test]
fn supervisors_listen_on_all_interfaces_and_report_readiness() {
    // host port -> the supervisor that publishes it
    let mut host_ports: BTreeMap<String, &str> = BTreeMap::new();
    for &name in SUPERVISORS {
        let http = env_value(name, "DATA_STREAMS_HTTP_ADDR");
        let workers = env_value(name, "DATA_STREAMS_WORKER_ADDR");
        for addr in [&http, &workers] {
            assert!(
                addr.starts_with("0.0.0.0:") || addr.starts_with("[::]:"),
                "{name} should listen on all interfaces of its container, not {addr:?}"
            );
        }
        let http_port: u16 = port_of(&http).parse().expect("a port");
        assert!(
            published_container_ports(name).contains(&http_port),
            "{name} should publish its HTTP port {http_port}"
        );
        for host_port in published_host_ports(name) {
            if let Some(other) = host_ports.insert(host_port.clone(), name) {
                panic!("{other} and {name} both publish host port {host_port}");
            }
        }
        let test = healthcheck_test(name).join(" ");
        assert!(
            test.contains("/readyz") && test.contains(&http_port.to_string()),
            "the {name} healthcheck should ask /readyz on port {http_port}: {test}"
        );
        for variable in ["DATA_STREAMS_WORKER_TOKEN", "DATA_STREAMS_API_TOKEN"] {
            let value = env_value(name, variable);
            assert!(
                is_required_reference(&value),
                "{name}: {variable} should be a required ${{{variable}:?...}} reference, not \
                 {value:?}"
            );
        }
    }
}

#[test]
fn supervisors_advertise_their_own_names_and_share_their_tokens() {
    for &name in SUPERVISORS {
        // A follower sends workers to the leader's advertised worker address, and GET /cluster
        // shows both: the 0.0.0.0 a replica binds is no address for anyone else, its service
        // name is, on the compose network.
        for (bound, advertised) in [
            ("DATA_STREAMS_HTTP_ADDR", "DATA_STREAMS_ADVERTISE_HTTP_ADDR"),
            (
                "DATA_STREAMS_WORKER_ADDR",
                "DATA_STREAMS_ADVERTISE_WORKER_ADDR",
            ),
        ] {
            let port = port_of(&env_value(name, bound)).to_owned();
            assert_eq!(
                env_value(name, advertised),
                format!("{name}:{port}"),
                "{name} should advertise its service name and its {bound} port"
            );
        }
    }
    // A worker may land on either replica, and console sessions are signed with a key derived
    // from the API token: every replica needs the same ones.
    for variable in ["DATA_STREAMS_WORKER_TOKEN", "DATA_STREAMS_API_TOKEN"] {
        let values: BTreeSet<String> = SUPERVISORS
            .iter()
            .map(|name| env_value(name, variable))
            .collect();
        assert_eq!(
            values.len(),
            1,
            "the supervisors should read one {variable}, not {values:?}"
        );
    }
}

#[test]
fn workers_are_two_replicas_dialing_every_supervisor_with_its_token() {
    let replicas = service("worker")
        .get("deploy")
        .and_then(|d| d.get("replicas"))
        .and_then(scalar);
    assert_eq!(replicas.as_deref(), Some("2"), "worker deploy.replicas");

    // Every supervisor, in turn: whichever leads is reached directly or through a redirect, and
    // one that is down is skipped.
    let supervisors: Vec<String> = SUPERVISORS
        .iter()
        .map(|name| {
            let port = port_of(&env_value(name, "DATA_STREAMS_WORKER_ADDR")).to_owned();
            format!("{name}:{port}")
        })
        .collect();
    assert_eq!(
        env_value("worker", "DATA_STREAMS_WORKER_ADDR"),
        supervisors.join(","),
        "workers should dial every supervisor's worker port"
    );
    for &name in SUPERVISORS {
        assert_eq!(
            env_value("worker", "DATA_STREAMS_WORKER_TOKEN"),
            env_value(name, "DATA_STREAMS_WORKER_TOKEN"),
            "both sides of the worker link should read the same token ({name})"
        );
        assert!(
            depends_on("worker").contains_key(name),
            "workers should start after {name}"
        );
    }
    // Replicas tell themselves apart by their host names; a fixed one would make them one worker.
    assert!(
        !environment("worker").contains_key("WORKER_ID"),
        "WORKER_ID should be left to each replica's host name"
    );
    for key in ["hostname", "container_name"] {
        assert!(
            service("worker").get(key).is_none(),
            "worker sets {key}, which replicas cannot share"
        );
    }
}

#[test]
fn postgres_is_checked_with_pg_isready_and_keeps_its_data_in_a_volume() {
    let image = service("postgres")
        .get("image")
        .and_then(scalar)
        .unwrap_or_default();
    assert!(
        image.starts_with("postgres:16"),
        "postgres image: {image:?}"
    );
    let test = healthcheck_test("postgres");
    assert!(
        test.iter().any(|w| w.contains("pg_isready")),
        "the postgres healthcheck should run pg_isready: {test:?}"
    );
    let password = environment("postgres")
        .remove("POSTGRES_PASSWORD")
        .flatten()
        .unwrap_or_default();
    assert!(
        is_required_reference(&password),
        "POSTGRES_PASSWORD should be a required reference, not {password:?}"
    );
    assert_declared_volume("postgres");
}

#[test]
fn minio_serves_with_a_console_a_healthcheck_and_a_volume() {
    let image = service("minio")
        .get("image")
        .and_then(scalar)
        .unwrap_or_default();
    assert!(image.contains("minio/minio"), "minio image: {image:?}");
    let command = command("minio").join(" ");
    assert!(
        command.starts_with("server /data") && command.contains("--console-address :9001"),
        "minio command: {command:?}"
    );
    healthcheck_test("minio");
    assert_declared_volume("minio");
}

#[test]
fn minio_init_creates_the_bucket_and_exits() {
    let image = service("minio-init")
        .get("image")
        .and_then(scalar)
        .unwrap_or_default();
    assert!(image.contains("minio/mc"), "minio-init image: {image:?}");
    assert_eq!(
        depends_on("minio-init").get("minio").map(String::as_str),
        Some("service_healthy"),
        "minio-init should wait for a healthy minio"
    );
    let restart = service("minio-init")
        .get("restart")
        .and_then(scalar)
        .unwrap_or_else(|| "no".into());
    assert_eq!(restart, "no", "a one-shot must not be restarted");

    let command = command("minio-init");
    assert_eq!(
        command.first().map(String::as_str),
        Some("mb"),
        "minio-init should make a bucket (mc mb): {command:?}"
    );
    let target = command.last().expect("mc mb names a bucket");
    let (alias, bucket) = target
        .split_once('/')
        .unwrap_or_else(|| panic!("mc mb target {target:?} is not ALIAS/BUCKET"));
    assert_eq!(bucket, BUCKET, "minio-init creates the wrong bucket");
    let host = env_value("minio-init", &format!("MC_HOST_{alias}"));
    assert!(
        host.ends_with("@minio:9000"),
        "the mc alias {alias} should point at the minio service: {host:?}"
    );
}

#[test]
fn the_simulator_runs_only_with_the_sim_profile() {
    assert_eq!(profiles("iqair-sim"), ["sim"], "iqair-sim profiles");
    let addr = env_value("iqair-sim", "IQAIR_SIM_ADDR");
    assert_eq!(
        addr, "0.0.0.0:8090",
        "iqair-sim should listen on all interfaces of its container"
    );
}

/// A service mounts a named volume that the file declares.
fn assert_declared_volume(name: &str) {
    let declared: BTreeSet<String> = compose()
        .get("volumes")
        .and_then(Value::as_mapping)
        .map(|m| m.keys().filter_map(scalar).collect())
        .unwrap_or_default();
    let used = named_volumes(name);
    assert!(
        !used.is_empty(),
        "service {name} keeps its data in no named volume"
    );
    for volume in used {
        assert!(
            declared.contains(&volume),
            "service {name} mounts {volume:?}, which the top-level volumes do not declare"
        );
    }
}

// ---- Dockerfile --------------------------------------------------------------------------------

/// The Dockerfile's instructions as (INSTRUCTION, arguments): comments dropped, `\` continuations
/// joined.
fn dockerfile() -> Vec<(String, String)> {
    let path = workspace_root().join("Dockerfile");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let mut instructions = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                let (instruction, args) = current
                    .split_once(char::is_whitespace)
                    .unwrap_or((&current, ""));
                instructions.push((instruction.to_ascii_uppercase(), args.trim().to_owned()));
                current.clear();
            }
        }
    }
    instructions
}

/// Every workspace package as (name, folder relative to the workspace, is tooling): tooling
/// (`publish = false`, the bench crate) is never built into the image.
fn workspace_packages() -> Vec<(String, String, bool)> {
    let output = Command::new(env!("CARGO"))
        .args(["metadata", "--no-deps", "--format-version", "1"])
        .current_dir(workspace_root())
        .output()
        .expect("cargo metadata runs");
    assert!(output.status.success(), "cargo metadata failed");
    let metadata: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("cargo metadata prints JSON");
    metadata["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .map(|package| {
            let manifest = Path::new(package["manifest_path"].as_str().expect("a manifest"));
            let folder = manifest
                .parent()
                .and_then(|dir| dir.strip_prefix(workspace_root()).ok())
                .expect("members live in the workspace")
                .display()
                .to_string();
            let tooling = package["publish"].as_array().is_some_and(|p| p.is_empty());
            let name = package["name"].as_str().expect("a package name").to_owned();
            (name, folder, tooling)
        })
        .collect()
}

#[test]
fn the_builder_has_every_crate_the_binaries_need() {
    let instructions = dockerfile();
    let has = |instruction: &str, args: &str| {
        instructions.iter().any(|(i, a)| {
            i == instruction && a.split_whitespace().collect::<Vec<_>>().join(" ") == args
        })
    };
    let builds: Vec<&String> = instructions
        .iter()
        .filter(|(i, args)| i == "RUN" && args.contains("cargo build"))
        .map(|(_, args)| args)
        .collect();
    let stubs = instructions
        .iter()
        .find(|(i, args)| i == "RUN" && args.contains("cargo fetch"))
        .map(|(_, args)| args.clone())
        .expect("a RUN that fetches the dependencies from the manifests");
    let binary_packages: BTreeSet<&String> = workspace_bins().values().collect();
    for (name, folder, tooling) in workspace_packages() {
        // Cargo loads the whole workspace, so every member's manifest is needed to fetch.
        assert!(
            has("COPY", &format!("{folder}/Cargo.toml {folder}/")),
            "the Dockerfile does not copy {folder}/Cargo.toml"
        );
        if tooling {
            continue;
        }
        assert!(
            has("COPY", &format!("{folder} {folder}")),
            "the Dockerfile does not copy the sources of {name} ({folder})"
        );
        assert!(
            stubs
                .split_whitespace()
                .any(|w| w.trim_end_matches(';') == folder),
            "the dependency layer has no stub for {folder}: {stubs}"
        );
        if binary_packages.contains(&name) {
            assert!(
                builds.iter().any(|b| b.contains(&format!("-p {name} "))),
                "no cargo build in the Dockerfile builds package {name}"
            );
        }
    }
}

#[test]
fn the_dockerfile_builds_every_binary_in_stages_and_runs_them_unprivileged() {
    let instructions = dockerfile();
    let stages: Vec<&[(String, String)]> = {
        let starts: Vec<usize> = instructions
            .iter()
            .enumerate()
            .filter(|(_, (i, _))| i == "FROM")
            .map(|(n, _)| n)
            .collect();
        starts
            .iter()
            .enumerate()
            .map(|(k, &start)| {
                &instructions[start..*starts.get(k + 1).unwrap_or(&instructions.len())]
            })
            .collect()
    };
    assert!(
        stages.len() >= 2,
        "the Dockerfile should be multi-stage (a builder and a runtime), has {} FROM",
        stages.len()
    );
    let runtime = stages.last().expect("a final stage");
    let builders = &stages[..stages.len() - 1];

    // The build: release, the committed lock file, every binary.
    let builds: Vec<&String> = builders
        .iter()
        .flat_map(|stage| stage.iter())
        .filter(|(i, args)| i == "RUN" && args.contains("cargo build"))
        .map(|(_, args)| args)
        .collect();
    assert!(!builds.is_empty(), "no stage runs cargo build");
    for build in &builds {
        assert!(
            build.contains("--release") && build.contains("--locked"),
            "cargo build should be --release --locked: {build}"
        );
    }
    for binary in workspace_bins().keys() {
        assert!(
            builds
                .iter()
                .any(|b| b.contains("--bins") || b.contains(&format!("--bin {binary}"))),
            "no cargo build in the Dockerfile builds {binary}"
        );
    }

    // The runtime: no toolchain, every binary on the PATH, a non-root numeric user.
    let (_, base) = &runtime[0];
    assert!(
        !base.starts_with("rust:"),
        "the runtime stage should not be a Rust toolchain image: {base}"
    );
    let copies: Vec<&String> = runtime
        .iter()
        .filter(|(i, args)| i == "COPY" && args.starts_with("--from="))
        .map(|(_, args)| args)
        .collect();
    for binary in workspace_bins().keys() {
        assert!(
            copies.iter().any(|c| {
                let words: Vec<&str> = c.split_whitespace().collect();
                words.last() == Some(&"/usr/local/bin/")
                    && words
                        .iter()
                        .any(|w| Path::new(w).file_name().and_then(|n| n.to_str()) == Some(binary))
            }),
            "the runtime stage does not copy {binary} to /usr/local/bin/: {copies:?}"
        );
    }
    let user = runtime
        .iter()
        .rev()
        .find(|(i, _)| i == "USER")
        .map(|(_, args)| args.clone())
        .expect("the runtime stage sets a USER");
    let uid = user.split(':').next().unwrap_or_default();
    assert!(
        uid.parse::<u32>().is_ok_and(|uid| uid != 0),
        "the runtime should run as a non-root numeric uid, not USER {user}"
    );

    // Every container port the stack publishes from the image is declared.
    let exposed: BTreeSet<u16> = runtime
        .iter()
        .filter(|(i, _)| i == "EXPOSE")
        .flat_map(|(_, args)| args.split_whitespace())
        .filter_map(|p| p.split('/').next()?.parse().ok())
        .collect();
    for name in project_services().keys() {
        for port in published_container_ports(name) {
            assert!(
                exposed.contains(&port),
                "service {name} publishes {port}, which the Dockerfile does not EXPOSE"
            );
        }
    }
}

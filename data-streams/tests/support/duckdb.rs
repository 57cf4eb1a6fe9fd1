//! DuckDB, the analyst's client, run for real: the `duckdb` Python package from PyPI in the test
//! virtual environment (scripts/test.sh installs it in `target/test-venv`; `DUCKDB_PYTHON` names
//! another interpreter that has it). Missing, a test fails saying so; it never skips.
//!
//! [`duckdb_query`] runs SQL as written (the README's own queries) and gives each row back as a
//! JSON object, column by column, with DuckDB's values converted the way `json.dumps(default=str)`
//! does (timestamps and dates as text).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use super::workspace_root;

/// The Python interpreter that has the `duckdb` package.
pub fn duckdb_python() -> PathBuf {
    test_venv_program("DUCKDB_PYTHON", "python", "duckdb")
}

/// A program of the test virtual environment (`target/test-venv/bin/<name>`, where
/// scripts/test.sh installs `package` from PyPI), or the one the variable `env` names. Missing,
/// the test fails saying how to get it; it never skips.
pub fn test_venv_program(env: &str, name: &str, package: &str) -> PathBuf {
    let path = std::env::var(env)
        .map(PathBuf::from)
        .unwrap_or_else(|_| workspace_root().join("target/test-venv/bin").join(name));
    assert!(
        path.exists(),
        "{} is missing: run scripts/test.sh, which installs {package} from PyPI into \
         target/test-venv, or set {env}",
        path.display()
    );
    path
}

/// The README's SQL block that contains `marker` (e.g. `read_json(`), as written, without its
/// trailing `;`: the tests run the analyst's queries exactly as the README shows them.
pub fn readme_sql(marker: &str) -> String {
    let readme = std::fs::read_to_string(workspace_root().join("README.md")).expect("README.md");
    readme
        .split("```sql")
        .skip(1)
        .filter_map(|block| block.split("```").next())
        .find(|block| block.contains(marker))
        .unwrap_or_else(|| panic!("the README has no SQL block with {marker}"))
        .trim()
        .trim_end_matches(';')
        .to_owned()
}

const RUNNER: &str = r#"
import json, sys
import duckdb
con = duckdb.connect()
for statement in json.loads(sys.argv[2]):
    con.execute(statement)
cursor = con.execute(sys.argv[1])
names = [d[0] for d in cursor.description]
rows = [dict(zip(names, row)) for row in cursor.fetchall()]
print(json.dumps(rows, default=str))
"#;

/// Runs `sql` in a fresh in-memory DuckDB, in `dir` (so relative paths in the query resolve
/// there), after the `setup` statements (`SET s3_endpoint = …` and the like); each row as a
/// JSON object. Panics with DuckDB's own message when the query fails.
pub fn duckdb_query(dir: &Path, setup: &[String], sql: &str) -> Vec<Value> {
    let output = Command::new(duckdb_python())
        .args([
            "-c",
            RUNNER,
            sql,
            &serde_json::to_string(setup).expect("setup as JSON"),
        ])
        .current_dir(dir)
        .output()
        .expect("python runs");
    assert!(
        output.status.success(),
        "duckdb failed on {sql:?}:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    match serde_json::from_slice(&output.stdout) {
        Ok(Value::Array(rows)) => rows,
        other => panic!(
            "duckdb printed no rows as JSON ({other:?}): {}",
            String::from_utf8_lossy(&output.stdout)
        ),
    }
}

//! Build script: turns on the MinIO behaviour tests when `TEST_S3_ENDPOINT` is set at build time.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(objects_minio)");
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=TEST_S3_ENDPOINT");
    // An empty value counts as unset, so `TEST_S3_ENDPOINT= cargo test` does not ask for MinIO.
    if std::env::var("TEST_S3_ENDPOINT").is_ok_and(|endpoint| !endpoint.trim().is_empty()) {
        println!("cargo::rustc-cfg=objects_minio");
    }
}

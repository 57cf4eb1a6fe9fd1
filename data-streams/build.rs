//! Build script: `sqlx::migrate!` embeds the migrations, so a changed `.sql` file must rebuild.

fn main() {
    println!("cargo::rerun-if-changed=migrations");
}

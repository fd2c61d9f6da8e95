//! Rebuilds the crate when a migration changes: `sqlx::migrate!()` embeds
//! `migrations/` at compile time, and Cargo does not know it reads them.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}

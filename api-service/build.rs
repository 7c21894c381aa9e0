//! Rebuilds the crate when the admin page's built assets change: they are embedded at compile
//! time, and a rebuilt page renames its hashed files, which the embedding macro alone misses.
fn main() {
    println!("cargo:rerun-if-changed=../admin-ui/dist");
    println!("cargo:rerun-if-changed=migrations");
}

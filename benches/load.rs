//! End-to-end load benchmark (in progress).

fn main() {}

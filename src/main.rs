//! The `wsgate` binary.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    println!("wsgate {}", env!("CARGO_PKG_VERSION"));
}

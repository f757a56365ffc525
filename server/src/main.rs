//! The `tidegate` command.

/// mimalloc, not the system allocator: see ARCHITECTURE.md.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    // Only speed and resident memory depend on it, so a kernel without it is no reason to stop.
    let _ = tidegate_runtime::without_huge_pages();
    tidegate_server::main_with_args(std::env::args_os())
}

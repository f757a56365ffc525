//! The `tidegate` command.

/// mimalloc, not the system allocator: see ARCHITECTURE.md.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    tidegate_server::main_with_args(std::env::args_os())
}

//! The `tidegate` command.

fn main() -> std::process::ExitCode {
    tidegate_server::main_with_args(std::env::args_os())
}

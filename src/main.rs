//! The `walstream` command: argument parsing lives in `cli`, behaviour in the library.

mod cli;

fn main() -> std::process::ExitCode {
    cli::malloc::limit_arenas();
    cli::main()
}

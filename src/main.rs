//! The `scaivault-audit` command. Subcommands live in [`cli`]; the service is the library.

mod cli;

// glibc's allocator spent about a fifth of the ingest CPU in malloc/free (large request
// bodies, many short-lived JSON values); mimalloc removes most of that.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    cli::run()
}

//! The `scaivault-audit` command. Subcommands live in [`cli`]; the service is the library.

mod cli;

// glibc's allocator spent about a fifth of the ingest CPU in malloc/free (large request
// bodies, many short-lived JSON values); mimalloc removes most of that.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    opt_out_of_transparent_huge_pages();
    cli::run()
}

/// Turns transparent huge pages off for this process. mimalloc asks for huge pages and returns
/// freed memory to the kernel after a second; with huge pages every reuse then faults in a
/// fresh 2 MiB page that the kernel zeroes. That zeroing was ~17 % of the ingest CPU (new index
/// segments, request bodies, WAL buffers); with 4 KiB pages it disappears and peak RSS drops
/// (docs/benchmarks.md, "Issue 13"). Fails only on kernels before 3.15, where nothing changes.
fn opt_out_of_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    let _ = rustix::thread::disable_transparent_huge_pages(true);
}

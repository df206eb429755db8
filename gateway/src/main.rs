//! `cedargate`: a policy-driven authorization and identity gateway.

/// mimalloc instead of glibc's malloc: the request path allocates many small, short-lived
/// buffers across threads, where glibc spent ~15 % of the gateway's CPU (bench/README.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    cedargate::cli::main()
}

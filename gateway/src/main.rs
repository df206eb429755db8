//! `cedargate`: a policy-driven authorization and identity gateway.

fn main() -> std::process::ExitCode {
    cedargate::cli::main()
}

//! `vhost-device-accel`, built with the tests that run it as a process
//! (cargo rebuilds it with them, so they never run a stale daemon).

fn main() -> std::process::ExitCode {
    vhost_device_accel::cli::main()
}

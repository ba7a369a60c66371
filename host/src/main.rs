//! `vhost-device-accel`: serves virtio-accel devices to VMs over vhost-user.

fn main() -> std::process::ExitCode {
    vhost_device_accel::cli::main()
}

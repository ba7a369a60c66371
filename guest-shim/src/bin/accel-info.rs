//! Prints what the virtio-accel node reports about itself.

use std::process::ExitCode;

use virtio_accel_guest::accel::Accel;

fn main() -> ExitCode {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "/dev/accel/accel0".into());
    let dev = match Accel::open(&path) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("accel-info: {path}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = dev.version().and_then(|v| Ok((v, dev.caps()?)));
    match result {
        Ok(((name, major, minor), c)) => {
            let npu = String::from_utf8_lossy(&c.name);
            println!("node:            {path}");
            println!("driver:          {name} {major}.{minor}");
            println!(
                "npu:             {} (kind {}, version {}.{})",
                npu.trim_end_matches('\0'),
                c.npu_kind,
                c.npu_version >> 16,
                c.npu_version & 0xffff
            );
            println!(
                "command format:  {} v{}, ops {:#x}",
                c.cmd_format, c.cmd_format_version, c.ops
            );
            println!("max buffer:      {} bytes", c.max_bo_size);
            println!(
                "max command:     {} bytes, {} buffers, {} in-fences",
                c.max_cmd_size, c.max_submit_bos, c.max_in_syncobjs
            );
            println!("features:        {:#x}", c.features);
            println!("accel-info: OK");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("accel-info: {path}: {e}");
            ExitCode::FAILURE
        }
    }
}

//! A guest's driver request for the `accel` backend: fuzzer bytes pick a
//! personality's ioctl (or any request number), the route and the answer
//! room, and the rest is the flattened request. Nothing may panic; an
//! admitted call's answer fits the room, every pointer the driver gets
//! names a buffer of the call's own (the driver is played by filling
//! them), and the answer is as long as the codec said.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vhost_device_accel::backend::accel::uapi::codec::decode;
use vhost_device_accel::backend::accel::uapi::{Route, Rule, TABLES};

fuzz_target!(|data: &[u8]| {
    let [pick, flags, r0, r1, rest @ ..] = data else {
        return;
    };
    let all: Vec<_> = TABLES
        .iter()
        .flat_map(|t| t.ioctls.iter().map(move |i| (*t, i)))
        .collect();
    let (table, ioctl) = all[usize::from(*pick) % all.len()];
    let (code, input) = match (flags & 2, rest) {
        (2, [a, b, c, d, input @ ..]) => (u32::from_le_bytes([*a, *b, *c, *d]), input),
        _ => (ioctl.code, rest),
    };
    let route = if flags & 1 == 1 {
        Route::Submit
    } else {
        Route::Ioctl
    };
    let out_max = usize::from(u16::from_le_bytes([*r0, *r1]));
    let Ok(mut call) = decode(table, route, code, input, out_max) else {
        return;
    };
    assert!(call.answer_len() <= out_max);
    let len = call.answer_len();
    let fields = call.ioctl().fields;
    let arg = call.arg();
    for f in fields {
        if let Rule::Pointer(p) = f.rule {
            let mut v = [0u8; 8];
            v.copy_from_slice(&arg[f.off..f.off + 8]);
            let addr = u64::from_le_bytes(v);
            if addr != 0 && p.dir.returned() {
                // Only the codec's own buffers are named: the driver
                // writing them must stay inside (ASan checks it).
                let n = match p.count {
                    vhost_device_accel::backend::accel::uapi::Count::Fixed(n) => n as usize,
                    vhost_device_accel::backend::accel::uapi::Count::Field {
                        off, width, ..
                    } => {
                        let mut c = [0u8; 8];
                        c[..width].copy_from_slice(&arg[off..off + width]);
                        u64::from_le_bytes(c) as usize
                    }
                };
                // SAFETY: the call's buffer for this field holds `n` elements.
                unsafe { std::ptr::write_bytes(addr as *mut u8, 0xa5, n * p.elem) };
            }
        }
    }
    let _ = call.handles();
    let _ = call.host_bytes();
    assert_eq!(call.answer().len(), len);
});

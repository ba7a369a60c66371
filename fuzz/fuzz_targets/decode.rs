//! Request, response and event decoding: never panics, and whatever decodes
//! re-encodes to exactly the bytes it came from (the decoders accept no
//! trailing or ignored bytes) and decodes again to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use virtio_accel_protocol::*;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, bytes)) = data.split_first() else {
        return;
    };
    match sel % 3 {
        0 => {
            let lim = Limits::default();
            if let Ok(req) = Request::decode(bytes, &lim) {
                let enc = req.encode();
                assert_eq!(enc, bytes, "request re-encodes differently");
                assert_eq!(Request::decode(&enc, &lim).as_ref(), Ok(&req));
                let _ = req.response_size();
            }
            // The device's own limits are tighter than the ceilings.
            let tight = Limits {
                max_sg_entries: 4,
                max_submit_bos: 2,
                max_in_fences: 2,
                max_inline_cmd: 256,
                max_ioctl_payload: 64,
            };
            if let Ok(req) = Request::decode(bytes, &tight) {
                assert_eq!(req.encode(), bytes);
            }
        }
        1 => {
            let Some((t, body)) = bytes.split_first_chunk::<2>() else {
                return;
            };
            // A request type from the known set, chosen by two bytes.
            let types = REQUEST_TYPES;
            let t = types[usize::from(u16::from_le_bytes(*t)) % types.len()].0;
            if let Ok(resp) = Response::decode(t, body) {
                let enc = resp.encode();
                assert_eq!(enc, body, "response re-encodes differently");
                assert_eq!(Response::decode(t, &enc).map(|r| r.encode()), Ok(enc));
            }
        }
        _ => {
            if let Ok(ev) = Event::decode(bytes) {
                assert_eq!(zerocopy::IntoBytes::as_bytes(&ev), bytes);
            }
        }
    }
});

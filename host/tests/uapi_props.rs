//! Properties of the driver-request codec over every ioctl of every
//! personality's table, from requests built to obey each table entry and
//! then broken one way at a time:
//! - a request that obeys its entry is admitted; the call the driver gets
//!   is the guest's struct with each pointer naming the device's copy of
//!   its data and scrubbed fields zero; the answer is the struct with the
//!   guest's pointer values back, then exactly the data the driver writes;
//! - a nonzero must-be-zero field, a value outside its set, a count above
//!   the driver's maximum, a missing or extra byte, a short `out_size`, or
//!   the wrong route is refused;
//! - arbitrary bytes for any code never panic.

use proptest::prelude::*;
use proptest::sample::Index;
use vhost_device_accel::backend::accel::uapi::codec::decode;
use vhost_device_accel::backend::accel::uapi::{Count, Ioctl, Route, Rule, Table, TABLES};
use vhost_device_accel::backend::IoctlError;

/// The most elements a generated array has (the tables allow thousands).
const MAX_GEN: u64 = 40;

fn put(s: &mut [u8], off: usize, width: usize, v: u64) {
    s[off..off + width].copy_from_slice(&v.to_le_bytes()[..width]);
}

fn get(s: &[u8], off: usize, width: usize) -> u64 {
    let mut b = [0u8; 8];
    b[..width].copy_from_slice(&s[off..off + width]);
    u64::from_le_bytes(b)
}

fn all() -> Vec<(&'static Table, &'static Ioctl)> {
    TABLES
        .iter()
        .flat_map(|t| t.ioctls.iter().map(move |i| (*t, i)))
        .collect()
}

/// A request obeying `ioctl`'s rules, from random bytes and choices.
#[derive(Debug)]
struct Valid {
    table: &'static Table,
    ioctl: &'static Ioctl,
    /// The struct, then the data sent.
    input: Vec<u8>,
    /// Per pointer field: (offset, data length, sent, returned).
    data: Vec<(usize, usize, bool, bool)>,
}

fn valid() -> impl Strategy<Value = Valid> {
    (
        any::<Index>(),
        prop::collection::vec(any::<u8>(), 64),
        prop::collection::vec(any::<u64>(), 16),
        prop::collection::vec(any::<u8>(), 4096),
    )
        .prop_map(|(which, bytes, picks, pool)| {
            let list = all();
            let (table, ioctl) = list[which.index(list.len())];
            let mut s = bytes[..ioctl.size].to_vec();
            let mut data = Vec::new();
            let mut tail: Vec<u8> = Vec::new();
            for (k, f) in ioctl.fields.iter().enumerate() {
                let pick = picks[k % picks.len()];
                match f.rule {
                    Rule::Zero(_) => put(&mut s, f.off, f.width, 0),
                    Rule::OneOf(vals, _) => {
                        put(&mut s, f.off, f.width, vals[pick as usize % vals.len()])
                    }
                    Rule::Pointer(p) => {
                        let count = match p.count {
                            Count::Fixed(n) => u64::from(n),
                            Count::Field { off, width, .. } => {
                                let c = pick % (u64::from(p.max).min(MAX_GEN) + 1);
                                put(&mut s, off, width, c);
                                c
                            }
                        };
                        let len = count as usize * p.elem;
                        if p.dir.sent() {
                            let start = tail.len();
                            tail.extend(pool.iter().cycle().skip(start).take(len));
                            // Element rules hold in every element.
                            for e in tail[start..].chunks_exact_mut(p.elem.max(1)) {
                                for (j, ef) in p.elem_fields.iter().enumerate() {
                                    let v = match ef.rule {
                                        Rule::Zero(_) => 0,
                                        Rule::OneOf(vals, _) => {
                                            vals[(pick as usize + j) % vals.len()]
                                        }
                                        _ => get(e, ef.off, ef.width) & u64::from(u32::MAX),
                                    };
                                    put(e, ef.off, ef.width, v);
                                }
                            }
                        }
                        data.push((f.off, len, p.dir.sent(), p.dir.returned()));
                    }
                    // Handles are 32-bit, whatever the field's width.
                    Rule::Handle => {
                        let v = get(&s, f.off, f.width) & u64::from(u32::MAX);
                        put(&mut s, f.off, f.width, v);
                    }
                    Rule::Scrub(_) | Rule::HostBytes => {}
                }
            }
            s.extend(tail);
            Valid {
                table,
                ioctl,
                input: s,
                data,
            }
        })
}

fn answer_len(v: &Valid) -> usize {
    v.ioctl.size + v.data.iter().filter(|d| d.3).map(|d| d.1).sum::<usize>()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn admitted_requests_become_the_guests_call(v in valid(), driver_byte in any::<u8>()) {
        let size = v.ioctl.size;
        let mut call = decode(v.table, v.ioctl.route, v.ioctl.code, &v.input, usize::MAX)
            .expect("a request obeying its entry is admitted");
        prop_assert_eq!(call.answer_len(), answer_len(&v));
        let pointers: Vec<usize> = v.data.iter().map(|d| d.0).collect();
        let scrubbed: Vec<(usize, usize)> = v.ioctl.fields.iter()
            .filter(|f| matches!(f.rule, Rule::Scrub(_)))
            .map(|f| (f.off, f.width))
            .collect();
        let arg = call.arg().to_vec();
        for &(off, len, _, _) in &v.data {
            prop_assert_eq!(get(&arg, off, 8) != 0, len > 0, "pointer at {} names the copy", off);
        }
        for &(off, width) in &scrubbed {
            prop_assert_eq!(get(&arg, off, width), 0);
        }
        let untouched = |i: usize| {
            !pointers.iter().any(|&o| (o..o + 8).contains(&i))
                && !scrubbed.iter().any(|&(o, w)| (o..o + w).contains(&i))
        };
        for i in (0..size).filter(|&i| untouched(i)) {
            prop_assert_eq!(arg[i], v.input[i], "byte {} reaches the driver as sent", i);
        }
        // What the driver writes: a scrubbed field and every byte of the
        // returned data.
        let arg = call.arg();
        for &(off, width) in &scrubbed {
            put(arg, off, width, u64::MAX >> (64 - 8 * width));
        }
        for &(off, len, _, returned) in &v.data {
            if returned && len > 0 {
                let p = get(arg, off, 8) as *mut u8;
                // SAFETY: the codec's own buffer of `len` bytes, alive in
                // `call`; this plays the driver writing it.
                unsafe { std::ptr::write_bytes(p, driver_byte, len) };
            }
        }
        let out = call.answer();
        prop_assert_eq!(out.len(), answer_len(&v));
        for &(off, _, _, _) in &v.data {
            prop_assert_eq!(get(&out, off, 8), get(&v.input, off, 8), "the guest's pointer value");
        }
        for &(off, width) in &scrubbed {
            prop_assert_eq!(get(&out, off, width), 0, "scrubbed in the answer");
        }
        for i in (0..size).filter(|&i| untouched(i)) {
            prop_assert_eq!(out[i], v.input[i]);
        }
        prop_assert!(out[size..].iter().all(|&b| b == driver_byte), "returned data is the driver's");
    }

    #[test]
    fn one_broken_rule_is_refused(v in valid(), which in any::<Index>(), bad in any::<u64>()) {
        let broken: Vec<_> = v.ioctl.fields.iter().filter(|f| match f.rule {
            Rule::Zero(_) | Rule::OneOf(..) => true,
            Rule::Handle => f.width > 4,
            Rule::Pointer(p) => {
                matches!(p.count, Count::Field { .. })
                    || (p.dir.sent() && !p.elem_fields.is_empty())
            }
            _ => false,
        }).collect();
        prop_assume!(!broken.is_empty());
        let f = broken[which.index(broken.len())];
        let mut input = v.input.clone();
        let mask = u64::MAX >> (64 - 8 * f.width);
        match f.rule {
            Rule::Zero(_) => put(&mut input, f.off, f.width, (bad & mask).max(1)),
            Rule::OneOf(vals, _) => {
                let mut x = bad & mask;
                while vals.contains(&x) {
                    x = x.wrapping_add(1) & mask;
                }
                put(&mut input, f.off, f.width, x);
            }
            Rule::Handle => put(&mut input, f.off, f.width, (bad | 1 << 32) & mask),
            Rule::Pointer(p) if !p.elem_fields.is_empty() => {
                // The first element's first rule, broken in the data sent.
                let start = v.ioctl.size + v.data.iter().take_while(|d| d.0 != f.off)
                    .filter(|d| d.2).map(|d| d.1).sum::<usize>();
                let ef = p.elem_fields[0];
                let emask = u64::MAX >> (64 - 8 * ef.width);
                let x = match ef.rule {
                    Rule::OneOf(vals, _) => {
                        let mut x = bad & emask;
                        while vals.contains(&x) {
                            x = x.wrapping_add(1) & emask;
                        }
                        x
                    }
                    _ => (bad & emask).max(1),
                };
                put(&mut input, start + ef.off, ef.width, x);
            }
            Rule::Pointer(p) => {
                if let Count::Field { off, width, .. } = p.count {
                    // Above the maximum, with all its data: only the
                    // maximum refuses it.
                    let old = get(&input, off, width);
                    let over = u64::from(p.max) + 1 + bad % 1000;
                    put(&mut input, off, width, over);
                    if p.dir.sent() {
                        let more = (over - old) as usize * p.elem;
                        input.extend(std::iter::repeat_n(0u8, more));
                    }
                }
            }
            _ => unreachable!(),
        }
        let r = decode(v.table, v.ioctl.route, v.ioctl.code, &input, usize::MAX)
            .map(|c| c.answer_len());
        prop_assert!(matches!(r, Err(IoctlError::Invalid { .. })), "{} {} broken: {:?}", v.ioctl.name, f.name, r);
    }

    #[test]
    fn every_byte_is_accounted_for(v in valid(), cut in any::<Index>(), extra in any::<u8>()) {
        let (t, i) = (v.table, v.ioctl);
        let n = cut.index(v.input.len());
        prop_assert!(decode(t, i.route, i.code, &v.input[..n], usize::MAX).is_err(), "cut to {}", n);
        let mut longer = v.input.clone();
        longer.push(extra);
        prop_assert!(decode(t, i.route, i.code, &longer, usize::MAX).is_err());
        let need = answer_len(&v);
        prop_assert!(decode(t, i.route, i.code, &v.input, need - 1).is_err());
        prop_assert!(decode(t, i.route, i.code, &v.input, need).is_ok());
        let other = match i.route { Route::Ioctl => Route::Submit, Route::Submit => Route::Ioctl };
        prop_assert!(matches!(decode(t, other, i.code, &v.input, need), Err(IoctlError::Unsupported(_))));
    }

    #[test]
    fn mutated_requests_never_panic(
        v in valid(),
        flips in prop::collection::vec((any::<Index>(), any::<u8>()), 1..6),
        out_max in 0usize..8192,
    ) {
        let mut input = v.input.clone();
        for (at, b) in flips {
            let n = at.index(input.len());
            input[n] = b;
        }
        if let Ok(mut call) = decode(v.table, v.ioctl.route, v.ioctl.code, &input, out_max) {
            let _ = call.arg();
            let _ = call.handles();
            let _ = call.host_bytes();
            let len = call.answer_len();
            prop_assert_eq!(len, call.answer().len());
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(
        which in any::<Index>(),
        code in prop_oneof![any::<u32>().prop_map(Some), Just(None)],
        input in prop::collection::vec(any::<u8>(), 0..4200),
        out_max in 0usize..8192,
        submit in any::<bool>(),
    ) {
        let list = all();
        let (t, i) = list[which.index(list.len())];
        let route = if submit { Route::Submit } else { Route::Ioctl };
        if let Ok(mut call) = decode(t, route, code.unwrap_or(i.code), &input, out_max) {
            prop_assert!(call.answer_len() <= out_max);
            let _ = call.arg();
            let _ = call.handles();
            let _ = call.host_bytes();
            prop_assert_eq!(call.answer_len(), call.answer().len());
        }
    }
}

#[test]
fn table_fields_are_ordered_and_inside_their_struct() {
    for (_, i) in all() {
        let mut end = 0;
        for f in i.fields {
            assert!(
                f.off >= end,
                "{}: {} overlaps or is out of order",
                i.name,
                f.name
            );
            assert!([1, 2, 4, 8].contains(&f.width), "{}: {}", i.name, f.name);
            end = f.off + f.width;
            assert!(end <= i.size, "{}: {} outside the struct", i.name, f.name);
            if let Rule::Pointer(p) = f.rule {
                assert_eq!(f.width, 8, "{}: {} is a pointer", i.name, f.name);
                if let Count::Field { off, width, .. } = p.count {
                    assert!(off + width <= i.size, "{}: count of {}", i.name, f.name);
                }
                let mut e_end = 0;
                for e in p.elem_fields {
                    assert!(e.off >= e_end && e.off + e.width <= p.elem, "{}", e.name);
                    e_end = e.off + e.width;
                }
            }
        }
    }
}

#[test]
fn refused_ioctls_are_not_reachable() {
    for t in TABLES {
        for r in t.refused {
            for route in [Route::Ioctl, Route::Submit] {
                let r2 = decode(t, route, r.code, &[0; 64], 4096);
                assert!(
                    matches!(r2, Err(IoctlError::Unsupported(c)) if c == r.code),
                    "{}",
                    r.name
                );
            }
        }
    }
}

#[test]
fn submit_lists_its_handles() {
    let t = TABLES[0];
    let i = t
        .ioctls
        .iter()
        .find(|i| i.name == "DRM_IOCTL_IVPU_SUBMIT")
        .unwrap();
    let mut s = vec![0u8; 32];
    put(&mut s, 0, 8, 0xdead_0000);
    put(&mut s, 8, 4, 3);
    for h in [7u32, 9, 11] {
        s.extend_from_slice(&h.to_le_bytes());
    }
    let call = decode(t, Route::Submit, i.code, &s, 4096).unwrap();
    assert_eq!(call.handles(), vec![7, 9, 11]);
    assert_eq!(call.answer().len(), 32);
}

#[test]
fn host_allocations_are_reported() {
    let t = TABLES[1];
    let i = t
        .ioctls
        .iter()
        .find(|i| i.name == "DRM_IOCTL_AMDXDNA_CREATE_BO")
        .unwrap();
    let mut s = vec![0u8; 32];
    put(&mut s, 16, 8, 1 << 20);
    put(&mut s, 24, 4, 4);
    let call = decode(t, Route::Ioctl, i.code, &s, 4096).unwrap();
    assert_eq!(call.host_bytes(), 1 << 20);
    put(&mut s, 8, 8, 0x7fff_0000_0000);
    assert!(
        decode(t, Route::Ioctl, i.code, &s, 4096).is_err(),
        "a host address is refused"
    );
}

//! Round trips, malformed input and fuzzed input for requests and responses.

use proptest::prelude::*;
use virtio_accel_protocol::*;
use zerocopy::IntoBytes;

fn hdr(t: u32, ctx: u32) -> Hdr {
    Hdr::new(t, ctx)
}

fn submit(nr_bos: u32, nr_fences: u32, inline: &[u8]) -> Request {
    Request::Submit {
        req: Submit {
            hdr: hdr(VIRTIO_ACCEL_CMD_SUBMIT, 1),
            out_fence: 7.into(),
            cmd_bo_handle: if inline.is_empty() { 3 } else { 0 }.into(),
            flags: if inline.is_empty() {
                0
            } else {
                VIRTIO_ACCEL_SUBMIT_F_INLINE
            }
            .into(),
            cmd_offset: 0.into(),
            cmd_size: (if inline.is_empty() {
                64
            } else {
                inline.len() as u32
            })
            .into(),
            nr_bos: nr_bos.into(),
            nr_in_fences: nr_fences.into(),
            padding: 0.into(),
        },
        bos: (0..nr_bos)
            .map(|i| SubmitBo {
                bo_handle: (i + 1).into(),
                access: VIRTIO_ACCEL_ACCESS_READ.into(),
            })
            .collect(),
        in_fences: (0..nr_fences)
            .map(|i| FenceRef {
                ctx_id: 1.into(),
                padding: 0.into(),
                seqno: u64::from(i).into(),
            })
            .collect(),
        inline_cmd: inline.to_vec(),
    }
}

/// One valid request of every type.
fn every_request() -> Vec<Request> {
    let bo = |t| BoReq {
        hdr: hdr(t, 1),
        bo_handle: 5.into(),
        padding: 0.into(),
    };
    vec![
        Request::GetCaps(GetCaps {
            hdr: hdr(VIRTIO_ACCEL_CMD_GET_CAPS, 0),
            ..Default::default()
        }),
        Request::CtxCreate(CtxCreate {
            hdr: hdr(VIRTIO_ACCEL_CMD_CTX_CREATE, 0),
            priority: VIRTIO_ACCEL_PRIORITY_HIGH.into(),
            padding: 0.into(),
        }),
        Request::CtxDestroy(hdr(VIRTIO_ACCEL_CMD_CTX_DESTROY, 1)),
        Request::BoCreate(BoCreate {
            hdr: hdr(VIRTIO_ACCEL_CMD_BO_CREATE, 1),
            size: 4096.into(),
            ..Default::default()
        }),
        Request::BoDestroy(bo(VIRTIO_ACCEL_CMD_BO_DESTROY)),
        Request::BoInfo(bo(VIRTIO_ACCEL_CMD_BO_INFO)),
        Request::BoAttachBacking {
            req: BoAttachBacking {
                hdr: hdr(VIRTIO_ACCEL_CMD_BO_ATTACH_BACKING, 1),
                bo_handle: 5.into(),
                nr_entries: 2.into(),
            },
            entries: vec![
                MemEntry {
                    addr: 0x1000.into(),
                    length: 4096.into(),
                    padding: 0.into(),
                },
                MemEntry {
                    addr: 0x8000.into(),
                    length: 4096.into(),
                    padding: 0.into(),
                },
            ],
        },
        Request::BoDetachBacking(bo(VIRTIO_ACCEL_CMD_BO_DETACH_BACKING)),
        Request::BoMapShm(bo(VIRTIO_ACCEL_CMD_BO_MAP_SHM)),
        Request::BoUnmapShm(bo(VIRTIO_ACCEL_CMD_BO_UNMAP_SHM)),
        Request::FencePoll(FencePoll {
            hdr: hdr(VIRTIO_ACCEL_CMD_FENCE_POLL, 1),
            seqno: 9.into(),
        }),
        Request::Ioctl {
            req: Ioctl {
                hdr: hdr(VIRTIO_ACCEL_CMD_IOCTL, 1),
                cmd: 1.into(),
                in_size: 3.into(),
                out_size: 8.into(),
                padding: 0.into(),
            },
            payload: vec![1, 2, 3],
        },
        submit(2, 1, &[]),
        submit(1, 0, &[0xaa; 40]),
    ]
}

#[test]
fn every_request_type_round_trips() {
    let reqs = every_request();
    for (t, name) in REQUEST_TYPES {
        assert!(
            reqs.iter().any(|r| r.hdr().type_.get() == *t),
            "{name} has no round-trip case"
        );
    }
    for r in reqs {
        let bytes = r.encode();
        assert_eq!(Request::decode(&bytes, &Limits::default()), Ok(r));
    }
}

#[test]
fn every_response_type_round_trips() {
    for (t, _) in REQUEST_TYPES {
        for (status, _) in RESPONSE_STATUSES {
            let mut r = Response::error(*t, 4, *status);
            if let Response::Ioctl { resp, payload } = &mut r {
                resp.out_size = 2.into();
                *payload = vec![7, 8];
            }
            if let Response::Caps(c) = &mut r {
                c.name[..3].copy_from_slice(b"sim");
                c.max_bo_size = (1u64 << 30).into();
            }
            let bytes = r.encode();
            assert_eq!(Response::decode(*t, &bytes), Ok(r));
        }
    }
}

#[test]
fn event_round_trips() {
    let ev = Event {
        hdr: hdr(VIRTIO_ACCEL_EVENT_CONTEXT_LOST, 3),
        fence: 41.into(),
        reason: VIRTIO_ACCEL_LOST_HANG.into(),
        padding: 0.into(),
    };
    assert_eq!(Event::decode(ev.as_bytes()), Ok(ev));
}

fn decode(bytes: &[u8]) -> Result<Request, DecodeError> {
    Request::decode(bytes, &Limits::default())
}

#[test]
fn unknown_request_type_is_unsupported() {
    let bytes = hdr(0x0999, 0).as_bytes().to_vec();
    let e = decode(&bytes).unwrap_err();
    assert_eq!(e, DecodeError::UnknownType(0x0999));
    assert_eq!(e.status(), VIRTIO_ACCEL_RESP_ERR_UNSUPPORTED);
}

#[test]
fn short_buffer_is_rejected_at_every_length() {
    for r in every_request() {
        let bytes = r.encode();
        for len in 0..bytes.len() {
            let e = decode(&bytes[..len]).unwrap_err();
            assert!(
                matches!(e, DecodeError::Short { .. }),
                "{len} bytes of {}: {e:?}",
                request_name(r.hdr().type_.get())
            );
            assert_eq!(e.status(), VIRTIO_ACCEL_RESP_ERR_INVALID);
        }
    }
}

#[test]
fn trailing_bytes_are_rejected() {
    for r in every_request() {
        let mut bytes = r.encode();
        bytes.push(0);
        assert!(matches!(
            decode(&bytes),
            Err(DecodeError::Trailing { extra: 1, .. })
        ));
    }
}

#[test]
fn nonzero_reserved_fields_are_rejected() {
    // Every request carries hdr.padding at bytes 12..16.
    for r in every_request() {
        let mut bytes = r.encode();
        bytes[12] = 1;
        assert_eq!(
            decode(&bytes),
            Err(DecodeError::Reserved {
                field: "hdr.padding"
            })
        );
    }
    // Body padding of a BO request (bytes 20..24).
    let mut bytes = every_request()[4].encode();
    bytes[20] = 1;
    assert!(matches!(decode(&bytes), Err(DecodeError::Reserved { .. })));
    // A mem entry's padding.
    let mut bytes = every_request()[6].encode();
    let n = bytes.len();
    bytes[n - 1] = 1;
    assert_eq!(
        decode(&bytes),
        Err(DecodeError::Reserved {
            field: "mem_entry.padding"
        })
    );
}

#[test]
fn unknown_flags_are_rejected() {
    let mut bytes = every_request()[0].encode();
    bytes[4] = 0x80; // hdr.flags
    assert!(matches!(
        decode(&bytes),
        Err(DecodeError::UnknownFlags {
            field: "hdr.flags",
            ..
        })
    ));
    let Request::BoCreate(mut q) = every_request()[3].clone() else {
        unreachable!()
    };
    q.flags = 0x10.into();
    assert_eq!(
        decode(q.as_bytes()),
        Err(DecodeError::UnknownFlags {
            field: "flags",
            flags: 0x10
        })
    );
    let Request::Submit {
        mut bos,
        req,
        in_fences,
        inline_cmd,
    } = submit(1, 0, &[])
    else {
        unreachable!()
    };
    bos[0].access = 0x4.into();
    let r = Request::Submit {
        req,
        bos,
        in_fences,
        inline_cmd,
    };
    assert!(matches!(
        decode(&r.encode()),
        Err(DecodeError::UnknownFlags {
            field: "submit_bo.access",
            ..
        })
    ));
}

#[test]
fn counts_above_limits_are_out_of_range() {
    let lim = Limits {
        max_submit_bos: 2,
        max_in_fences: 1,
        max_sg_entries: 1,
        max_inline_cmd: 16,
        ..Limits::default()
    };
    let e = Request::decode(&submit(3, 0, &[]).encode(), &lim).unwrap_err();
    assert!(matches!(
        e,
        DecodeError::TooMany {
            field: "nr_bos",
            count: 3,
            limit: 2
        }
    ));
    assert_eq!(e.status(), VIRTIO_ACCEL_RESP_ERR_OUT_OF_RANGE);
    let e = Request::decode(&submit(1, 2, &[]).encode(), &lim).unwrap_err();
    assert!(matches!(
        e,
        DecodeError::TooMany {
            field: "nr_in_fences",
            ..
        }
    ));
    let e = Request::decode(&submit(1, 0, &[1; 17]).encode(), &lim).unwrap_err();
    assert!(matches!(
        e,
        DecodeError::TooMany {
            field: "cmd_size",
            ..
        }
    ));
    let e = Request::decode(&every_request()[6].encode(), &lim).unwrap_err();
    assert!(matches!(
        e,
        DecodeError::TooMany {
            field: "nr_entries",
            ..
        }
    ));
}

#[test]
fn huge_count_with_short_buffer_fails_before_allocating() {
    let q = BoAttachBacking {
        hdr: hdr(VIRTIO_ACCEL_CMD_BO_ATTACH_BACKING, 1),
        bo_handle: 1.into(),
        nr_entries: VIRTIO_ACCEL_MAX_SG_ENTRIES.into(),
    };
    assert!(matches!(
        decode(q.as_bytes()),
        Err(DecodeError::Short { need, have: 0, .. }) if need == 16 * VIRTIO_ACCEL_MAX_SG_ENTRIES as usize
    ));
}

#[test]
fn length_overflows_are_rejected() {
    let Request::BoAttachBacking { req, mut entries } = every_request()[6].clone() else {
        unreachable!()
    };
    entries[0].addr = (u64::MAX - 10).into();
    let r = Request::BoAttachBacking { req, entries };
    let e = decode(&r.encode()).unwrap_err();
    assert!(matches!(e, DecodeError::Overflow { .. }));
    assert_eq!(e.status(), VIRTIO_ACCEL_RESP_ERR_OUT_OF_RANGE);

    let Request::Submit {
        mut req,
        bos,
        in_fences,
        inline_cmd,
    } = submit(1, 0, &[])
    else {
        unreachable!()
    };
    req.cmd_offset = (u64::MAX - 1).into();
    let r = Request::Submit {
        req,
        bos,
        in_fences,
        inline_cmd,
    };
    assert!(matches!(
        decode(&r.encode()),
        Err(DecodeError::Overflow { .. })
    ));
}

#[test]
fn invalid_values_are_rejected() {
    let Request::CtxCreate(mut q) = every_request()[1].clone() else {
        unreachable!()
    };
    q.priority = 3.into();
    assert!(matches!(
        decode(q.as_bytes()),
        Err(DecodeError::InvalidValue {
            field: "priority",
            value: 3
        })
    ));
    let Request::BoCreate(mut q) = every_request()[3].clone() else {
        unreachable!()
    };
    q.size = 0.into();
    assert!(matches!(
        decode(q.as_bytes()),
        Err(DecodeError::InvalidValue { field: "size", .. })
    ));
    let mut g = GetCaps {
        hdr: hdr(VIRTIO_ACCEL_CMD_GET_CAPS, 5),
        ..Default::default()
    };
    assert!(matches!(
        decode(g.as_bytes()),
        Err(DecodeError::InvalidValue {
            field: "hdr.ctx_id",
            ..
        })
    ));
    g.hdr.ctx_id = 0.into();
    assert!(decode(g.as_bytes()).is_ok());
}

#[test]
fn response_with_unknown_status_is_rejected() {
    let bytes = hdr(0x1234, 0).as_bytes().to_vec();
    assert_eq!(
        Response::decode(VIRTIO_ACCEL_CMD_CTX_DESTROY, &bytes),
        Err(DecodeError::UnknownType(0x1234))
    );
}

fn arb_hdr(t: u32) -> impl Strategy<Value = Hdr> {
    any::<u32>().prop_map(move |ctx| Hdr::new(t, ctx))
}

fn arb_request() -> impl Strategy<Value = Request> {
    let bo_req = |t| {
        (arb_hdr(t), any::<u32>()).prop_map(|(hdr, h)| BoReq {
            hdr,
            bo_handle: h.into(),
            padding: 0.into(),
        })
    };
    prop_oneof![
        (0u32..4).prop_map(|c| Request::GetCaps(GetCaps {
            hdr: Hdr::new(VIRTIO_ACCEL_CMD_GET_CAPS, 0),
            capset: c.into(),
            padding: 0.into()
        })),
        (0u32..=2).prop_map(|p| Request::CtxCreate(CtxCreate {
            hdr: Hdr::new(VIRTIO_ACCEL_CMD_CTX_CREATE, 0),
            priority: p.into(),
            padding: 0.into()
        })),
        arb_hdr(VIRTIO_ACCEL_CMD_CTX_DESTROY).prop_map(Request::CtxDestroy),
        (arb_hdr(VIRTIO_ACCEL_CMD_BO_CREATE), 1u64.., 0u32..2).prop_map(|(hdr, s, f)| {
            Request::BoCreate(BoCreate {
                hdr,
                size: s.into(),
                flags: f.into(),
                padding: 0.into(),
            })
        }),
        bo_req(VIRTIO_ACCEL_CMD_BO_DESTROY).prop_map(Request::BoDestroy),
        bo_req(VIRTIO_ACCEL_CMD_BO_INFO).prop_map(Request::BoInfo),
        bo_req(VIRTIO_ACCEL_CMD_BO_DETACH_BACKING).prop_map(Request::BoDetachBacking),
        bo_req(VIRTIO_ACCEL_CMD_BO_MAP_SHM).prop_map(Request::BoMapShm),
        bo_req(VIRTIO_ACCEL_CMD_BO_UNMAP_SHM).prop_map(Request::BoUnmapShm),
        (
            arb_hdr(VIRTIO_ACCEL_CMD_BO_ATTACH_BACKING),
            any::<u32>(),
            prop::collection::vec((0u64..1 << 48, 1u32..), 1..20)
        )
            .prop_map(|(hdr, h, e)| Request::BoAttachBacking {
                req: BoAttachBacking {
                    hdr,
                    bo_handle: h.into(),
                    nr_entries: (e.len() as u32).into()
                },
                entries: e
                    .into_iter()
                    .map(|(a, l)| MemEntry {
                        addr: a.into(),
                        length: l.into(),
                        padding: 0.into()
                    })
                    .collect()
            }),
        (arb_hdr(VIRTIO_ACCEL_CMD_FENCE_POLL), any::<u64>()).prop_map(|(hdr, s)| {
            Request::FencePoll(FencePoll {
                hdr,
                seqno: s.into(),
            })
        }),
        (
            arb_hdr(VIRTIO_ACCEL_CMD_IOCTL),
            any::<u32>(),
            prop::collection::vec(any::<u8>(), 0..64),
            0u32..4096
        )
            .prop_map(|(hdr, cmd, payload, out)| Request::Ioctl {
                req: Ioctl {
                    hdr,
                    cmd: cmd.into(),
                    in_size: (payload.len() as u32).into(),
                    out_size: out.into(),
                    padding: 0.into()
                },
                payload
            }),
        (
            arb_hdr(VIRTIO_ACCEL_CMD_SUBMIT),
            any::<u64>(),
            prop::collection::vec((any::<u32>(), 1u32..4), 0..8),
            prop::collection::vec((any::<u32>(), any::<u64>()), 0..4),
            prop::option::of(prop::collection::vec(any::<u8>(), 1..64)),
            (1u32..1 << 20, 0u64..1 << 40, any::<u32>()),
        )
            .prop_map(|(hdr, fence, bos, fences, inline, (size, off, cmd_bo))| {
                let (flags, cmd_bo, off, size, inline_cmd) = match inline {
                    Some(v) => (VIRTIO_ACCEL_SUBMIT_F_INLINE, 0, 0, v.len() as u32, v),
                    None => (0, cmd_bo, off, size, vec![]),
                };
                Request::Submit {
                    req: Submit {
                        hdr,
                        out_fence: fence.into(),
                        cmd_bo_handle: cmd_bo.into(),
                        flags: flags.into(),
                        cmd_offset: off.into(),
                        cmd_size: size.into(),
                        nr_bos: (bos.len() as u32).into(),
                        nr_in_fences: (fences.len() as u32).into(),
                        padding: 0.into(),
                    },
                    bos: bos
                        .into_iter()
                        .map(|(h, a)| SubmitBo {
                            bo_handle: h.into(),
                            access: a.into(),
                        })
                        .collect(),
                    in_fences: fences
                        .into_iter()
                        .map(|(c, s)| FenceRef {
                            ctx_id: c.into(),
                            padding: 0.into(),
                            seqno: s.into(),
                        })
                        .collect(),
                    inline_cmd,
                }
            }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode(&bytes);
        for (t, _) in REQUEST_TYPES {
            let _ = Response::decode(*t, &bytes);
        }
        let _ = Event::decode(&bytes);
        let _ = snpu::parse(&bytes);
    }

    #[test]
    fn decoding_arbitrary_bodies_after_a_valid_type_never_panics(
        t in prop::sample::select(REQUEST_TYPES.iter().map(|(t, _)| *t).collect::<Vec<_>>()),
        body in prop::collection::vec(any::<u8>(), 0..256),
    ) {
        let mut bytes = Hdr::new(t, 1).as_bytes().to_vec();
        bytes.extend(body);
        let _ = decode(&bytes);
    }

    #[test]
    fn decode_inverts_encode(r in arb_request()) {
        prop_assert_eq!(decode(&r.encode()), Ok(r));
    }
}

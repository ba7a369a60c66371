//! A saved device state as a destination daemon reads it (migration load,
//! or records a previous daemon left): fuzzer bytes after the format's
//! header, decoded, checked and restored into a `Device` with real guest
//! memory and the real software NPU. Nothing may panic; a state the check
//! refuses must not restore and must leave the device empty; a restored
//! state holds what it says; a state restored as lost holds only lost
//! contexts and no buffer, within the limits.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use vhost_device_accel::backend::sim::{SimNpu, SimOptions, Tile};
use vhost_device_accel::config::Limits;
use vhost_device_accel::device::Device;
use vhost_device_accel::memory::{GuestMem, VmMemory};
use vhost_device_accel::metrics::VmMetrics;
use vhost_device_accel::state::{VmState, MAGIC, VERSION};
use virtio_accel_protocol::*;
use vm_memory::{GuestAddress, GuestMemoryAtomic};

const MEM: usize = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let mut bytes = MAGIC.to_vec();
    bytes.extend_from_slice(&VERSION.to_le_bytes());
    bytes.extend_from_slice(data);
    let Ok(state) = VmState::decode(&bytes) else {
        return;
    };
    let limits = Limits {
        max_contexts: 4,
        max_bo_size: 64 << 10,
        max_total_bo_bytes: 256 << 10,
        max_bos: 12,
        max_cmd_size: 4096,
        max_inline_cmd_size: 4096,
        max_submit_bos: 4,
        max_in_fences: 4,
        max_sg_entries: 16,
        max_jobs_in_flight: 8,
        max_job_memory: 4 << 20,
        max_backing_entries: 24,
    };
    static NPU: std::sync::OnceLock<Arc<SimNpu>> = std::sync::OnceLock::new();
    let npu = NPU.get_or_init(|| {
        let opts = SimOptions {
            faults: Default::default(),
            engines: 1,
            tile: Tile::SLICED,
        };
        Arc::new(SimNpu::new(opts).unwrap())
    });
    let mem = GuestMem::from_ranges(&[(GuestAddress(0), MEM)]).unwrap();
    let vm_mem = VmMemory {
        mem: GuestMemoryAtomic::new(mem.clone()),
        npu_stats: Arc::default(),
    };
    let mut dev = Device::new(limits.clone(), npu.clone(), vm_mem, VmMetrics::detached());
    let checked = dev.check_state(&state.device);
    match dev.restore(&state.device, &mem) {
        Err(_) => {
            assert_eq!(
                dev.counts(),
                Default::default(),
                "a refused state left objects"
            );
            dev.restore_lost(&state.device, VIRTIO_ACCEL_LOST_RESET);
            let c = dev.counts();
            assert!(c.contexts <= limits.max_contexts as usize);
            assert_eq!((c.bos, c.bo_bytes, c.running), (0, 0, 0));
        }
        Ok(()) => {
            assert!(checked.is_ok(), "restored a state the check refused");
            let c = dev.counts();
            assert_eq!(c.contexts, state.device.contexts.len());
            let bos: usize = state.device.contexts.iter().map(|c| c.bos.len()).sum();
            assert_eq!(c.bos, bos);
            assert!(c.bos <= limits.max_bos as usize);
            assert!(c.bo_bytes <= limits.max_total_bo_bytes);
            assert!(c.jobs <= limits.max_jobs_in_flight as usize);
            // What it restored saves back as it came, jobs and all.
            let again = dev.snapshot();
            assert_eq!(again.contexts.len(), state.device.contexts.len());
        }
    }
});

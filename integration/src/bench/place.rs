//! Where the benchmark's threads run. On two CPUs, which CPU the kernel
//! happens to wake a thread on decides a round trip (a wake-up on the
//! same CPU costs a fraction of one on the other), and it does not decide
//! the same way from one run to the next. So the parts that time the
//! transport place their threads: the guest (the driver) on one CPU, the
//! device (the daemon's threads, or the echo device's) on the other, as a
//! vCPU and a device thread are; or, for the same-CPU figures, all on one.

use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
use nix::unistd::Pid;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use vhost_device_accel::memory::GuestMem;

use crate::guest::Mem;

/// The guest's CPU.
pub const GUEST: usize = 0;

/// The device's CPU: the other one, if there is one.
pub fn device() -> usize {
    let n = std::thread::available_parallelism().map_or(1, |n| n.get());
    if n > 1 {
        1
    } else {
        0
    }
}

fn set(cpus: &CpuSet) {
    sched_setaffinity(Pid::from_raw(0), cpus).expect("sched_setaffinity");
}

/// Restricts the calling thread, and the threads it creates from now on,
/// to `cpu`.
pub fn pin(cpu: usize) {
    let mut s = CpuSet::new();
    s.set(cpu).expect("a CPU number");
    set(&s);
}

/// Runs `f` on `cpu` (threads it creates stay there), then puts the
/// calling thread back where it was.
pub fn on<T>(cpu: usize, f: impl FnOnce() -> T) -> T {
    let was = sched_getaffinity(Pid::from_raw(0)).expect("sched_getaffinity");
    pin(cpu);
    let r = f();
    set(&was);
    r
}

/// The guest's memory mapped again in this process, as the daemon maps it
/// (the same memfd pages): a native baseline run on it reads and writes
/// the very pages the daemon does.
pub fn host_view(mem: &Mem) -> GuestMem {
    GuestMem::from_ranges_with_files(
        mem.iter()
            .map(|r| (r.start_addr(), r.len() as usize, r.file_offset().cloned())),
    )
    .expect("map the guest's memory")
}

//! The seccomp allowlist a VM's own process runs under (`--vm-processes`,
//! always with `--driver accel`): the system calls serving one VM needs
//! once its socket, metrics port and backend are set up, and of `ioctl`
//! only the requests the backends issue. Anything else ends the process
//! (or, with `--seccomp log`, is logged by the kernel and allowed, to find
//! what a new code path needs).

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule,
};

/// What a call outside the allowlist does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// The process is killed.
    Kill,
    /// The kernel logs the call and lets it through.
    Log,
    /// No filter.
    Off,
}

/// Serving a VM: its sockets and eventfds, guest memory mappings, threads
/// the vhost-user library starts per connection, the state directory's
/// database, the metrics listener, files opened on the accel node.
const SYSCALLS: &[libc::c_long] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_close,
    libc::SYS_openat,
    libc::SYS_newfstatat,
    libc::SYS_fstat,
    libc::SYS_statx,
    libc::SYS_lseek,
    libc::SYS_fcntl,
    libc::SYS_flock,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_ftruncate,
    libc::SYS_fallocate,
    libc::SYS_unlinkat,
    libc::SYS_renameat,
    libc::SYS_renameat2,
    libc::SYS_mkdirat,
    libc::SYS_getcwd,
    libc::SYS_readlinkat,
    libc::SYS_faccessat,
    libc::SYS_faccessat2,
    libc::SYS_getdents64,
    libc::SYS_fchmod,
    libc::SYS_fchown,
    libc::SYS_umask,
    libc::SYS_dup,
    libc::SYS_dup3,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    libc::SYS_brk,
    libc::SYS_futex,
    libc::SYS_set_robust_list,
    libc::SYS_rseq,
    libc::SYS_clone,
    libc::SYS_clone3,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_sigaltstack,
    libc::SYS_tgkill,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_getppid,
    // SQLite (the state directory) fchowns its journal to the file's owner.
    libc::SYS_getuid,
    libc::SYS_geteuid,
    libc::SYS_getgid,
    libc::SYS_getegid,
    libc::SYS_prctl,
    libc::SYS_sched_getaffinity,
    libc::SYS_sched_yield,
    libc::SYS_getrandom,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_restart_syscall,
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_pwait,
    libc::SYS_eventfd2,
    libc::SYS_timerfd_create,
    libc::SYS_timerfd_settime,
    libc::SYS_timerfd_gettime,
    libc::SYS_ppoll,
    libc::SYS_recvmsg,
    libc::SYS_sendmsg,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_accept,
    libc::SYS_accept4,
    libc::SYS_shutdown,
    libc::SYS_setsockopt,
    libc::SYS_getsockopt,
    libc::SYS_getsockname,
    libc::SYS_getpeername,
];

/// The older forms x86-64 still has (other architectures have only the
/// `*at` and `p*` forms listed above).
#[cfg(target_arch = "x86_64")]
const LEGACY_SYSCALLS: &[libc::c_long] = &[
    libc::SYS_unlink,
    libc::SYS_rename,
    libc::SYS_mkdir,
    libc::SYS_access,
    libc::SYS_readlink,
    libc::SYS_poll,
    libc::SYS_epoll_wait,
    libc::SYS_stat,
    libc::SYS_lstat,
];
#[cfg(not(target_arch = "x86_64"))]
const LEGACY_SYSCALLS: &[libc::c_long] = &[];

/// `ioctl` requests beside the accel node's: non-blocking and close-on-exec
/// flags the standard library sets with `ioctl`.
const GENERIC_IOCTLS: &[u64] = &[libc::FIONBIO, libc::FIOCLEX, libc::FIONCLEX];

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("building the seccomp filter: {0}")]
    Build(#[from] seccompiler::BackendError),
    #[error("compiling the seccomp filter: {0}")]
    Compile(#[from] seccompiler::Error),
}

/// The filter for `mode` (`None` for [`Mode::Off`]).
pub fn filter(mode: Mode) -> Result<Option<BpfProgram>, SandboxError> {
    let mismatch = match mode {
        Mode::Off => return Ok(None),
        Mode::Kill => SeccompAction::KillProcess,
        Mode::Log => SeccompAction::Log,
    };
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = SYSCALLS
        .iter()
        .chain(LEGACY_SYSCALLS)
        .map(|&nr| (nr, Vec::new()))
        .collect();
    let requests = GENERIC_IOCTLS
        .iter()
        .copied()
        .chain(
            virtio_accel_guest::accel::IOCTLS
                .iter()
                .map(|&c| u64::from(c)),
        )
        .chain([crate::backend::accel::udmabuf::UDMABUF_CREATE_LIST]);
    let ioctl = requests
        .map(|req| {
            let c = SeccompCondition::new(1, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, req)?;
            SeccompRule::new(vec![c])
        })
        .collect::<Result<Vec<_>, _>>()?;
    rules.insert(libc::SYS_ioctl, ioctl);
    let arch = std::env::consts::ARCH
        .try_into()
        .map_err(seccompiler::Error::Backend)?;
    let f = SeccompFilter::new(rules, mismatch, SeccompAction::Allow, arch)?;
    Ok(Some(BpfProgram::try_from(f)?))
}

/// Installs the filter on every thread of the process. The process is
/// made non-dumpable first: another VM's process (same user) cannot
/// ptrace it or read its memory, which maps its VM's guest memory.
pub fn apply(mode: Mode) -> Result<(), String> {
    // SAFETY: prctl(PR_SET_DUMPABLE, 0) changes only this process's own
    // attribute.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0) } != 0 {
        return Err(format!(
            "PR_SET_DUMPABLE: {}",
            std::io::Error::last_os_error()
        ));
    }
    match filter(mode).map_err(|e| e.to_string())? {
        Some(p) => seccompiler::apply_filter_all_threads(&p).map_err(|e| e.to_string()),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_mode_compiles() {
        assert!(filter(Mode::Kill).unwrap().is_some());
        assert!(filter(Mode::Log).unwrap().is_some());
        assert!(filter(Mode::Off).unwrap().is_none());
    }
}

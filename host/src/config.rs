//! Daemon configuration: limits each VM gets, the job watchdog and the
//! software NPU's fault injection. Loaded from TOML; every field optional.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use virtio_accel_protocol::*;

use crate::backend::sim::Faults;
use crate::sched::policy::MAX_WEIGHT;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("parsing {path}: {source}")]
    Parse {
        path: String,
        source: toml::de::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

/// Limits per VM (per socket), advertised in the device configuration.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub max_contexts: u32,
    pub max_bo_size: u64,
    /// Sum of the sizes of all of a VM's buffers.
    pub max_total_bo_bytes: u64,
    pub max_bos: u32,
    pub max_cmd_size: u32,
    pub max_inline_cmd_size: u32,
    pub max_submit_bos: u32,
    pub max_in_fences: u32,
    pub max_sg_entries: u32,
    pub max_jobs_in_flight: u32,
    /// Host working memory one job may need (software NPU: the arrays its
    /// ops gather into, appendix A); a job above it is `ERR_QUOTA`.
    pub max_job_memory: u64,
    /// Backing entries of all of a VM's buffers together: the host memory
    /// the device keeps for backings (16 bytes an entry).
    pub max_backing_entries: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_contexts: 64,
            max_bo_size: 256 << 20,
            max_total_bo_bytes: 1 << 30,
            max_bos: 4096,
            max_cmd_size: 1 << 20,
            max_inline_cmd_size: 4096,
            max_submit_bos: 256,
            max_in_fences: 32,
            max_sg_entries: 65536,
            max_jobs_in_flight: 256,
            max_job_memory: 64 << 20,
            max_backing_entries: 1 << 20,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct SimConfig {
    pub faults: Faults,
    /// Run kernels in tiles that can be preempted (the default); off, every
    /// op runs whole and only stops between ops (for measuring the cost of
    /// slicing).
    pub slicing: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            faults: Faults::default(),
            slicing: true,
        }
    }
}

/// One VM the daemon serves: its socket and its share of the NPU.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    pub socket: PathBuf,
    /// Name in logs and metrics; the socket path if unset.
    #[serde(default)]
    pub name: Option<String>,
    /// Share of NPU time against the other VMs' weights, 1 to 10000.
    #[serde(default = "one")]
    pub weight: u32,
}

fn one() -> u32 {
    1
}

impl VmConfig {
    pub fn new(socket: PathBuf) -> VmConfig {
        VmConfig {
            socket,
            name: None,
            weight: 1,
        }
    }

    /// The name series and logs use.
    /// The name of the VM's state file under `--state-dir`: its label,
    /// with characters other than letters, digits, `.`, `_` and `-` as `_`.
    pub fn state_file(&self) -> String {
        let name: String = self
            .label()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        format!("{name}.state")
    }

    pub fn label(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| self.socket.display().to_string())
    }

    /// Parses `socket=PATH[,weight=N][,name=NAME]` (the `--vm` option).
    pub fn parse(s: &str) -> Result<VmConfig, String> {
        let mut vm = VmConfig::new(PathBuf::new());
        for part in s.split(',') {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?}: expected key=value"))?;
            match k {
                "socket" => vm.socket = PathBuf::from(v),
                "name" => vm.name = Some(v.to_owned()),
                "weight" => {
                    vm.weight = v
                        .parse()
                        .map_err(|_| format!("weight {v:?} is not a number"))?
                }
                _ => return Err(format!("unknown key {k:?} (socket, weight, name)")),
            }
        }
        if vm.socket.as_os_str().is_empty() {
            return Err("socket=PATH is required".into());
        }
        Ok(vm)
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub limits: Limits,
    /// Engines of the software NPU (threads), shared by all VMs; the
    /// number of CPUs by default.
    pub workers: usize,
    /// A job that has used this much NPU time is a hang: it is aborted and
    /// its context lost.
    pub job_timeout_ms: u64,
    /// How far ahead of a waiting VM a running one may get before it is
    /// preempted, in microseconds of device time.
    pub quantum_us: u64,
    /// The VMs to serve, each with its socket, name and weight.
    pub vm: Vec<VmConfig>,
    /// Size of each virtqueue the daemon accepts.
    pub queue_size: usize,
    /// Where each VM's device state is kept, so that a restarted daemon
    /// carries on (`--state-dir`); not kept without it.
    pub state_dir: Option<PathBuf>,
    /// Fault injection for restart tests: each VM's daemon process aborts
    /// right after its Nth commit of answers to `--state-dir`, before it
    /// writes them.
    pub crash_after_commits: Option<u64>,
    pub sim: SimConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            limits: Limits::default(),
            workers: std::thread::available_parallelism().map_or(1, |n| n.get().min(64)),
            job_timeout_ms: 5000,
            quantum_us: 1000,
            vm: Vec::new(),
            queue_size: 1024,
            state_dir: None,
            crash_after_commits: None,
            sim: SimConfig::default(),
        }
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: p.clone(),
            source,
        })?;
        let c: Config =
            toml::from_str(&text).map_err(|source| ConfigError::Parse { path: p, source })?;
        c.validate()?;
        Ok(c)
    }

    /// Checks the limits against the protocol's ceilings.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let l = &self.limits;
        let checks = [
            (
                "max_sg_entries",
                l.max_sg_entries,
                VIRTIO_ACCEL_MAX_SG_ENTRIES,
            ),
            (
                "max_submit_bos",
                l.max_submit_bos,
                VIRTIO_ACCEL_MAX_SUBMIT_BOS,
            ),
            ("max_in_fences", l.max_in_fences, VIRTIO_ACCEL_MAX_IN_FENCES),
            (
                "max_inline_cmd_size",
                l.max_inline_cmd_size,
                VIRTIO_ACCEL_MAX_INLINE_CMD,
            ),
        ];
        for (name, v, max) in checks {
            if v > max {
                return Err(ConfigError::Invalid(format!(
                    "limits.{name} = {v} is above the protocol ceiling {max}"
                )));
            }
        }
        if self.workers == 0 || self.workers > 64 {
            return Err(ConfigError::Invalid("workers must be 1 to 64".into()));
        }
        if self.quantum_us == 0 || self.job_timeout_ms == 0 {
            return Err(ConfigError::Invalid(
                "quantum_us and job_timeout_ms must be nonzero".into(),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        let mut files = std::collections::HashSet::new();
        for vm in &self.vm {
            if self.state_dir.is_some() && !files.insert(vm.state_file()) {
                return Err(ConfigError::Invalid(format!(
                    "{}: its state file {} is another VM's",
                    vm.socket.display(),
                    vm.state_file()
                )));
            }
            // Two VMs on one socket, or under one name, would share their
            // metrics series.
            if !seen.insert(vm.socket.display().to_string())
                || !seen.insert(format!("\0{}", vm.label()))
            {
                return Err(ConfigError::Invalid(format!(
                    "{}: a second VM with this socket or name",
                    vm.socket.display()
                )));
            }
            if vm.weight == 0 || vm.weight > MAX_WEIGHT {
                return Err(ConfigError::Invalid(format!(
                    "{}: weight must be 1 to {MAX_WEIGHT}",
                    vm.socket.display()
                )));
            }
        }
        if !self.queue_size.is_power_of_two() || self.queue_size > 32768 {
            return Err(ConfigError::Invalid(
                "queue_size must be a power of two up to 32768".into(),
            ));
        }
        if l.max_contexts == 0 || l.max_jobs_in_flight == 0 || l.max_bo_size == 0 {
            return Err(ConfigError::Invalid(
                "max_contexts, max_jobs_in_flight and max_bo_size must be nonzero".into(),
            ));
        }
        // The command stream is copied out of guest memory at SUBMIT.
        const MAX_CMD: u32 = 64 << 20;
        if l.max_cmd_size == 0 || l.max_cmd_size > MAX_CMD {
            return Err(ConfigError::Invalid(format!(
                "limits.max_cmd_size must be 1 to {MAX_CMD}"
            )));
        }
        Ok(())
    }

    /// The device configuration space for these limits.
    pub fn device_config(&self) -> virtio_accel_protocol::Config {
        let l = &self.limits;
        virtio_accel_protocol::Config {
            num_capsets: 1.into(),
            max_contexts: l.max_contexts.into(),
            max_bo_size: l.max_bo_size.into(),
            max_cmd_size: l.max_cmd_size.into(),
            max_inline_cmd_size: l.max_inline_cmd_size.into(),
            max_submit_bos: l.max_submit_bos.into(),
            max_in_fences: l.max_in_fences.into(),
            max_sg_entries: l.max_sg_entries.into(),
            max_jobs_in_flight: l.max_jobs_in_flight.into(),
            shm_id: 0,
            padding: [0; 7],
            max_total_bo_bytes: l.max_total_bo_bytes.into(),
            max_job_memory: l.max_job_memory.into(),
            max_bos: l.max_bos.into(),
            max_backing_entries: l.max_backing_entries.into(),
        }
    }

    /// The decoder limits for these limits.
    pub fn decode_limits(&self) -> virtio_accel_protocol::Limits {
        virtio_accel_protocol::Limits {
            max_sg_entries: self.limits.max_sg_entries,
            max_submit_bos: self.limits.max_submit_bos,
            max_in_fences: self.limits.max_in_fences,
            max_inline_cmd: self.limits.max_inline_cmd_size,
            max_ioctl_payload: VIRTIO_ACCEL_MAX_IOCTL_PAYLOAD,
        }
    }

    /// Largest request the daemon reads from a chain; anything longer is
    /// refused by the decoder without being read whole.
    pub fn max_request_bytes(&self) -> usize {
        let l = &self.limits;
        let attach = 24 + 16 * l.max_sg_entries as usize;
        let submit = 56
            + 8 * l.max_submit_bos as usize
            + 16 * l.max_in_fences as usize
            + l.max_inline_cmd_size as usize;
        let ioctl = 32 + VIRTIO_ACCEL_MAX_IOCTL_PAYLOAD as usize;
        attach.max(submit).max(ioctl)
    }
}

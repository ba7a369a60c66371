//! Which host driver is behind an accel node (`DRM_IOCTL_VERSION`), and
//! whether this backend can serve it.

use super::uapi::{amdxdna, ivpu, Table};

/// The name virtio-accel's own guest driver reports: the node of a VM
/// whose device is virtio-accel, serving VMs nested in it.
pub const VACCEL_DRIVER: &str = "virtio_accel";

/// A host driver this backend forwards to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Personality {
    /// virtio-accel's guest driver: its own UAPI (GEM buffers, PRIME
    /// import, `SUBMIT` with syncobjs), SNPU command streams.
    Vaccel,
}

/// Why a node is not served.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refusal {
    #[error(
        "host driver {driver}: its ioctls are tabled ({header}) but job \
         submission through it is not built yet"
    )]
    NotBuilt {
        driver: String,
        header: &'static str,
    },
    #[error(
        "host driver {0}: unknown to this backend (it serves {VACCEL_DRIVER}; \
         intel_vpu and amdxdna are tabled, not yet served)"
    )]
    Unknown(String),
}

const TABLES: [&Table; 2] = [&ivpu::TABLE, &amdxdna::TABLE];

/// The personality for the driver named `driver`.
pub fn identify(driver: &str) -> Result<Personality, Refusal> {
    if driver == VACCEL_DRIVER {
        return Ok(Personality::Vaccel);
    }
    match TABLES.iter().find(|t| t.drivers.contains(&driver)) {
        Some(t) => Err(Refusal::NotBuilt {
            driver: driver.to_owned(),
            header: t.header,
        }),
        None => Err(Refusal::Unknown(driver.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drivers_are_told_apart_by_name() {
        assert_eq!(identify("virtio_accel"), Ok(Personality::Vaccel));
        for name in ["intel_vpu", "amdxdna"] {
            let e = identify(name).unwrap_err();
            assert!(matches!(e, Refusal::NotBuilt { .. }), "{name}: {e}");
            assert!(e.to_string().contains(name));
        }
        for name in ["", "i915", "virtio_accel ", "VIRTIO_ACCEL"] {
            assert_eq!(identify(name), Err(Refusal::Unknown(name.into())));
        }
    }
}

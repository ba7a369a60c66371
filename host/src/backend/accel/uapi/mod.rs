//! What a guest may ask of a host accel driver's own ioctls.
//!
//! A host driver (a *personality*) has a [`Table`]: every driver ioctl a
//! guest can reach, its struct's size and, for each field that is not
//! passed through as the guest wrote it, a [`Rule`]. An ioctl not in the
//! table is refused; the table also names the ioctls refused on purpose
//! and why, so the README, the spec and the layout test see them.
//!
//! The tables are data: `tests/uapi_layout.rs` compiles the drivers' own
//! UAPI headers and checks every size, offset, width and ioctl number
//! here, and [`codec`] is the one place that applies them.
//!
//! Structs are in the host driver's ABI (x86-64, little-endian).

pub mod amdxdna;
pub mod codec;
pub mod ivpu;

/// How a guest reaches a driver ioctl.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Through virtio `IOCTL`: the device calls the driver and answers.
    Ioctl,
    /// Only as the command stream of a virtio `SUBMIT` in the NPU's native
    /// format: the device submits it as a job, with the job's fences and
    /// under the NPU's sharing policy.
    Submit,
}

/// Which way a pointed-to array moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// The driver reads it: the guest sends it after the struct.
    In,
    /// The driver writes it: it follows the struct in the answer.
    Out,
    /// Both.
    InOut,
}

impl Dir {
    pub fn sent(self) -> bool {
        matches!(self, Dir::In | Dir::InOut)
    }
    pub fn returned(self) -> bool {
        matches!(self, Dir::Out | Dir::InOut)
    }
}

/// How many elements a pointer field points to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Count {
    /// The value of another field of the struct (named, at an offset, of
    /// a width).
    Field {
        name: &'static str,
        off: usize,
        width: usize,
    },
    /// Always this many.
    Fixed(u32),
}

/// A pointer field: the guest sends the pointed-to data flattened after
/// the struct (or receives it after the struct in the answer); the device
/// points the field at its own copy during the call and gives the guest
/// its own value back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pointer {
    pub count: Count,
    /// Bytes per element.
    pub elem: usize,
    /// The most elements the driver takes.
    pub max: u32,
    pub dir: Dir,
    /// The elements are u32 buffer handles of the context's host file.
    pub handles: bool,
    /// For elements that are structs: the struct's tag in the UAPI header
    /// (empty for plain values) and the rules of its fields, offsets
    /// within one element. Only `Zero`, `OneOf` and `Handle` apply there.
    pub elem_struct: &'static str,
    pub elem_fields: &'static [Field],
}

impl Pointer {
    /// An array of plain values (no rules inside).
    pub const fn values(count: Count, elem: usize, max: u32, dir: Dir, handles: bool) -> Self {
        Pointer {
            count,
            elem,
            max,
            dir,
            handles,
            elem_struct: "",
            elem_fields: &[],
        }
    }
}

/// What the device does with a field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// Must be zero; says why (reserved, a host address, an fd number, a
    /// blocking wait).
    Zero(&'static str),
    /// Must be one of these values; says why the others are refused.
    OneOf(&'static [u64], &'static str),
    /// A handle in the context's own host file (buffer, hardware context
    /// or queue), passed as it is: host files are per guest context, so
    /// a handle names nothing of anyone else's. Handles are 32-bit: a
    /// wider field must hold one in its low half.
    Handle,
    /// Points to data the device carries.
    Pointer(Pointer),
    /// Written by the driver, not given to the guest (a host mmap offset
    /// or virtual address): zero in the answer, and zeroed on the way in.
    Scrub(&'static str),
    /// Bytes the driver allocates from host memory for this context: the
    /// backend charges them to the VM's quota before the call.
    HostBytes,
}

/// One field with a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    /// The member's name in the driver's UAPI header.
    pub name: &'static str,
    pub off: usize,
    pub width: usize,
    pub rule: Rule,
}

/// One driver ioctl a guest may reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ioctl {
    /// The ioctl's macro in the UAPI header (`DRM_IOCTL_IVPU_SUBMIT`).
    pub name: &'static str,
    /// Its request number, which is also the virtio `IOCTL` `cmd`.
    pub code: u32,
    /// The struct's tag in the UAPI header.
    pub c_struct: &'static str,
    pub size: usize,
    pub route: Route,
    pub fields: &'static [Field],
}

/// A driver ioctl refused on purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    pub name: &'static str,
    pub code: u32,
    pub why: &'static str,
}

/// A host driver's table.
#[derive(Debug)]
pub struct Table {
    /// `DRM_IOCTL_VERSION` names the personality is chosen for.
    pub drivers: &'static [&'static str],
    /// The UAPI header, under `include/uapi/` of Linux.
    pub header: &'static str,
    pub ioctls: &'static [Ioctl],
    pub refused: &'static [Refused],
}

impl Table {
    pub fn find(&self, code: u32) -> Option<&Ioctl> {
        self.ioctls.iter().find(|i| i.code == code)
    }
}

/// Every personality's table.
pub const TABLES: &[&Table] = &[&ivpu::TABLE, &amdxdna::TABLE];

/// The table for a host driver, by its `DRM_IOCTL_VERSION` name.
pub fn table_for(driver: &str) -> Option<&'static Table> {
    TABLES.iter().copied().find(|t| t.drivers.contains(&driver))
}

/// Linux's `_IOC` request number of a DRM driver ioctl: `nr` counts from
/// `DRM_COMMAND_BASE`, `write`/`read` are from the caller's side.
pub const fn drm_ioc(write: bool, read: bool, nr: u32, size: usize) -> u32 {
    const DRM_IOCTL_BASE: u32 = b'd' as u32;
    const DRM_COMMAND_BASE: u32 = 0x40;
    let dir = (write as u32) | ((read as u32) << 1);
    (dir << 30) | ((size as u32) << 16) | (DRM_IOCTL_BASE << 8) | (DRM_COMMAND_BASE + nr)
}

/// `DRM_IOW`: the caller writes.
pub const fn iow(nr: u32, size: usize) -> u32 {
    drm_ioc(true, false, nr, size)
}

/// `DRM_IOWR`: the caller writes and reads.
pub const fn iowr(nr: u32, size: usize) -> u32 {
    drm_ioc(true, true, nr, size)
}

/// Shorthand for the tables.
pub(crate) const fn f(name: &'static str, off: usize, width: usize, rule: Rule) -> Field {
    Field {
        name,
        off,
        width,
        rule,
    }
}

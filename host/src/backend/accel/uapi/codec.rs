//! Checks a guest's flattened driver request against its table entry and
//! builds the call; builds the answer from what the driver wrote.
//!
//! A request is the ioctl's struct, then the data of each pointer field
//! the driver reads, in field order, `count × elem` bytes each. The answer
//! is the struct as the driver left it (pointer fields holding the guest's
//! own values again, scrubbed fields zero), then the data of each pointer
//! field the driver writes, in field order. Nothing is guessed: every
//! byte of the request is accounted for, or the request is refused.

use super::{Count, Dir, Ioctl, Pointer, Route, Rule, Table};
use crate::backend::IoctlError;

/// One checked request, ready to be handed to the driver.
#[derive(Debug)]
pub struct Call {
    ioctl: &'static Ioctl,
    /// The struct as the driver gets it.
    arg: Vec<u8>,
    /// Per pointer field: its offset, the guest's value, its direction and
    /// the device's copy of the data.
    data: Vec<Data>,
    /// Length of the answer.
    answer_len: usize,
}

#[derive(Debug)]
struct Data {
    off: usize,
    width: usize,
    guest_value: u64,
    dir: Dir,
    handles: bool,
    bytes: Vec<u8>,
}

fn invalid(ioctl: &Ioctl, why: &'static str) -> IoctlError {
    IoctlError::Invalid {
        cmd: ioctl.code,
        why,
    }
}

/// Reads an unsigned field of 1, 2, 4 or 8 bytes.
fn read(s: &[u8], off: usize, width: usize) -> Option<u64> {
    let b = s.get(off..off.checked_add(width)?)?;
    let mut v = [0u8; 8];
    v.get_mut(..width)?.copy_from_slice(b);
    Some(u64::from_le_bytes(v))
}

fn write(s: &mut [u8], off: usize, width: usize, value: u64) -> Option<()> {
    let b = s.get_mut(off..off.checked_add(width)?)?;
    b.copy_from_slice(value.to_le_bytes().get(..width)?);
    Some(())
}

/// Applies a pointer's element rules to every element sent.
fn check_elements(ioctl: &Ioctl, p: &Pointer, bytes: &[u8]) -> Result<(), IoctlError> {
    if p.elem_fields.is_empty() || p.elem == 0 {
        return Ok(());
    }
    for e in bytes.chunks_exact(p.elem) {
        for f in p.elem_fields {
            let value = read(e, f.off, f.width)
                .ok_or_else(|| invalid(ioctl, "a field outside its element (table defect)"))?;
            let ok = match f.rule {
                Rule::Zero(_) => value == 0,
                Rule::OneOf(values, _) => values.contains(&value),
                Rule::Handle => value <= u64::from(u32::MAX),
                _ => false,
            };
            if !ok {
                return Err(invalid(
                    ioctl,
                    match f.rule {
                        Rule::Zero(why) | Rule::OneOf(_, why) => why,
                        Rule::Handle => "a handle above 32 bits",
                        _ => "a rule elements cannot have (table defect)",
                    },
                ));
            }
        }
    }
    Ok(())
}

/// Checks `input` as a request for driver ioctl `code` reaching the device
/// by `route`, with at most `out_max` bytes of answer.
pub fn decode(
    table: &'static Table,
    route: Route,
    code: u32,
    input: &[u8],
    out_max: usize,
) -> Result<Call, IoctlError> {
    let ioctl = table
        .find(code)
        .filter(|i| i.route == route)
        .ok_or(IoctlError::Unsupported(code))?;
    let mut arg = input
        .get(..ioctl.size)
        .ok_or_else(|| invalid(ioctl, "shorter than the ioctl's struct"))?
        .to_vec();
    let mut rest = input.get(ioctl.size..).unwrap_or_default();
    let mut data = Vec::new();
    let mut answer_len = ioctl.size;
    let malformed = || invalid(ioctl, "a field outside the struct (table defect)");
    for field in ioctl.fields {
        let value = read(&arg, field.off, field.width).ok_or_else(malformed)?;
        match field.rule {
            Rule::Zero(why) => {
                if value != 0 {
                    return Err(invalid(ioctl, why));
                }
            }
            Rule::OneOf(values, why) => {
                if !values.contains(&value) {
                    return Err(invalid(ioctl, why));
                }
            }
            Rule::Handle => {
                if value > u64::from(u32::MAX) {
                    return Err(invalid(ioctl, "a handle above 32 bits"));
                }
            }
            Rule::HostBytes => {}
            Rule::Scrub(_) => write(&mut arg, field.off, field.width, 0).ok_or_else(malformed)?,
            Rule::Pointer(p) => {
                let count = match p.count {
                    Count::Fixed(n) => u64::from(n),
                    Count::Field { off, width, .. } => {
                        read(&arg, off, width).ok_or_else(malformed)?
                    }
                };
                if count > u64::from(p.max) {
                    return Err(invalid(ioctl, "more elements than the driver takes"));
                }
                let len = usize::try_from(count)
                    .ok()
                    .and_then(|c| c.checked_mul(p.elem))
                    .ok_or_else(|| invalid(ioctl, "pointed-to data too large"))?;
                let bytes = if p.dir.sent() {
                    let (b, r) = rest
                        .split_at_checked(len)
                        .ok_or_else(|| invalid(ioctl, "pointed-to data missing"))?;
                    rest = r;
                    check_elements(ioctl, &p, b)?;
                    b.to_vec()
                } else {
                    vec![0; len]
                };
                if p.dir.returned() {
                    answer_len = answer_len
                        .checked_add(len)
                        .ok_or_else(|| invalid(ioctl, "answer too large"))?;
                }
                write(&mut arg, field.off, field.width, 0).ok_or_else(malformed)?;
                data.push(Data {
                    off: field.off,
                    width: field.width,
                    guest_value: value,
                    dir: p.dir,
                    handles: p.handles,
                    bytes,
                });
            }
        }
    }
    if !rest.is_empty() {
        return Err(invalid(ioctl, "bytes after the struct and its data"));
    }
    if answer_len > out_max {
        return Err(invalid(ioctl, "out_size below the answer"));
    }
    Ok(Call {
        ioctl,
        arg,
        data,
        answer_len,
    })
}

impl Call {
    pub fn ioctl(&self) -> &'static Ioctl {
        self.ioctl
    }

    /// The length of [`Call::answer`].
    pub fn answer_len(&self) -> usize {
        self.answer_len
    }

    /// The struct to hand the driver, each pointer field holding the
    /// address of the device's copy of its data (zero for none). The
    /// addresses stay valid as long as `self` lives: the copies are never
    /// reallocated.
    pub fn arg(&mut self) -> &mut [u8] {
        for d in &mut self.data {
            let addr = if d.bytes.is_empty() {
                0
            } else {
                d.bytes.as_mut_ptr() as u64
            };
            // The field was checked in `decode`.
            let _ = write(&mut self.arg, d.off, d.width, addr);
        }
        &mut self.arg
    }

    /// Every buffer or queue handle the request names, in order: the
    /// handle fields, then the handle arrays.
    pub fn handles(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self
            .ioctl
            .fields
            .iter()
            .filter(|f| f.rule == Rule::Handle)
            .filter_map(|f| read(&self.arg, f.off, f.width))
            .collect();
        for d in self.data.iter().filter(|d| d.handles) {
            v.extend(d.bytes.chunks_exact(4).filter_map(|c| read(c, 0, 4)));
        }
        v
    }

    /// Bytes the driver would allocate from host memory.
    pub fn host_bytes(&self) -> u64 {
        self.ioctl
            .fields
            .iter()
            .filter(|f| f.rule == Rule::HostBytes)
            .filter_map(|f| read(&self.arg, f.off, f.width))
            .fold(0, u64::saturating_add)
    }

    /// The answer: the struct as the driver left it, with the guest's
    /// pointer values back and scrubbed fields zero, then the data the
    /// driver wrote.
    pub fn answer(mut self) -> Vec<u8> {
        for d in &self.data {
            let _ = write(&mut self.arg, d.off, d.width, d.guest_value);
        }
        for f in self.ioctl.fields {
            if let Rule::Scrub(_) = f.rule {
                let _ = write(&mut self.arg, f.off, f.width, 0);
            }
        }
        let mut out = self.arg;
        out.reserve(self.answer_len.saturating_sub(out.len()));
        for d in self.data.iter().filter(|d| d.dir.returned()) {
            out.extend_from_slice(&d.bytes);
        }
        out
    }
}

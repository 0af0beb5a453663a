//! Reading the endpoint map: in bulk with `BPF_MAP_LOOKUP_BATCH` (thousands of entries
//! per system call, into buffers kept across drains), entry by entry on kernels
//! without batch operations, or only the keys the change ring named.

use std::os::fd::{AsFd, AsRawFd};

use agent_common::{EndpointEntry, EndpointKey, EndpointStats, MAP_ENDPOINTS};
use aya::maps::IterableMap;

use super::{Drain, DrainError, BATCH_ENTRIES};
use crate::snapshot::merge_stats;

impl Drain {
    /// Reads every endpoint (summed over CPUs) with batched lookups, falling back to
    /// key-by-key iteration on kernels without batch operations.
    pub(super) fn read_endpoints(
        &mut self,
    ) -> Result<Vec<(EndpointKey, EndpointStats)>, DrainError> {
        if self.batch_supported {
            match self.read_endpoints_batched() {
                Ok(entries) => return Ok(entries),
                Err(err) if err.raw_os_error() == Some(libc::EINVAL) => {
                    tracing::info!("batched map lookups unsupported, reading key by key");
                    self.batch_supported = false;
                }
                Err(source) => {
                    return Err(DrainError::Read {
                        map: MAP_ENDPOINTS,
                        source,
                    })
                }
            }
        }
        let mut entries = Vec::new();
        for item in self.endpoints.iter() {
            let (key, values) = item.map_err(|e| DrainError::Read {
                map: MAP_ENDPOINTS,
                source: std::io::Error::other(e),
            })?;
            entries.push((key, sum_cpus(&values)));
        }
        Ok(entries)
    }

    /// Reads the given keys (summed over CPUs), one lookup each into a buffer kept
    /// across drains; a key no longer in the map is left out.
    pub(super) fn read_endpoint_keys(
        &mut self,
        keys: &[EndpointKey],
    ) -> Result<Vec<(EndpointKey, EndpointStats)>, DrainError> {
        let fd = self.endpoints.map().fd().as_fd().as_raw_fd();
        let cpus = self.cpus;
        let stride = value_stride();
        self.batch_values.resize(cpus * stride, 0);
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            let mut attr = LookupAttr {
                map_fd: fd as u32,
                _pad: 0,
                key: key as *const EndpointKey as u64,
                value: self.batch_values.as_mut_ptr() as u64,
                flags: 0,
            };
            // SAFETY: `attr` points at the key and at a buffer of every CPU's value,
            // both alive for the call; the kernel writes at most that buffer.
            let rc = unsafe { bpf(BPF_MAP_LOOKUP_ELEM, &mut attr) };
            if rc < 0 {
                let err = std::io::Error::last_os_error();
                if err.raw_os_error() == Some(libc::ENOENT) {
                    continue;
                }
                return Err(DrainError::Read {
                    map: MAP_ENDPOINTS,
                    source: err,
                });
            }
            out.push((*key, sum_raw(&self.batch_values, cpus, stride)));
        }
        Ok(out)
    }

    fn read_endpoints_batched(&mut self) -> std::io::Result<Vec<(EndpointKey, EndpointStats)>> {
        let fd = self.endpoints.map().fd().as_fd().as_raw_fd();
        let cpus = self.cpus;
        let stride = value_stride();
        let mut out = Vec::with_capacity(self.last_raw.len());
        lookup_batch(
            fd,
            cpus * stride,
            &mut self.batch_keys,
            &mut self.batch_values,
            |key, values| out.push((*key, sum_raw(values, cpus, stride))),
        )?;
        Ok(out)
    }
}

/// Bytes per CPU of a per-CPU value as the kernel copies it out (8-byte aligned).
fn value_stride() -> usize {
    std::mem::size_of::<EndpointEntry>().next_multiple_of(8)
}

/// The counters of every CPU's copy of one entry, summed (`values`: `cpus` values,
/// `stride` bytes apart, as the kernel wrote them).
fn sum_raw(values: &[u8], cpus: usize, stride: usize) -> EndpointStats {
    let mut total = EndpointStats::default();
    for cpu in 0..cpus {
        // SAFETY: the kernel wrote a value of this Pod type at this offset.
        let value: EndpointEntry = unsafe {
            std::ptr::read_unaligned(values[cpu * stride..].as_ptr() as *const EndpointEntry)
        };
        merge_stats(&mut total, &value.stats);
    }
    total
}

/// Reads a whole hash map with `BPF_MAP_LOOKUP_BATCH`, [`BATCH_ENTRIES`] entries per
/// call, into buffers the caller keeps across drains; `each` gets every key and its
/// raw value (`value_size` bytes: all CPUs' values, 8-byte aligned each, for a per-CPU
/// map). An `EINVAL` error means the kernel has no batch operations for the map.
pub(super) fn lookup_batch<K: aya::Pod + Default>(
    fd: std::os::fd::RawFd,
    value_size: usize,
    keys: &mut Vec<K>,
    values: &mut Vec<u8>,
    mut each: impl FnMut(&K, &[u8]),
) -> std::io::Result<()> {
    keys.resize(BATCH_ENTRIES as usize, K::default());
    values.resize(BATCH_ENTRIES as usize * value_size, 0);
    let mut in_batch = 0u64;
    let mut out_batch = 0u64;
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first {
                0
            } else {
                &in_batch as *const u64 as u64
            },
            out_batch: &mut out_batch as *mut u64 as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: BATCH_ENTRIES,
            map_fd: fd as u32,
            elem_flags: 0,
            flags: 0,
        };
        // SAFETY: `attr` points at buffers sized for `count` keys and values, which
        // outlive the call; the kernel writes at most `count` entries.
        let rc = unsafe { bpf(BPF_MAP_LOOKUP_BATCH, &mut attr) };
        let err = (rc < 0).then(std::io::Error::last_os_error);
        let done = matches!(&err, Some(e) if e.raw_os_error() == Some(libc::ENOENT));
        if let Some(err) = err.filter(|_| !done) {
            return Err(err);
        }
        for (i, key) in keys.iter().take(attr.count as usize).enumerate() {
            each(key, &values[i * value_size..(i + 1) * value_size]);
        }
        if done {
            return Ok(());
        }
        in_batch = out_batch;
        first = false;
    }
}

pub(super) fn sum_cpus(values: &[EndpointEntry]) -> EndpointStats {
    let mut total = EndpointStats::default();
    for v in values {
        merge_stats(&mut total, &v.stats);
    }
    total
}

/// The `bpf(2)` system call with `attr` as its attribute union member.
///
/// # Safety
/// Every pointer in `attr` must be valid for what `command` reads and writes.
unsafe fn bpf<A>(command: libc::c_long, attr: &mut A) -> libc::c_long {
    // SAFETY: the caller vouches for the pointers inside `attr`; `attr` itself is a
    // live value of the size passed.
    unsafe {
        libc::syscall(
            libc::SYS_bpf,
            command,
            attr as *mut A,
            std::mem::size_of::<A>(),
        )
    }
}

/// `BPF_MAP_LOOKUP_ELEM` command number (linux/bpf.h).
const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;

/// The element-operation member of `union bpf_attr`.
#[repr(C)]
struct LookupAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// `BPF_MAP_LOOKUP_BATCH` command number (linux/bpf.h).
pub(super) const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
pub(super) struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

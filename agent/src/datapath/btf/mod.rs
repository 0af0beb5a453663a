//! Kernel structure offsets for the socket-drop tracepoint and the kernel-mode peer
//! probe, read from the running kernel's BTF (`/sys/kernel/btf/vmlinux`, and the
//! `wireguard` module's split BTF on top of it).
//!
//! Rust eBPF has no CO-RE field relocations, so the tracepoint reads `sock` and
//! `sk_buff` fields with `bpf_probe_read_kernel` at offsets userspace resolves here.
//! The reader walks the BTF type section once and understands only what it needs
//! (struct/union members, typedef -> pointer -> function prototype); aya-obj keeps its
//! BTF member accessors crate-private and the dedicated crate (btf-rs) is LGPL.

use std::collections::HashMap;
use std::path::Path;

use agent_common::{KernelOffsets, WgPeerOffsets};

/// Errors resolving offsets.
#[derive(Debug, thiserror::Error)]
pub enum OffsetsError {
    /// The BTF file could not be read.
    #[error("reading BTF {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The BTF blob is malformed.
    #[error("malformed BTF: {0}")]
    Malformed(String),
    /// A type or member the drop counter needs is missing.
    #[error("kernel BTF has no {0}")]
    Missing(String),
}

const BTF_MAGIC: u16 = 0xeb9f;
const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_TYPE_TAG: u32 = 18;
/// Kinds that only qualify or rename another type.
const QUALIFIERS: [u32; 5] = [
    KIND_TYPEDEF,
    KIND_VOLATILE,
    KIND_CONST,
    KIND_RESTRICT,
    KIND_TYPE_TAG,
];
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_ENUM64: u32 = 19;

/// A struct or union member: name, type id, offset in bits.
#[derive(Clone, Debug)]
struct Member {
    name: String,
    type_id: u32,
    bit_offset: u32,
}

/// The parts of one BTF type this reader keeps.
#[derive(Clone, Debug)]
struct Type {
    kind: u32,
    name: String,
    /// Referenced type (typedef, pointer).
    type_id: u32,
    /// Members of a struct or union.
    members: Vec<Member>,
    /// Parameter count of a function prototype.
    params: u32,
}

/// A parsed BTF type section (ids start at 1).
pub struct Btf {
    types: Vec<Type>,
    by_name: HashMap<(u32, String), u32>,
}

/// The type and string sections of a BTF blob.
fn sections(data: &[u8]) -> Result<(&[u8], &[u8]), OffsetsError> {
    if data.len() < 24 || u16::from_le_bytes([data[0], data[1]]) != BTF_MAGIC {
        return Err(OffsetsError::Malformed("bad magic".into()));
    }
    let hdr_len = read_u32(data, 4)? as usize;
    let type_off = read_u32(data, 8)? as usize;
    let type_len = read_u32(data, 12)? as usize;
    let str_off = read_u32(data, 16)? as usize;
    let str_len = read_u32(data, 20)? as usize;
    let types_start = hdr_len + type_off;
    let strings_start = hdr_len + str_off;
    let strings = data
        .get(strings_start..strings_start + str_len)
        .ok_or_else(|| OffsetsError::Malformed("string section out of bounds".into()))?;
    let section = data
        .get(types_start..types_start + type_len)
        .ok_or_else(|| OffsetsError::Malformed("type section out of bounds".into()))?;
    Ok((section, strings))
}

fn read_u32(data: &[u8], at: usize) -> Result<u32, OffsetsError> {
    data.get(at..at + 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or_else(|| OffsetsError::Malformed(format!("truncated at byte {at}")))
}

impl Btf {
    /// Reads and parses a BTF file (little-endian, as on the machines we run on).
    pub fn from_file(path: &Path) -> Result<Self, OffsetsError> {
        let data = std::fs::read(path).map_err(|source| OffsetsError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&data)
    }

    /// Reads a module's split BTF (`/sys/kernel/btf/<module>`) on top of its base
    /// (`/sys/kernel/btf/vmlinux`): the module's type ids continue after the base's and
    /// its names may live in the base's string section.
    pub fn from_split_files(module: &Path, base: &Path) -> Result<Self, OffsetsError> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|source| OffsetsError::Read {
                path: path.display().to_string(),
                source,
            })
        };
        Self::parse_split(&read(module)?, &read(base)?)
    }

    /// Parses a BTF blob.
    pub fn parse(data: &[u8]) -> Result<Self, OffsetsError> {
        Self::parse_on(data, None)
    }

    /// Parses split BTF `data` on top of the base blob `base`.
    pub fn parse_split(data: &[u8], base: &[u8]) -> Result<Self, OffsetsError> {
        let base_types = Self::parse(base)?;
        let base_strings = sections(base)?.1;
        Self::parse_on(data, Some((base_types, base_strings)))
    }

    fn parse_on(data: &[u8], base: Option<(Btf, &[u8])>) -> Result<Self, OffsetsError> {
        let (section, strings) = sections(data)?;
        let base_strings: &[u8] = base.as_ref().map(|(_, s)| *s).unwrap_or_default();
        let name_at = |offset: u32| -> String {
            let start = offset as usize;
            let (table, start) = if start < base_strings.len() {
                (base_strings, start)
            } else {
                (strings, start - base_strings.len())
            };
            table
                .get(start..)
                .and_then(|s| s.split(|&b| b == 0).next())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .unwrap_or_default()
        };
        let (mut types, mut by_name) = match base {
            Some((btf, _)) => (btf.types, btf.by_name),
            None => (
                vec![Type {
                    kind: 0,
                    name: String::new(),
                    type_id: 0,
                    members: Vec::new(),
                    params: 0,
                }],
                HashMap::new(),
            ),
        };
        let first_own = types.len();
        let mut at = 0usize;
        while at < section.len() {
            let name_off = read_u32(section, at)?;
            let info = read_u32(section, at + 4)?;
            let size_or_type = read_u32(section, at + 8)?;
            at += 12;
            let kind = (info >> 24) & 0x1f;
            let vlen = (info & 0xffff) as usize;
            let kind_flag = info >> 31;
            let mut ty = Type {
                kind,
                name: name_at(name_off),
                type_id: size_or_type,
                members: Vec::new(),
                params: 0,
            };
            match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => at += 4,
                KIND_ARRAY => at += 12,
                KIND_STRUCT | KIND_UNION => {
                    for i in 0..vlen {
                        let base = at + i * 12;
                        let offset = read_u32(section, base + 8)?;
                        ty.members.push(Member {
                            name: name_at(read_u32(section, base)?),
                            type_id: read_u32(section, base + 4)?,
                            bit_offset: if kind_flag == 1 {
                                offset & 0xff_ffff
                            } else {
                                offset
                            },
                        });
                    }
                    at += vlen * 12;
                }
                KIND_ENUM => at += vlen * 8,
                KIND_FUNC_PROTO => {
                    ty.params = vlen as u32;
                    at += vlen * 8;
                }
                KIND_DATASEC | KIND_ENUM64 => at += vlen * 12,
                _ => {}
            }
            types.push(ty);
        }
        for (id, ty) in types.iter().enumerate().skip(first_own) {
            if !ty.name.is_empty() {
                // A module's own definition wins over a base type of the same name.
                by_name.insert((ty.kind, ty.name.clone()), id as u32);
            }
        }
        Ok(Self { types, by_name })
    }

    fn get(&self, id: u32) -> Option<&Type> {
        self.types.get(id as usize)
    }

    /// Byte offset of `member` in the struct named `name`, looking through anonymous
    /// structs and unions (as `sock_common.skc_num` and `sk_buff.network_header` need).
    pub fn member_offset(&self, name: &str, member: &str) -> Result<u32, OffsetsError> {
        let id = self
            .by_name
            .get(&(KIND_STRUCT, name.to_owned()))
            .ok_or_else(|| OffsetsError::Missing(format!("struct {name}")))?;
        self.find_member(*id, member, 0)
            .map(|(bits, _)| bits / 8)
            .ok_or_else(|| OffsetsError::Missing(format!("{name}.{member}")))
    }

    /// Bit offset and type id of `member` in the struct or union `id`.
    fn find_member(&self, id: u32, member: &str, depth: u32) -> Option<(u32, u32)> {
        let ty = self.get(id)?;
        if depth > 8 {
            return None;
        }
        for m in &ty.members {
            if m.name == member {
                return Some((m.bit_offset, m.type_id));
            }
        }
        for m in ty.members.iter().filter(|m| m.name.is_empty()) {
            let inner = self.get(m.type_id)?;
            if inner.kind == KIND_STRUCT || inner.kind == KIND_UNION {
                if let Some((bits, type_id)) = self.find_member(m.type_id, member, depth + 1) {
                    return Some((m.bit_offset + bits, type_id));
                }
            }
        }
        None
    }

    /// Follows typedefs and qualifiers to the type they name.
    fn strip(&self, mut id: u32) -> u32 {
        for _ in 0..16 {
            match self.get(id) {
                Some(t) if QUALIFIERS.contains(&t.kind) => id = t.type_id,
                _ => break,
            }
        }
        id
    }

    /// Byte offset of a nested member (`["handshake", "remote_static"]`) in the struct
    /// named `name`: each step but the last must be an embedded struct or union.
    pub fn member_path_offset(&self, name: &str, path: &[&str]) -> Result<u32, OffsetsError> {
        let dotted = || format!("{name}.{}", path.join("."));
        let mut id = *self
            .by_name
            .get(&(KIND_STRUCT, name.to_owned()))
            .ok_or_else(|| OffsetsError::Missing(format!("struct {name}")))?;
        let mut bits = 0;
        for member in path {
            let (offset, type_id) = self
                .find_member(id, member, 0)
                .ok_or_else(|| OffsetsError::Missing(dotted()))?;
            bits += offset;
            id = self.strip(type_id);
        }
        if bits % 8 != 0 {
            return Err(OffsetsError::Missing(format!("{} (a bit field)", dotted())));
        }
        Ok(bits / 8)
    }

    /// Number of arguments of a BTF tracepoint (the `btf_trace_<name>` typedef's
    /// prototype minus its leading context pointer).
    pub fn tracepoint_args(&self, tracepoint: &str) -> Result<u32, OffsetsError> {
        let missing = || OffsetsError::Missing(format!("tracepoint {tracepoint}"));
        let typedef = self
            .by_name
            .get(&(KIND_TYPEDEF, format!("btf_trace_{tracepoint}")))
            .ok_or_else(missing)?;
        let pointer = self.get(*typedef).ok_or_else(missing)?;
        let proto = self.get(pointer.type_id).ok_or_else(missing)?;
        let proto = if proto.kind == KIND_PTR {
            self.get(proto.type_id).ok_or_else(missing)?
        } else {
            proto
        };
        if proto.kind != KIND_FUNC_PROTO || proto.params == 0 {
            return Err(missing());
        }
        Ok(proto.params - 1)
    }
}

/// `valid` value: every offset filled, the tracepoint passes `(rc, sk, skb)`.
pub const OFFSETS_WITH_SKB: u32 = 1;
/// `valid` value: the tracepoint passes `(rc, sk)` only (kernels before 6.10):
/// drops are counted per device, not per endpoint.
pub const OFFSETS_SOCK_ONLY: u32 = 2;

/// Resolves the offsets the drop tracepoint needs from `btf`.
pub fn kernel_offsets(btf: &Btf) -> Result<KernelOffsets, OffsetsError> {
    let args = btf.tracepoint_args(agent_common::programs::UDP_DROPS_TRACEPOINT)?;
    let sk_num =
        btf.member_offset("sock_common", "skc_num")? + btf.member_offset("sock", "__sk_common")?;
    let mut offsets = KernelOffsets {
        valid: OFFSETS_SOCK_ONLY,
        sk_num,
        ..Default::default()
    };
    if args >= 3 {
        offsets.skb_head = btf.member_offset("sk_buff", "head")?;
        offsets.skb_network_header = btf.member_offset("sk_buff", "network_header")?;
        offsets.skb_transport_header = btf.member_offset("sk_buff", "transport_header")?;
        offsets.skb_len = btf.member_offset("sk_buff", "len")?;
        offsets.valid = OFFSETS_WITH_SKB;
    }
    Ok(offsets)
}

/// Where the `wireguard` module's BTF is exposed when the module is loaded.
pub const WIREGUARD_BTF: &str = "/sys/kernel/btf/wireguard";
/// The kernel's own BTF, the base of every module's.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Resolves the `struct wg_peer` offsets the kernel-mode probe reads from the
/// `wireguard` module's BTF (`btf` parsed with [`Btf::parse_split`]).
pub fn wg_peer_offsets(btf: &Btf) -> Result<WgPeerOffsets, OffsetsError> {
    let peer = |path: &[&str]| btf.member_path_offset("wg_peer", path);
    Ok(WgPeerOffsets {
        valid: 1,
        internal_id: peer(&["internal_id"])?,
        rx_bytes: peer(&["rx_bytes"])?,
        tx_bytes: peer(&["tx_bytes"])?,
        walltime_last_handshake: peer(&["walltime_last_handshake"])?,
        endpoint: peer(&["endpoint"])?,
        remote_static: peer(&["handshake", "remote_static"])?,
        device: peer(&["device"])?,
        device_dev: btf.member_path_offset("wg_device", &["dev"])?,
        ifindex: btf.member_path_offset("net_device", &["ifindex"])?,
        nd_net: btf.member_path_offset("net_device", &["nd_net", "net"])?,
        // Without the namespace inode the agent matches devices by ifindex alone.
        net_inum: btf.member_path_offset("net", &["ns", "inum"]).unwrap_or(0),
    })
}

#[cfg(test)]
mod tests;

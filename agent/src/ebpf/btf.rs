//! A small reader for the kernel's BPF Type Format, just enough to find struct member offsets.
//!
//! Rust eBPF programs get no CO-RE field relocations, so the agent looks the offsets up itself in
//! `/sys/kernel/btf/vmlinux` and hands them to the programs as a global. The format is described
//! in the kernel's `Documentation/bpf/btf.rst` and `include/uapi/linux/btf.h`:
//!
//! ```text
//! btf_header { u16 magic = 0xeb9f; u8 version = 1; u8 flags; u32 hdr_len;
//!              u32 type_off, type_len, str_off, str_len }   // offsets relative to the header's end
//! type section: btf_type { u32 name_off; u32 info; u32 size_or_type } + kind-specific data, ...
//! string section: NUL-terminated names, offset 0 is ""
//! ```
//!
//! Type ids are implicit: the first record of the type section is id 1, id 0 is `void`.
//!
//! The input is treated as untrusted: every read is bounds-checked and every walk through type
//! references is depth-limited, so a corrupt blob yields a [`BtfError`], never a panic or a hang.

use std::{
    collections::HashMap,
    fs, io,
    ops::Range,
    path::{Path, PathBuf},
};

/// Where the running kernel exposes its own BTF (`CONFIG_DEBUG_INFO_BTF`).
pub const VMLINUX_BTF_PATH: &str = "/sys/kernel/btf/vmlinux";

const BTF_MAGIC: u16 = 0xeb9f;
const BTF_VERSION: u8 = 1;
/// `sizeof(struct btf_header)` as of the first BTF version; newer headers may only be longer.
const MIN_HEADER_LEN: usize = 24;
/// `sizeof(struct btf_type)`: name_off, info, size/type.
const TYPE_RECORD_LEN: usize = 12;
/// `sizeof(struct btf_member)`: name_off, type, offset.
const MEMBER_LEN: usize = 12;
/// Bounds every walk through type references (typedef chains, nested anonymous members, array
/// element types). Real kernels need a handful of levels; a crafted cycle stops here.
const MAX_DEPTH: usize = 64;
/// BTF does not record the pointer width; it is the architecture's, the same as ours as long as
/// the agent runs natively (no 32-bit userspace on a 64-bit kernel, which eBPF loading excludes).
const POINTER_SIZE: u32 = size_of::<usize>() as u32;

/// `BTF_KIND_*` from `include/uapi/linux/btf.h`.
mod kind {
    pub const VOID: u8 = 0;
    pub const INT: u8 = 1;
    pub const PTR: u8 = 2;
    pub const ARRAY: u8 = 3;
    pub const STRUCT: u8 = 4;
    pub const UNION: u8 = 5;
    pub const ENUM: u8 = 6;
    pub const FWD: u8 = 7;
    pub const TYPEDEF: u8 = 8;
    pub const VOLATILE: u8 = 9;
    pub const CONST: u8 = 10;
    pub const RESTRICT: u8 = 11;
    pub const FUNC: u8 = 12;
    pub const FUNC_PROTO: u8 = 13;
    pub const VAR: u8 = 14;
    pub const DATASEC: u8 = 15;
    pub const FLOAT: u8 = 16;
    pub const DECL_TAG: u8 = 17;
    pub const TYPE_TAG: u8 = 18;
    pub const ENUM64: u8 = 19;
}

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("cannot read BTF from {path}")]
    Read {
        path: PathBuf,
        #[source]
        io: io::Error,
    },
    #[error("malformed BTF: {reason}")]
    Malformed { reason: &'static str },
    #[error("unsupported BTF kind {kind} at type id {type_id}")]
    UnknownKind { kind: u8, type_id: u32 },
    #[error("invalid member path `{path}`: expected `struct_name.member[.member...]`")]
    InvalidPath { path: String },
    #[error("no struct or union named `{name}` in BTF")]
    TypeNotFound { name: String },
    #[error("member `{path}` not found in BTF")]
    MemberNotFound { path: String },
    #[error("`{path}` is not a struct or union, so it has no members")]
    NotComposite { path: String },
    #[error("member `{path}` is a bitfield that does not start on a byte boundary")]
    Bitfield { path: String },
}

/// Where a struct member lives, as resolved by [`KernelBtf::member`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member {
    /// Bytes from the start of the outermost struct named in the path.
    pub offset: u32,
    /// Size in bytes of the member's type (after typedefs and qualifiers; pointers are the
    /// architecture's pointer size). For a bitfield, the size of its underlying integer type.
    pub size: u32,
    /// `Some(width)` when the member is a bitfield (which then starts on a byte boundary).
    pub bitfield_bits: Option<u32>,
}

/// Parsed kernel BTF. Holds the raw bytes and an index of the records; types are decoded lazily.
pub struct KernelBtf {
    bytes: Vec<u8>,
    big_endian: bool,
    /// Byte position in `bytes` of each type record; index `id - 1` (id 0 is `void`).
    types: Vec<usize>,
    strings: Range<usize>,
    /// Name -> id of the first STRUCT with that name, or of the first UNION if no STRUCT has it.
    composites: HashMap<Vec<u8>, u32>,
}

/// The fixed part of one type record.
#[derive(Clone, Copy)]
struct TypeRecord {
    name_off: u32,
    kind: u8,
    kind_flag: bool,
    vlen: usize,
    /// `size` for INT/ENUM/STRUCT/UNION/..., `type` for PTR/TYPEDEF/qualifiers/....
    size_or_type: u32,
    /// Byte position of the kind-specific data that follows the record.
    data: usize,
}

/// A member found by name inside a struct or union, possibly inside anonymous members.
#[derive(Clone, Copy)]
struct FoundMember {
    /// Bits from the start of the struct or union that was searched.
    bit_offset: u64,
    type_id: u32,
    /// Non-zero for a bitfield declared with the `kind_flag` encoding.
    bitfield_size: u32,
}

fn malformed(reason: &'static str) -> BtfError {
    BtfError::Malformed { reason }
}

impl KernelBtf {
    /// Reads and parses the running kernel's BTF.
    #[cfg_attr(
        not(test),
        expect(dead_code, reason = "the agent reads the --btf path")
    )]
    pub fn from_sys_fs() -> Result<Self, BtfError> {
        Self::from_file(Path::new(VMLINUX_BTF_PATH))
    }

    /// Reads and parses a BTF file: the kernel's own, or one made for it (e.g. from BTFHub)
    /// on kernels that do not expose `/sys/kernel/btf/vmlinux`.
    pub fn from_file(path: &Path) -> Result<Self, BtfError> {
        let bytes = fs::read(path).map_err(|io| BtfError::Read {
            path: path.to_path_buf(),
            io,
        })?;
        Self::parse(bytes)
    }

    /// Parses a standalone (non-split) BTF blob, such as `/sys/kernel/btf/vmlinux`.
    pub fn parse(bytes: Vec<u8>) -> Result<Self, BtfError> {
        // The magic is written in the producer's byte order; the kernel's own BTF is native, but
        // reading either order costs nothing and makes a foreign blob an ordinary parse.
        let big_endian = match bytes.get(0..2) {
            Some(&[lo, hi]) if u16::from_le_bytes([lo, hi]) == BTF_MAGIC => false,
            Some(&[lo, hi]) if u16::from_be_bytes([lo, hi]) == BTF_MAGIC => true,
            Some(_) => return Err(malformed("bad magic (not a BTF blob)")),
            None => return Err(malformed("shorter than the BTF header")),
        };
        let mut btf = Self {
            bytes,
            big_endian,
            types: Vec::new(),
            strings: 0..0,
            composites: HashMap::new(),
        };
        if btf.bytes.get(2) != Some(&BTF_VERSION) {
            return Err(malformed("unsupported BTF version"));
        }
        let hdr_len = btf.u32_at(4)? as usize;
        if hdr_len < MIN_HEADER_LEN || hdr_len > btf.bytes.len() {
            return Err(malformed("header length out of range"));
        }
        let section = |off_pos: usize, what: &'static str| -> Result<Range<usize>, BtfError> {
            let off = btf.u32_at(off_pos)? as usize;
            let len = btf.u32_at(off_pos + 4)? as usize;
            let start = hdr_len.checked_add(off).ok_or_else(|| malformed(what))?;
            let end = start.checked_add(len).ok_or_else(|| malformed(what))?;
            if end > btf.bytes.len() {
                return Err(malformed(what));
            }
            Ok(start..end)
        };
        let type_section = section(8, "type section runs past the end of the blob")?;
        let strings = section(16, "string section runs past the end of the blob")?;
        btf.strings = strings;

        let mut pos = type_section.start;
        while pos < type_section.end {
            let type_id = u32::try_from(btf.types.len() + 1)
                .map_err(|_| malformed("more types than type ids"))?;
            let record = btf.record_at(pos)?;
            let data_len = match record.kind {
                kind::INT | kind::VAR | kind::DECL_TAG => 4,
                kind::PTR
                | kind::FWD
                | kind::TYPEDEF
                | kind::VOLATILE
                | kind::CONST
                | kind::RESTRICT
                | kind::FUNC
                | kind::FLOAT
                | kind::TYPE_TAG => 0,
                kind::ARRAY => 12,
                kind::STRUCT | kind::UNION | kind::DATASEC | kind::ENUM64 => 12 * record.vlen,
                kind::ENUM | kind::FUNC_PROTO => 8 * record.vlen,
                kind => return Err(BtfError::UnknownKind { kind, type_id }),
            };
            let next = record.data + data_len;
            if next > type_section.end {
                return Err(malformed(
                    "type record runs past the end of the type section",
                ));
            }
            if matches!(record.kind, kind::STRUCT | kind::UNION) && record.name_off != 0 {
                let name = btf.name(record.name_off)?.to_vec();
                let is_struct = record.kind == kind::STRUCT;
                match btf.composites.get(&name) {
                    // A union only ever loses to a struct; among equals the first one wins.
                    Some(&existing) if !is_struct || btf.kind_of(existing)? == kind::STRUCT => {}
                    _ => {
                        btf.composites.insert(name, type_id);
                    }
                }
            }
            btf.types.push(pos);
            pos = next;
        }
        Ok(btf)
    }

    /// Byte offset of the member at `path` (`"struct_name.member.member..."`) from the start of
    /// `struct_name`. See [`Self::member`].
    #[cfg_attr(
        not(test),
        expect(
            dead_code,
            reason = "the agent resolves offsets through the size-checked `member`"
        )
    )]
    pub fn member_offset(&self, path: &str) -> Result<u32, BtfError> {
        self.member(path).map(|member| member.offset)
    }

    /// Resolves `path` (`"struct_name.member.member..."`, e.g. `"sock.__sk_common.skc_daddr"`).
    ///
    /// `struct_name` is the first STRUCT of that name (a UNION if no struct has it). Members of
    /// anonymous structs and unions are found without naming them, as in C. To descend into a
    /// member, its type (after typedefs and qualifiers) must be a struct or union: pointers are
    /// not followed, since the target lives elsewhere in memory.
    pub fn member(&self, path: &str) -> Result<Member, BtfError> {
        let invalid = || BtfError::InvalidPath {
            path: path.to_owned(),
        };
        let mut components = path.split('.');
        let root = components
            .next()
            .filter(|s| !s.is_empty())
            .ok_or_else(invalid)?;
        let mut composite =
            *self
                .composites
                .get(root.as_bytes())
                .ok_or_else(|| BtfError::TypeNotFound {
                    name: root.to_owned(),
                })?;
        let mut walked = root.len();
        let mut bits: u64 = 0;
        let mut last: Option<FoundMember> = None;
        for name in components {
            if name.is_empty() {
                return Err(invalid());
            }
            let parent_path = &path[..walked];
            walked += 1 + name.len();
            let member_path = &path[..walked];
            if let Some(parent) = last {
                // Descend into the previous member: it must be a whole struct or union.
                let inner = self.strip_modifiers(parent.type_id)?;
                if parent.bitfield_size != 0
                    || !matches!(self.kind_of(inner)?, kind::STRUCT | kind::UNION)
                {
                    return Err(BtfError::NotComposite {
                        path: parent_path.to_owned(),
                    });
                }
                composite = inner;
            }
            let found = self
                .find_member(composite, name.as_bytes(), 0)?
                .ok_or_else(|| BtfError::MemberNotFound {
                    path: member_path.to_owned(),
                })?;
            bits = bits
                .checked_add(found.bit_offset)
                .ok_or_else(|| malformed("member offset overflows"))?;
            last = Some(found);
        }
        let found = last.ok_or_else(invalid)?;

        let size = self.type_size(found.type_id, 0)?;
        let mut bitfield_bits = (found.bitfield_size != 0).then_some(found.bitfield_size);
        if bitfield_bits.is_none() {
            // Without `kind_flag`, a bitfield is a member whose INT type covers fewer bits than
            // its size, possibly starting BTF_INT_OFFSET bits in (btf.rst, "BTF_KIND_INT").
            let int = self.record(self.strip_modifiers(found.type_id)?)?;
            if int.kind == kind::INT {
                let encoding = self.u32_at(int.data)?;
                let int_bits = encoding & 0xff;
                let int_offset = (encoding >> 16) & 0xff;
                if int_offset != 0 || u64::from(int_bits) != u64::from(size) * 8 {
                    bits += u64::from(int_offset);
                    bitfield_bits = Some(int_bits);
                }
            }
        }
        if !bits.is_multiple_of(8) {
            return Err(match bitfield_bits {
                Some(_) => BtfError::Bitfield {
                    path: path.to_owned(),
                },
                None => malformed("non-bitfield member is not byte aligned"),
            });
        }
        let offset = u32::try_from(bits / 8).map_err(|_| malformed("member offset overflows"))?;
        Ok(Member {
            offset,
            size,
            bitfield_bits,
        })
    }

    /// Searches the members of struct/union `composite` for `name`, descending into anonymous
    /// struct/union members in declaration order (C forbids duplicate names across them).
    fn find_member(
        &self,
        composite: u32,
        name: &[u8],
        depth: usize,
    ) -> Result<Option<FoundMember>, BtfError> {
        if depth > MAX_DEPTH {
            return Err(malformed("anonymous members nested too deeply"));
        }
        let record = self.record(composite)?;
        for index in 0..record.vlen {
            let pos = record.data + index * MEMBER_LEN;
            let name_off = self.u32_at(pos)?;
            let type_id = self.u32_at(pos + 4)?;
            let raw_offset = self.u32_at(pos + 8)?;
            // With kind_flag set, `offset` packs the bitfield size in bits 24-31 and the bit
            // offset in bits 0-23 (include/uapi/linux/btf.h, BTF_MEMBER_BIT_OFFSET).
            let (bit_offset, bitfield_size) = if record.kind_flag {
                (raw_offset & 0x00ff_ffff, raw_offset >> 24)
            } else {
                (raw_offset, 0)
            };
            let member_name = if name_off == 0 {
                &[][..]
            } else {
                self.name(name_off)?
            };
            if member_name == name {
                return Ok(Some(FoundMember {
                    bit_offset: u64::from(bit_offset),
                    type_id,
                    bitfield_size,
                }));
            }
            if member_name.is_empty() {
                let inner = self.strip_modifiers(type_id)?;
                if matches!(self.kind_of(inner)?, kind::STRUCT | kind::UNION)
                    && let Some(found) = self.find_member(inner, name, depth + 1)?
                {
                    return Ok(Some(FoundMember {
                        bit_offset: found.bit_offset + u64::from(bit_offset),
                        ..found
                    }));
                }
            }
        }
        Ok(None)
    }

    /// Follows typedefs, `const`, `volatile`, `restrict` and type tags to the underlying type.
    fn strip_modifiers(&self, mut type_id: u32) -> Result<u32, BtfError> {
        for _ in 0..MAX_DEPTH {
            let record = self.record(type_id)?;
            match record.kind {
                kind::TYPEDEF | kind::VOLATILE | kind::CONST | kind::RESTRICT | kind::TYPE_TAG => {
                    type_id = record.size_or_type;
                }
                _ => return Ok(type_id),
            }
        }
        Err(malformed("typedef or qualifier chain too long (cycle?)"))
    }

    /// Size in bytes of a value of type `type_id`.
    fn type_size(&self, type_id: u32, depth: usize) -> Result<u32, BtfError> {
        if depth > MAX_DEPTH {
            return Err(malformed("array types nested too deeply"));
        }
        let record = self.record(self.strip_modifiers(type_id)?)?;
        match record.kind {
            kind::INT
            | kind::ENUM
            | kind::ENUM64
            | kind::STRUCT
            | kind::UNION
            | kind::FLOAT
            | kind::DATASEC => Ok(record.size_or_type),
            kind::PTR => Ok(POINTER_SIZE),
            kind::ARRAY => {
                let element = self.u32_at(record.data)?;
                let count = self.u32_at(record.data + 8)?;
                self.type_size(element, depth + 1)?
                    .checked_mul(count)
                    .ok_or_else(|| malformed("array size overflows"))
            }
            _ => Err(malformed("member type has no size")),
        }
    }

    fn kind_of(&self, type_id: u32) -> Result<u8, BtfError> {
        self.record(type_id).map(|record| record.kind)
    }

    fn record(&self, type_id: u32) -> Result<TypeRecord, BtfError> {
        if type_id == 0 {
            return Ok(TypeRecord {
                name_off: 0,
                kind: kind::VOID,
                kind_flag: false,
                vlen: 0,
                size_or_type: 0,
                data: 0,
            });
        }
        let pos = usize::try_from(type_id - 1)
            .ok()
            .and_then(|index| self.types.get(index))
            .ok_or_else(|| malformed("type id out of range"))?;
        self.record_at(*pos)
    }

    fn record_at(&self, pos: usize) -> Result<TypeRecord, BtfError> {
        let truncated = || malformed("type record runs past the end of the blob");
        let name_off = self.u32_at(pos).map_err(|_| truncated())?;
        let info = self.u32_at(pos + 4).map_err(|_| truncated())?;
        let size_or_type = self.u32_at(pos + 8).map_err(|_| truncated())?;
        Ok(TypeRecord {
            name_off,
            // info: bits 0-15 vlen, bits 24-28 kind, bit 31 kind_flag.
            kind: ((info >> 24) & 0x1f) as u8,
            kind_flag: info >> 31 == 1,
            vlen: (info & 0xffff) as usize,
            size_or_type,
            data: pos + TYPE_RECORD_LEN,
        })
    }

    /// The NUL-terminated string at `offset` in the string section.
    fn name(&self, offset: u32) -> Result<&[u8], BtfError> {
        let start = self
            .strings
            .start
            .checked_add(offset as usize)
            .filter(|start| *start < self.strings.end)
            .ok_or_else(|| malformed("name offset outside the string section"))?;
        let tail = &self.bytes[start..self.strings.end];
        let len = tail
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| malformed("name is not NUL-terminated"))?;
        Ok(&tail[..len])
    }

    fn u32_at(&self, pos: usize) -> Result<u32, BtfError> {
        let bytes: [u8; 4] = pos
            .checked_add(4)
            .and_then(|end| self.bytes.get(pos..end))
            .and_then(|slice| slice.try_into().ok())
            .ok_or_else(|| malformed("read past the end of the blob"))?;
        Ok(if self.big_endian {
            u32::from_be_bytes(bytes)
        } else {
            u32::from_le_bytes(bytes)
        })
    }
}

impl std::fmt::Debug for KernelBtf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelBtf")
            .field("bytes", &self.bytes.len())
            .field("types", &self.types.len())
            .field("big_endian", &self.big_endian)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hand-assembled BTF blob. Strings, by offset:
    /// 1 outer, 7 int, 11 char, 16 short, 22 inner, 28 inner_t, 36 a, 38 f4, 41 f3, 44 x, 46 lo,
    /// 49 hi, 52 in, 55 d, 57 e, 59 p, 61 arr, 65 old, 69 bf, 72 bf2, 76 cyc, 80 m.
    const STRINGS: &[u8] = b"\0outer\0int\0char\0short\0inner\0inner_t\0a\0f4\0f3\0x\0lo\0hi\0in\0\
d\0e\0p\0arr\0old\0bf\0bf2\0cyc\0m\0";

    /// The type section as 32-bit words: `name_off, info, size_or_type`, then kind-specific data.
    /// info = kind << 24 | vlen, plus 1 << 31 for kind_flag.
    #[rustfmt::skip]
    const TYPES: &[u32] = &[
        // [1] UNION 'outer' size=4 vlen=0: a decoy, the STRUCT of the same name must win.
        1, 0x0500_0000, 4,
        // [2] INT 'int' size=4, encoding SIGNED, 32 bits at bit 0.
        7, 0x0100_0000, 4, 0x0100_0020,
        // [3] INT 'char' size=1, 8 bits.
        11, 0x0100_0000, 1, 0x0000_0008,
        // [4] INT 'short' size=2, SIGNED, 16 bits.
        16, 0x0100_0000, 2, 0x0100_0010,
        // [5] STRUCT 'inner' size=8 vlen=2: d (int) at bit 0, e (short) at bit 32.
        22, 0x0400_0002, 8,
            55, 2, 0,
            57, 4, 32,
        // [6] TYPEDEF 'inner_t' -> [5].
        28, 0x0800_0000, 5,
        // [7] CONST -> [6].
        0, 0x0a00_0000, 6,
        // [8] STRUCT (anon) size=8 vlen=2: lo at bit 0, hi at bit 32.
        0, 0x0400_0002, 8,
            46, 2, 0,
            49, 2, 32,
        // [9] UNION (anon) size=8 vlen=2: x (int), and the anonymous struct [8], both at bit 0.
        0, 0x0500_0002, 8,
            44, 2, 0,
            0, 8, 0,
        // [10] ARRAY of [3] char, index type [2], 6 elements.
        0, 0x0300_0000, 0, 3, 2, 6,
        // [11] PTR -> [12].
        0, 0x0200_0000, 12,
        // [12] STRUCT 'outer' size=40 vlen=7, kind_flag: offsets are bitfield_size << 24 | bits.
        1, 0x8400_0007, 40,
            36, 2, 0,                 // a: int at byte 0
            38, 3, 4 << 24 | 32,      // f4: 4-bit bitfield at bit 32 (byte 4)
            41, 3, 3 << 24 | 36,      // f3: 3-bit bitfield at bit 36 (not byte aligned)
            0, 9, 64,                 // anonymous union [9] at byte 8
            52, 7, 128,               // in: const inner_t at byte 16
            59, 11, 192,              // p: pointer at byte 24
            61, 10, 256,              // arr: char[6] at byte 32
        // [13] INT 'int' size=4, 4 bits: the old (no kind_flag) bitfield encoding.
        7, 0x0100_0000, 4, 0x0000_0004,
        // [14] STRUCT 'old' size=4 vlen=2, no kind_flag: bf at bit 0, bf2 at bit 4.
        65, 0x0400_0002, 4,
            69, 13, 0,
            72, 13, 4,
        // [15] STRUCT 'outer' size=4 vlen=1: a second struct of that name, must be ignored.
        1, 0x0400_0001, 4,
            36, 4, 0,
        // [16] STRUCT 'cyc' size=8 vlen=1: m has a typedef cycle [17] <-> [18] as its type.
        76, 0x0400_0001, 8,
            80, 17, 0,
        // [17] TYPEDEF -> [18], [18] TYPEDEF -> [17].
        0, 0x0800_0000, 18,
        0, 0x0800_0000, 17,
    ];

    fn golden_blob(big_endian: bool) -> Vec<u8> {
        let word = |w: u32| {
            if big_endian {
                w.to_be_bytes()
            } else {
                w.to_le_bytes()
            }
        };
        let mut blob = Vec::new();
        let magic = if big_endian {
            BTF_MAGIC.to_be_bytes()
        } else {
            BTF_MAGIC.to_le_bytes()
        };
        blob.extend_from_slice(&magic);
        blob.extend_from_slice(&[BTF_VERSION, 0]);
        let type_len = (TYPES.len() * 4) as u32;
        for header_word in [24, 0, type_len, type_len, STRINGS.len() as u32] {
            blob.extend_from_slice(&word(header_word));
        }
        for &type_word in TYPES {
            blob.extend_from_slice(&word(type_word));
        }
        blob.extend_from_slice(STRINGS);
        blob
    }

    fn plain(offset: u32, size: u32) -> Member {
        Member {
            offset,
            size,
            bitfield_bits: None,
        }
    }

    #[test]
    fn golden_blob_members() {
        for big_endian in [false, true] {
            let btf = KernelBtf::parse(golden_blob(big_endian)).unwrap();
            assert_eq!(btf.types.len(), 18);
            let member = |path: &str| btf.member(path).unwrap();
            assert_eq!(member("outer.a"), plain(0, 4));
            assert_eq!(
                member("outer.f4"),
                Member {
                    offset: 4,
                    size: 1,
                    bitfield_bits: Some(4)
                }
            );
            // Anonymous union, and an anonymous struct inside it.
            assert_eq!(member("outer.x"), plain(8, 4));
            assert_eq!(member("outer.lo"), plain(8, 4));
            assert_eq!(member("outer.hi"), plain(12, 4));
            // Descends through const and typedef.
            assert_eq!(member("outer.in"), plain(16, 8));
            assert_eq!(member("outer.in.d"), plain(16, 4));
            assert_eq!(member("outer.in.e"), plain(20, 2));
            assert_eq!(member("outer.p"), plain(24, POINTER_SIZE));
            assert_eq!(member("outer.arr"), plain(32, 6));
            assert_eq!(member("inner.e"), plain(4, 2));
            assert_eq!(btf.member_offset("outer.hi").unwrap(), 12);
            assert_eq!(
                member("old.bf"),
                Member {
                    offset: 0,
                    size: 4,
                    bitfield_bits: Some(4)
                }
            );
        }
    }

    #[test]
    fn golden_blob_errors() {
        let btf = KernelBtf::parse(golden_blob(false)).unwrap();
        let err = |path: &str| btf.member(path).unwrap_err();
        assert!(matches!(err("outer.f3"), BtfError::Bitfield { path } if path == "outer.f3"));
        assert!(matches!(err("old.bf2"), BtfError::Bitfield { path } if path == "old.bf2"));
        assert!(
            matches!(err("outer.nope"), BtfError::MemberNotFound { path } if path == "outer.nope")
        );
        assert!(
            matches!(err("outer.in.nope.x"), BtfError::MemberNotFound { path } if path == "outer.in.nope")
        );
        // Pointers, scalars and bitfields cannot be descended into.
        assert!(matches!(err("outer.p.a"), BtfError::NotComposite { path } if path == "outer.p"));
        assert!(matches!(err("outer.a.b"), BtfError::NotComposite { path } if path == "outer.a"));
        assert!(matches!(err("outer.f4.b"), BtfError::NotComposite { path } if path == "outer.f4"));
        assert!(matches!(err("nosuch.a"), BtfError::TypeNotFound { name } if name == "nosuch"));
        // Anonymous types have no name to look up.
        assert!(matches!(err(".a"), BtfError::InvalidPath { .. }));
        for path in ["", "outer", "outer.", "outer..a"] {
            assert!(matches!(err(path), BtfError::InvalidPath { .. }), "{path}");
        }
        assert!(matches!(err("cyc.m.z"), BtfError::Malformed { .. }));
        assert_eq!(
            err("outer.f3").to_string(),
            "member `outer.f3` is a bitfield that does not start on a byte boundary"
        );
    }

    /// Every lookup the golden tests make, run against damaged blobs only to prove nothing panics.
    fn poke(btf: &KernelBtf) {
        for path in [
            "outer.a",
            "outer.f4",
            "outer.f3",
            "outer.lo",
            "outer.hi",
            "outer.in.e",
            "outer.p.a",
            "outer.arr",
            "old.bf",
            "old.bf2",
            "cyc.m.z",
            "inner.d",
        ] {
            let _ = btf.member(path);
        }
    }

    #[test]
    fn truncated_blob_is_an_error() {
        let blob = golden_blob(false);
        for len in 0..blob.len() {
            assert!(
                KernelBtf::parse(blob[..len].to_vec()).is_err(),
                "truncated to {len} bytes"
            );
        }
    }

    #[test]
    fn corrupted_blob_never_panics() {
        let blob = golden_blob(false);
        for pos in 0..blob.len() {
            for flip in [0xff_u8, 0x80, 0x01, 0x10] {
                let mut damaged = blob.clone();
                damaged[pos] ^= flip;
                if let Ok(btf) = KernelBtf::parse(damaged) {
                    poke(&btf);
                }
            }
        }
        // Pseudo-random garbage behind a valid-looking header.
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        for _ in 0..2000 {
            let mut garbage = blob[..8].to_vec();
            for _ in 0..(state % 300) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                garbage.push(state as u8);
            }
            if let Ok(btf) = KernelBtf::parse(garbage) {
                poke(&btf);
            }
        }
        assert!(matches!(
            KernelBtf::parse(b"not btf at all".to_vec()),
            Err(BtfError::Malformed { .. })
        ));
    }

    /// Offsets read with `bpftool btf dump file /sys/kernel/btf/vmlinux format raw` on the
    /// platform kernel (6.18.44-fc-v782); other builds only get the layout-independent checks.
    const PLATFORM_KERNEL: &str = "6.18.44-fc-v782";

    #[test]
    fn real_vmlinux() {
        let btf = KernelBtf::from_sys_fs().unwrap();
        let member = |path: &str| btf.member(path).unwrap();
        // Facts that hold on every kernel: pid and tgid are adjacent pid_t.
        let pid = member("task_struct.pid");
        let tgid = member("task_struct.tgid");
        assert_eq!((pid.size, tgid.size), (4, 4));
        assert_eq!(tgid.offset, pid.offset + 4);
        // skc_daddr is inside an anonymous struct in an anonymous union; both spellings work.
        assert_eq!(
            member("sock.__sk_common.skc_daddr"),
            member("sock_common.skc_daddr")
        );
        assert_eq!(member("sock_common.skc_family").size, 2);
        assert_eq!(member("sock_common.skc_state").size, 1);
        // sock_common packs `skc_reuse:4`, `skc_reuseport:1`, ... with the kind_flag encoding:
        // the first starts on a byte boundary, the second does not.
        let reuse = member("sock_common.skc_reuse");
        assert_eq!(reuse.bitfield_bits, Some(4));
        assert!(matches!(
            btf.member("sock_common.skc_reuseport"),
            Err(BtfError::Bitfield { .. })
        ));

        let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
        if release.trim() != PLATFORM_KERNEL {
            eprintln!("kernel {release:?} is not {PLATFORM_KERNEL}: exact offsets not checked");
            return;
        }
        assert_eq!(tgid.offset, 10144 / 8);
        assert_eq!(btf.member_offset("task_struct.files").unwrap(), 14592 / 8);
        assert_eq!(
            btf.member_offset("task_struct.group_leader").unwrap(),
            10624 / 8
        );
        assert_eq!(
            btf.member_offset("task_struct.start_boottime").unwrap(),
            12480 / 8
        );
        assert_eq!(btf.member_offset("file.private_data").unwrap(), 192 / 8);
        assert_eq!(btf.member_offset("file.f_inode").unwrap(), 256 / 8);
        assert_eq!(btf.member_offset("fdtable.fd").unwrap(), 64 / 8);
        assert_eq!(btf.member_offset("files_struct.fdt").unwrap(), 256 / 8);
        assert_eq!(btf.member_offset("socket.sk").unwrap(), 192 / 8);
        assert_eq!(btf.member_offset("sock.sk_protocol").unwrap(), 4256 / 8);
        assert_eq!(
            btf.member_offset("sock.__sk_common.skc_family").unwrap(),
            128 / 8
        );
        assert_eq!(
            btf.member_offset("sock.__sk_common.skc_v6_daddr").unwrap(),
            448 / 8
        );
        // skc_portpair's anonymous struct: skc_dport at bit 0, skc_num at bit 16, union at 96.
        assert_eq!(
            btf.member_offset("sock.__sk_common.skc_dport").unwrap(),
            96 / 8
        );
        assert_eq!(
            btf.member_offset("sock.__sk_common.skc_num").unwrap(),
            112 / 8
        );
        assert_eq!(
            reuse,
            Member {
                offset: 152 / 8,
                size: 1,
                bitfield_bits: Some(4)
            }
        );
    }
}

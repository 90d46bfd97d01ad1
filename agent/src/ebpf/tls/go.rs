//! Go executables: the probes of `agent-ebpf/src/go_tls.rs` on `crypto/tls.(*Conn).Read`
//! (entry, and every `RET` instruction: Go moves goroutine stacks, which a uretprobe's
//! rewritten return address would not survive), `Write`, `clientHandshake` and
//! `serverHandshake` (entry).
//!
//! The functions are found in the executable's symbol table (a binary built with `-ldflags=-s`
//! has none and is not probed), their `RET`s by decoding their machine code. The probes read
//! the register ABI (Go 1.17 and newer, read from `.go.buildinfo`) on x86-64 only; any other Go
//! executable is reported (`reason="unsupported"`) and left alone.

use iced_x86::{Decoder, DecoderOptions, Instruction, Mnemonic};
use object::{Architecture, Object as _, ObjectSection as _, ObjectSymbol as _};

use super::{NotProbed, Plan, file_offset};

pub const READ_PROGRAM: &str = "go_tls_read_enter";
pub const WRITE_PROGRAM: &str = "go_tls_write_enter";
pub const HANDSHAKE_PROGRAM: &str = "go_tls_handshake_enter";
pub const RETURN_PROGRAM: &str = "go_tls_return";
/// Per probed file, the type hash of `*net.TCPConn` in its `net.Conn` itab.
pub const ITAB_HASH_MAP: &str = "GO_TCP_ITAB_HASH";

const READ: &str = "crypto/tls.(*Conn).Read";
const WRITE: &str = "crypto/tls.(*Conn).Write";
/// The handshake of each side, run once per connection (through `handshakeContext`, which every
/// `Read` and `Write` calls and which returns at once after the handshake: probing it would
/// cost a trap per call). Named so since Go 1.17.
const CLIENT_HANDSHAKE: &str = "crypto/tls.(*Conn).clientHandshake";
const SERVER_HANDSHAKE: &str = "crypto/tls.(*Conn).serverHandshake";
/// The itab of `*net.TCPConn` as a `net.Conn`: its `hash` (offset 16, after the interface and
/// type pointers) is the type hash the probes compare a `tls.Conn`'s `conn` field with. Named
/// `go.itab.` up to Go 1.19, `go:itab.` from Go 1.20.
const TCP_CONN_ITAB: &str = "go:itab.*net.TCPConn,net.Conn";
const TCP_CONN_ITAB_OLD: &str = "go.itab.*net.TCPConn,net.Conn";
const ITAB_HASH_OFFSET: u64 = 16;
/// The first Go whose functions take their arguments in registers (ABIInternal).
const FIRST_MINOR: u32 = 17;

/// A function's virtual address and size.
type Function = (u64, u64);

/// The probes for a Go executable using `crypto/tls` (see the module's doc).
pub(super) fn plan(file: &object::File<'_>) -> Result<Plan, NotProbed> {
    let (mut read, mut write, mut itab) = (None, None, None);
    let (mut client_handshake, mut server_handshake) = (None, None);
    for symbol in file.symbols() {
        let Ok(name) = symbol.name() else { continue };
        let slot = match name {
            READ => &mut read,
            WRITE => &mut write,
            CLIENT_HANDSHAKE => &mut client_handshake,
            SERVER_HANDSHAKE => &mut server_handshake,
            TCP_CONN_ITAB | TCP_CONN_ITAB_OLD => &mut itab,
            _ => continue,
        };
        if symbol.address() != 0 && slot.is_none() {
            *slot = Some((symbol.address(), symbol.size()));
        }
    }
    let (Some(read), Some(write)) = (read, write) else {
        return Err(NotProbed::NoTls);
    };
    if file.architecture() != Architecture::X86_64 {
        return Err(NotProbed::Unsupported(format!(
            "a Go executable for {:?}: Go's crypto/tls is probed on x86-64 only",
            file.architecture()
        )));
    }
    let version = version(file).ok_or_else(|| {
        NotProbed::Unsupported("a Go executable whose Go version cannot be read".to_string())
    })?;
    if minor(&version).is_some_and(|m| m < FIRST_MINOR) {
        return Err(NotProbed::Unsupported(format!(
            "built with {version}: Go's crypto/tls is probed from go1.{FIRST_MINOR} on (its register ABI)"
        )));
    }
    let Some(itab) = itab else {
        return Err(NotProbed::Unsupported(format!(
            "{version}, uses crypto/tls over no *net.TCPConn (no {TCP_CONN_ITAB} symbol)"
        )));
    };
    let hash = bytes_at(file, itab.0 + ITAB_HASH_OFFSET, 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or_else(|| NotProbed::Unsupported(format!("{TCP_CONN_ITAB} cannot be read")))?;

    // `Write` is read at its entry only (see `go_tls_write_enter`).
    let (read_start, rets) = code_points(file, read)
        .ok_or_else(|| NotProbed::Unsupported(format!("{READ} cannot be read")))?;
    if rets.is_empty() {
        return Err(NotProbed::Unsupported(format!("no RET found in {READ}")));
    }
    let (write_start, _) = code_points(file, write)
        .ok_or_else(|| NotProbed::Unsupported(format!("{WRITE} cannot be read")))?;
    let mut points = vec![(READ_PROGRAM, read_start), (WRITE_PROGRAM, write_start)];
    points.extend(
        rets.into_iter()
            .map(|ret| (RETURN_PROGRAM, read_start + ret)),
    );
    let mut functions = 2;
    for handshake in [client_handshake, server_handshake] {
        if let Some((start, _)) = handshake.and_then(|f| code_points(file, f)) {
            points.push((HANDSHAKE_PROGRAM, start));
            functions += 1;
        }
    }
    Ok(Plan {
        library: "Go crypto/tls",
        functions,
        points,
        go_tcp_itab_hash: Some(hash),
    })
}

/// The file offset of a function and the offsets of its `RET` instructions from its start.
fn code_points(file: &object::File<'_>, (address, size): Function) -> Option<(u64, Vec<u64>)> {
    let section = file
        .sections()
        .find(|s| s.address() <= address && address < s.address() + s.size())?;
    let start = file_offset(address, &section)?;
    let code = section.data().ok()?;
    let from = usize::try_from(address - section.address()).ok()?;
    let to = from.checked_add(usize::try_from(size).ok()?)?;
    Some((start, returns(code.get(from..to)?)))
}

/// The offsets of the `RET` instructions in x86-64 machine code `code` (a Go function: code
/// only, no data between instructions, so a linear decode finds every instruction).
fn returns(code: &[u8]) -> Vec<u64> {
    let mut decoder = Decoder::with_ip(64, code, 0, DecoderOptions::NONE);
    let mut instruction = Instruction::default();
    let mut found = Vec::new();
    while decoder.can_decode() {
        decoder.decode_out(&mut instruction);
        if instruction.mnemonic() == Mnemonic::Ret {
            found.push(instruction.ip());
        }
    }
    found
}

/// `len` bytes of the file's contents at virtual address `address`.
fn bytes_at<'a>(file: &object::File<'a>, address: u64, len: u64) -> Option<&'a [u8]> {
    let section = file
        .sections()
        .find(|s| s.address() <= address && address + len <= s.address() + s.size())?;
    let data = section.data().ok()?;
    let from = usize::try_from(address - section.address()).ok()?;
    data.get(from..from + usize::try_from(len).ok()?)
}

/// The Go version an executable was built with (`go1.19.8`), from its `.go.buildinfo`: the
/// version inline (Go 1.18 on), or through a pointer to a Go string (before).
fn version(file: &object::File<'_>) -> Option<String> {
    const MAGIC: &[u8] = b"\xff Go buildinf:";
    let data = file.section_by_name(".go.buildinfo")?.data().ok()?;
    if data.len() < 32 || !data.starts_with(MAGIC) {
        return None;
    }
    let (pointer_size, flags) = (data[14] as usize, data[15]);
    let text = if flags & 2 != 0 {
        let (len, used) = uvarint(&data[32..])?;
        let from = 32 + used;
        data.get(from..from.checked_add(usize::try_from(len).ok()?)?)?
    } else {
        let big_endian = flags & 1 != 0;
        let word = |b: &[u8]| -> Option<u64> {
            let b = b.get(..pointer_size)?;
            let mut v = 0u64;
            for (i, byte) in b.iter().enumerate() {
                let shift = if big_endian { pointer_size - 1 - i } else { i };
                v |= u64::from(*byte) << (8 * shift);
            }
            Some(v)
        };
        // A pointer to the version's string header (data pointer, length).
        let header_at = word(&data[16..])?;
        let header = bytes_at(file, header_at, 2 * pointer_size as u64)?;
        let (ptr, len) = (word(header)?, word(&header[pointer_size..])?);
        bytes_at(file, ptr, len)?
    };
    Some(String::from_utf8_lossy(text).into_owned())
}

/// Go's unsigned varint: the value and how many bytes it took.
fn uvarint(b: &[u8]) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for (i, byte) in b.iter().enumerate().take(10) {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

/// The minor version of a release (`go1.19.8` -> 19); `None` for a development build
/// (`devel go1.23-...`), taken as new.
fn minor(version: &str) -> Option<u32> {
    let rest = version.strip_prefix("go1.")?;
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minor_versions() {
        assert_eq!(minor("go1.19.8"), Some(19));
        assert_eq!(minor("go1.17"), Some(17));
        assert_eq!(minor("go1.22rc1"), Some(22));
        assert_eq!(minor("devel go1.23-abc"), None);
    }

    #[test]
    fn varints() {
        assert_eq!(uvarint(&[0x08]), Some((8, 1)));
        assert_eq!(uvarint(&[0x96, 0x01]), Some((150, 2)));
        assert_eq!(uvarint(&[0x80, 0x80]), None);
        assert_eq!(uvarint(&[]), None);
    }

    #[test]
    fn returns_of_machine_code() {
        // cmp rsp,[r14+0x10]; jbe +0x0e; push rbp; mov rbp,rsp; mov eax,1; pop rbp; ret;
        // (the `c3` byte inside `mov eax,0xc3` is not a RET); ret
        let code = [
            0x49, 0x3b, 0x66, 0x10, // cmp rsp,[r14+0x10]
            0x76, 0x0e, // jbe
            0x55, // push rbp
            0x48, 0x89, 0xe5, // mov rbp,rsp
            0xb8, 0xc3, 0x00, 0x00, 0x00, // mov eax,0xc3
            0x5d, // pop rbp
            0xc3, // ret (offset 16)
            0xe8, 0x00, 0x00, 0x00, 0x00, // call
            0xc3, // ret (offset 22)
            0xcc, // int3 padding
        ];
        assert_eq!(returns(&code), vec![16, 22]);
    }
}

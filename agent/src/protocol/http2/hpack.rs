//! HPACK header decoding (RFC 7541) for an observer that may have missed part of the stream.
//!
//! One [`Decoder`] per connection and direction, fed each header block whole. The dynamic table
//! holds the entries this decoder saw inserted (newest first) and, behind them, possibly an
//! *unknown tail*: entries inserted before the observer started (a connection found
//! mid-stream) or by a header block it did not see (lost events, a block beyond the capture).
//! A reference into the tail decodes to [`Text::Unknown`]: nothing is ever guessed.
//!
//! Why the known entries stay right: the table evicts oldest first (§4.4), so the unknown tail
//! goes before any known entry, and known entries are exact while their sizes sum to at most
//! the table's maximum. The tail is known to be gone once no entry (32 bytes at least, §4.1)
//! fits beside the known ones, or after a size update to zero: the table is then whole again.
//! An insertion whose name is unknown makes itself and everything older unknown.
//!
//! Memory is bounded by [`HARD_CAP`] per table whatever the peer announces: entries past it are
//! dropped into the unknown tail.

use std::collections::VecDeque;

use super::huffman;

/// Entry overhead (RFC 7541 §4.1).
const ENTRY_OVERHEAD: usize = 32;
/// The table size both ends start with (RFC 7540 §6.5.2, SETTINGS_HEADER_TABLE_SIZE).
pub const DEFAULT_TABLE_SIZE: usize = 4096;
/// Most bytes of entries one table keeps, whatever size the peer allows.
pub const HARD_CAP: usize = 64 * 1024;
/// Longest name or value kept; a longer one decodes as [`Text::Unknown`] and its table entry
/// keeps only its size, which is all the table's bookkeeping needs.
pub const MAX_STRING: usize = 8 * 1024;

/// The static table (RFC 7541 Appendix A), indices 1 to 61.
const STATIC: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

/// A decoded name or value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Text<'a> {
    Known(&'a [u8]),
    /// It came from table state this observer did not see.
    Unknown,
}

/// Why a header block did not decode. The table is then in an unknown state (see
/// [`Decoder::lose_state`]); the caller counts the reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HpackError {
    /// Index 0, or an index past a table with no unknown tail.
    BadIndex,
    /// An integer or string runs past the block's end, or an integer overflows.
    Truncated,
    BadHuffman,
    /// A size update past the limit the decoder's side announced, or not at the block's start.
    BadSizeUpdate,
}

impl HpackError {
    pub fn reason(self) -> &'static str {
        match self {
            HpackError::BadIndex => "hpack_bad_index",
            HpackError::Truncated => "hpack_truncated",
            HpackError::BadHuffman => "hpack_bad_huffman",
            HpackError::BadSizeUpdate => "hpack_bad_size_update",
        }
    }
}

/// A dynamic table entry; a name or value longer than [`MAX_STRING`] is not kept (`None`).
struct Entry {
    name: Option<Box<[u8]>>,
    value: Option<Box<[u8]>>,
    /// §4.1: both lengths plus 32.
    size: usize,
}

fn text(b: &Option<Box<[u8]>>) -> Text<'_> {
    match b {
        Some(b) => Text::Known(b),
        None => Text::Unknown,
    }
}

/// One direction's HPACK decoding state.
pub struct Decoder {
    /// Known entries, newest first (dynamic index 62 is `entries[0]`).
    entries: VecDeque<Entry>,
    /// Sum of the known entries' sizes.
    size: usize,
    /// The table's maximum size, as the latest size update set it.
    max_size: usize,
    /// SETTINGS_HEADER_TABLE_SIZE announced by the decoding side: the bound of size updates.
    settings_limit: usize,
    /// Entries older than `entries` may exist whose content is not known.
    unknown_tail: bool,
    /// Decoded strings of the block being decoded, names and values back to back.
    scratch: Vec<u8>,
}

impl Decoder {
    /// A decoder for a connection seen from its start (`known = true`: an empty table) or
    /// found mid-stream (an unknown table).
    pub fn new(known: bool) -> Self {
        Decoder {
            entries: VecDeque::new(),
            size: 0,
            max_size: DEFAULT_TABLE_SIZE,
            settings_limit: DEFAULT_TABLE_SIZE,
            unknown_tail: !known,
            scratch: Vec::new(),
        }
    }

    /// Whether the table holds state this observer did not see.
    #[cfg(test)]
    pub fn has_unknown_state(&self) -> bool {
        self.unknown_tail
    }

    /// Bytes of the entries kept (RFC 7541 §4.1 sizes).
    #[allow(dead_code, reason = "the hpack fuzz target's bound")]
    pub fn table_bytes(&self) -> usize {
        self.size
    }

    /// The decoding side announced SETTINGS_HEADER_TABLE_SIZE.
    pub fn set_settings_limit(&mut self, limit: u32) {
        self.settings_limit = limit as usize;
    }

    /// A header block of this direction was not seen, or did not decode: every entry this
    /// observer knows may have moved.
    pub fn lose_state(&mut self) {
        self.entries.clear();
        self.size = 0;
        self.unknown_tail = true;
    }

    /// Decodes one whole header block, calling `field(name, value)` for each field in order.
    /// On an error the table's state is lost ([`lose_state`](Self::lose_state)) and fields
    /// already passed to `field` stand.
    pub fn decode(
        &mut self,
        block: &[u8],
        mut field: impl FnMut(Text<'_>, Text<'_>),
    ) -> Result<(), HpackError> {
        let r = self.decode_inner(block, &mut field);
        if r.is_err() {
            self.lose_state();
        }
        r
    }

    fn decode_inner(
        &mut self,
        block: &[u8],
        field: &mut impl FnMut(Text<'_>, Text<'_>),
    ) -> Result<(), HpackError> {
        let mut at = 0;
        let mut fields_seen = false;
        while at < block.len() {
            let b = block[at];
            if b & 0x80 != 0 {
                // Indexed field (§6.1).
                let index = integer(block, &mut at, 7)?;
                fields_seen = true;
                match self.lookup(index)? {
                    Lookup::Static(n, v) => field(Text::Known(n), Text::Known(v)),
                    Lookup::Dynamic(i) => {
                        let e = &self.entries[i];
                        field(text(&e.name), text(&e.value));
                    }
                    Lookup::Unknown => field(Text::Unknown, Text::Unknown),
                }
            } else if b & 0xe0 == 0x20 {
                // Dynamic table size update (§6.3): only before the block's first field.
                let size = integer(block, &mut at, 5)?;
                if fields_seen || size > self.settings_limit.max(DEFAULT_TABLE_SIZE) {
                    return Err(HpackError::BadSizeUpdate);
                }
                self.max_size = size;
                if size == 0 {
                    self.unknown_tail = false;
                }
                self.evict();
            } else {
                // Literal field (§6.2): with incremental indexing (01), without (0000) or
                // never indexed (0001).
                let indexing = b & 0x40 != 0;
                let prefix = if indexing { 6 } else { 4 };
                let index = integer(block, &mut at, prefix)?;
                fields_seen = true;
                self.scratch.clear();
                // The name: from a table, or a literal (into scratch); its length in any case
                // but an unknown entry's.
                let (name, name_len) = if index == 0 {
                    let len = string(block, &mut at, &mut self.scratch)?;
                    let at_name = if len <= MAX_STRING {
                        NameAt::Scratch
                    } else {
                        NameAt::TooLong
                    };
                    (at_name, Some(len))
                } else {
                    match self.lookup(index)? {
                        Lookup::Static(n, _) => (NameAt::Static(n), Some(n.len())),
                        Lookup::Dynamic(i) => {
                            let e = &self.entries[i];
                            let value_len = e.value.as_ref().map(|v| v.len());
                            match &e.name {
                                Some(n) => {
                                    self.scratch.extend_from_slice(n);
                                    (NameAt::Scratch, Some(n.len()))
                                }
                                // A kept value tells the name's length from the size.
                                None => (
                                    NameAt::TooLong,
                                    value_len.map(|v| e.size - ENTRY_OVERHEAD - v),
                                ),
                            }
                        }
                        Lookup::Unknown => (NameAt::Unknown, None),
                    }
                };
                let kept_name = self.scratch.len();
                let value_len = string(block, &mut at, &mut self.scratch)?;
                let (name_bytes, value) = self.scratch.split_at(kept_name);
                let name_text = match name {
                    NameAt::Static(n) => Text::Known(n),
                    NameAt::Scratch => Text::Known(name_bytes),
                    NameAt::TooLong | NameAt::Unknown => Text::Unknown,
                };
                let value_text = if value_len <= MAX_STRING {
                    Text::Known(value)
                } else {
                    Text::Unknown
                };
                field(name_text, value_text);
                if indexing {
                    match name_len {
                        Some(name_len) => {
                            let keep = |t: Text<'_>| match t {
                                Text::Known(b) => Some(Box::<[u8]>::from(b)),
                                Text::Unknown => None,
                            };
                            let entry = Entry {
                                name: keep(name_text),
                                value: keep(value_text),
                                size: name_len + value_len + ENTRY_OVERHEAD,
                            };
                            self.insert(entry);
                        }
                        // Its size is not known: nor is anything older.
                        None => self.lose_state(),
                    }
                }
            }
        }
        Ok(())
    }

    fn lookup(&self, index: usize) -> Result<Lookup, HpackError> {
        match index {
            0 => Err(HpackError::BadIndex),
            1..=61 => {
                let (n, v) = STATIC[index - 1];
                Ok(Lookup::Static(n.as_bytes(), v.as_bytes()))
            }
            _ => {
                let i = index - 62;
                if i < self.entries.len() {
                    Ok(Lookup::Dynamic(i))
                } else if self.unknown_tail {
                    Ok(Lookup::Unknown)
                } else {
                    Err(HpackError::BadIndex)
                }
            }
        }
    }

    fn insert(&mut self, entry: Entry) {
        let size = entry.size;
        if size > self.max_size {
            // §4.4: an entry larger than the table empties it and is not added.
            self.entries.clear();
            self.size = 0;
            self.unknown_tail = false;
            return;
        }
        if size > HARD_CAP {
            self.lose_state();
            return;
        }
        self.entries.push_front(entry);
        self.size += size;
        self.evict();
    }

    /// Evicts known entries past the maximum (and past the hard cap, into the unknown tail).
    fn evict(&mut self) {
        while self.size > self.max_size {
            // Known entries only go once the unknown tail went.
            self.unknown_tail = false;
            match self.entries.pop_back() {
                Some(e) => self.size -= e.size,
                None => break,
            }
        }
        while self.size > HARD_CAP {
            match self.entries.pop_back() {
                Some(e) => self.size -= e.size,
                None => break,
            }
            self.unknown_tail = true;
        }
        if self.unknown_tail && self.size + ENTRY_OVERHEAD > self.max_size {
            // No entry fits beside the known ones: the tail is gone.
            self.unknown_tail = false;
        }
    }
}

enum Lookup {
    Static(&'static [u8], &'static [u8]),
    Dynamic(usize),
    Unknown,
}

enum NameAt {
    Static(&'static [u8]),
    Scratch,
    /// Longer than [`MAX_STRING`]: its length is known, not its bytes.
    TooLong,
    Unknown,
}

/// An integer with an `n`-bit prefix (§5.1), at most 2^28 - 1 (four continuation bytes).
fn integer(block: &[u8], at: &mut usize, n: u32) -> Result<usize, HpackError> {
    let mask = (1usize << n) - 1;
    let first = *block.get(*at).ok_or(HpackError::Truncated)? as usize & mask;
    *at += 1;
    if first < mask {
        return Ok(first);
    }
    let mut value = mask;
    for shift in [0, 7, 14, 21] {
        let b = *block.get(*at).ok_or(HpackError::Truncated)? as usize;
        *at += 1;
        value += (b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(HpackError::Truncated)
}

/// A string literal (§5.2), appended to `out` if at most [`MAX_STRING`] bytes long (else
/// nothing is appended); returns its length.
fn string(block: &[u8], at: &mut usize, out: &mut Vec<u8>) -> Result<usize, HpackError> {
    let huffman = *block.get(*at).ok_or(HpackError::Truncated)? & 0x80 != 0;
    let len = integer(block, at, 7)?;
    let end = at.checked_add(len).ok_or(HpackError::Truncated)?;
    let bytes = block.get(*at..end).ok_or(HpackError::Truncated)?;
    *at = end;
    if huffman {
        let start = out.len();
        let decoded = huffman::decode(bytes, start + MAX_STRING + 1, out)
            .map_err(|_| HpackError::BadHuffman)?;
        if decoded > MAX_STRING {
            out.truncate(start);
        }
        Ok(decoded)
    } else {
        if len <= MAX_STRING {
            out.extend_from_slice(bytes);
        }
        Ok(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(d: &mut Decoder, block: &[u8]) -> Result<Vec<(String, String)>, HpackError> {
        let mut out = Vec::new();
        let show = |t: Text<'_>| match t {
            Text::Known(b) => String::from_utf8_lossy(b).into_owned(),
            Text::Unknown => "?".to_string(),
        };
        d.decode(block, |n, v| out.push((show(n), show(v))))?;
        Ok(out)
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// RFC 7541 C.3: three requests without Huffman coding, then C.4 the same with it.
    #[test]
    fn rfc7541_c3_and_c4_requests() {
        for blocks in [
            [
                "828684410f7777772e6578616d706c652e636f6d",
                "828684be58086e6f2d6361636865",
                "828785bf400a637573746f6d2d6b65790c637573746f6d2d76616c7565",
            ],
            [
                "828684418cf1e3c2e5f23a6ba0ab90f4ff",
                "828684be5886a8eb10649cbf",
                "828785bf408825a849e95ba97d7f8925a849e95bb8e8b4bf",
            ],
        ] {
            let mut d = Decoder::new(true);
            let base = [
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "www.example.com"),
            ];
            assert_eq!(decode_all(&mut d, &hex(blocks[0])).unwrap(), pairs(&base));
            let mut second = base.to_vec();
            second.push(("cache-control", "no-cache"));
            assert_eq!(decode_all(&mut d, &hex(blocks[1])).unwrap(), pairs(&second));
            assert_eq!(
                decode_all(&mut d, &hex(blocks[2])).unwrap(),
                pairs(&[
                    (":method", "GET"),
                    (":scheme", "https"),
                    (":path", "/index.html"),
                    (":authority", "www.example.com"),
                    ("custom-key", "custom-value"),
                ])
            );
            assert_eq!(d.size, 164);
        }
    }

    /// RFC 7541 C.5: responses with a 256-byte table, so that entries are evicted.
    #[test]
    fn rfc7541_c5_responses_with_eviction() {
        let mut d = Decoder::new(true);
        // The table's maximum comes down to 256 through a size update (0x3fe1 0x01 = 256).
        let first = hex(
            "3fe101 4803333032580770726976617465611d4d6f6e2c203231204f637420323031332032303a31333a323120474d546e1768747470733a2f2f7777772e6578616d706c652e636f6d",
        );
        let fields = decode_all(&mut d, &first).unwrap();
        assert_eq!(fields[0], (":status".into(), "302".into()));
        assert_eq!(d.size, 222);
        let second = hex("4803333037c1c0bf");
        let fields = decode_all(&mut d, &second).unwrap();
        assert_eq!(
            fields,
            pairs(&[
                (":status", "307"),
                ("cache-control", "private"),
                ("date", "Mon, 21 Oct 2013 20:13:21 GMT"),
                ("location", "https://www.example.com"),
            ])
        );
        assert_eq!(d.size, 222);
        assert_eq!(d.entries.len(), 4);
    }

    #[test]
    fn midstream_table_decodes_what_it_can() {
        let mut d = Decoder::new(false);
        // Static :method GET, a dynamic reference (unknown), a literal with indexing.
        let block = hex("82 be 40 0a637573746f6d2d6b6579 0c637573746f6d2d76616c7565");
        assert_eq!(
            decode_all(&mut d, &block).unwrap(),
            pairs(&[
                (":method", "GET"),
                ("?", "?"),
                ("custom-key", "custom-value")
            ])
        );
        // The inserted entry is index 62 now and known; 63 is the unknown tail.
        assert_eq!(
            decode_all(&mut d, &hex("be bf")).unwrap(),
            pairs(&[("custom-key", "custom-value"), ("?", "?")])
        );
        assert!(d.has_unknown_state());
        // A size update to zero empties the table: whole again.
        assert_eq!(decode_all(&mut d, &hex("20")).unwrap(), vec![]);
        assert!(!d.has_unknown_state());
        assert_eq!(decode_all(&mut d, &hex("be")), Err(HpackError::BadIndex));
    }

    #[test]
    fn literal_with_unknown_name_loses_older_entries() {
        let mut d = Decoder::new(false);
        decode_all(&mut d, &hex("40 0161 0162")).unwrap();
        assert_eq!(d.entries.len(), 1);
        // Name from index 63 (unknown), value "c", indexed: everything is unknown again.
        let fields = decode_all(&mut d, &hex("7f00 0163")).unwrap();
        assert_eq!(fields, pairs(&[("?", "c")]));
        assert_eq!(d.entries.len(), 0);
        assert_eq!(
            decode_all(&mut d, &hex("be")).unwrap(),
            pairs(&[("?", "?")])
        );
    }

    #[test]
    fn a_tail_too_big_to_fit_is_gone() {
        let mut d = Decoder::new(false);
        // Known entries filling the table: no unknown entry can sit beside them.
        let value = "v".repeat(4096 - 32 - 1 - 20);
        let mut block = hex("40 0161");
        block.push(0x7f);
        let mut n = value.len() - 127;
        while n >= 128 {
            block.push((n % 128) as u8 | 0x80);
            n /= 128;
        }
        block.push(n as u8);
        block.extend_from_slice(value.as_bytes());
        decode_all(&mut d, &block).unwrap();
        assert!(!d.has_unknown_state());
        assert_eq!(decode_all(&mut d, &hex("bf")), Err(HpackError::BadIndex));
        // The error lost the state.
        assert!(d.has_unknown_state());
    }

    #[test]
    fn a_string_too_long_to_keep_keeps_the_table_in_step() {
        let mut d = Decoder::new(true);
        // The table is 16 KiB: the 10,000-byte field goes in, but only its size is kept.
        d.max_size = 16 * 1024;
        d.settings_limit = 16 * 1024;
        let long = "x".repeat(10_000);
        let mut block = hex("40 05");
        block.extend_from_slice(b"x-big");
        block.push(0x7f);
        let mut n = long.len() - 127;
        while n >= 128 {
            block.push((n % 128) as u8 | 0x80);
            n /= 128;
        }
        block.push(n as u8);
        block.extend_from_slice(long.as_bytes());
        assert_eq!(
            decode_all(&mut d, &block).unwrap(),
            pairs(&[("x-big", "?")])
        );
        decode_all(&mut d, &hex("40 0161 0162")).unwrap();
        assert_eq!(d.size, 5 + 10_000 + 32 + 2 + 32);
        assert_eq!(
            decode_all(&mut d, &hex("be bf")).unwrap(),
            pairs(&[("a", "b"), ("x-big", "?")])
        );
    }

    #[test]
    fn bad_blocks_are_errors_not_panics() {
        for block in [
            "80",             // index 0
            "ff",             // integer runs off the end
            "ffffffffff7f",   // integer too long
            "40 05 61",       // string past the end
            "40 01 61 81 ff", // bad Huffman padding
            "82 20",          // size update after a field
            "3fe27f",         // size update past the limit
        ] {
            let mut d = Decoder::new(true);
            assert!(decode_all(&mut d, &hex(block)).is_err(), "{block}");
        }
    }
}

//! The HPACK Huffman code (RFC 7541 Appendix B), decoding only.
//!
//! The code is canonical (codes of one length are consecutive, in symbol order, and shorter
//! codes sort first), so a string decodes bit by bit with one table of first codes per length:
//! no tree, no allocation. The tables below are Appendix B's, as the `h2` crate (MIT) generates
//! them.

const CODES: [u32; 256] = [
    0x1ff8, 0x7fffd8, 0xfffffe2, 0xfffffe3, 0xfffffe4, 0xfffffe5, 0xfffffe6, 0xfffffe7, 0xfffffe8,
    0xffffea, 0x3ffffffc, 0xfffffe9, 0xfffffea, 0x3ffffffd, 0xfffffeb, 0xfffffec, 0xfffffed,
    0xfffffee, 0xfffffef, 0xffffff0, 0xffffff1, 0xffffff2, 0x3ffffffe, 0xffffff3, 0xffffff4,
    0xffffff5, 0xffffff6, 0xffffff7, 0xffffff8, 0xffffff9, 0xffffffa, 0xffffffb, 0x14, 0x3f8,
    0x3f9, 0xffa, 0x1ff9, 0x15, 0xf8, 0x7fa, 0x3fa, 0x3fb, 0xf9, 0x7fb, 0xfa, 0x16, 0x17, 0x18,
    0x0, 0x1, 0x2, 0x19, 0x1a, 0x1b, 0x1c, 0x1d, 0x1e, 0x1f, 0x5c, 0xfb, 0x7ffc, 0x20, 0xffb,
    0x3fc, 0x1ffa, 0x21, 0x5d, 0x5e, 0x5f, 0x60, 0x61, 0x62, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68,
    0x69, 0x6a, 0x6b, 0x6c, 0x6d, 0x6e, 0x6f, 0x70, 0x71, 0x72, 0xfc, 0x73, 0xfd, 0x1ffb, 0x7fff0,
    0x1ffc, 0x3ffc, 0x22, 0x7ffd, 0x3, 0x23, 0x4, 0x24, 0x5, 0x25, 0x26, 0x27, 0x6, 0x74, 0x75,
    0x28, 0x29, 0x2a, 0x7, 0x2b, 0x76, 0x2c, 0x8, 0x9, 0x2d, 0x77, 0x78, 0x79, 0x7a, 0x7b, 0x7ffe,
    0x7fc, 0x3ffd, 0x1ffd, 0xffffffc, 0xfffe6, 0x3fffd2, 0xfffe7, 0xfffe8, 0x3fffd3, 0x3fffd4,
    0x3fffd5, 0x7fffd9, 0x3fffd6, 0x7fffda, 0x7fffdb, 0x7fffdc, 0x7fffdd, 0x7fffde, 0xffffeb,
    0x7fffdf, 0xffffec, 0xffffed, 0x3fffd7, 0x7fffe0, 0xffffee, 0x7fffe1, 0x7fffe2, 0x7fffe3,
    0x7fffe4, 0x1fffdc, 0x3fffd8, 0x7fffe5, 0x3fffd9, 0x7fffe6, 0x7fffe7, 0xffffef, 0x3fffda,
    0x1fffdd, 0xfffe9, 0x3fffdb, 0x3fffdc, 0x7fffe8, 0x7fffe9, 0x1fffde, 0x7fffea, 0x3fffdd,
    0x3fffde, 0xfffff0, 0x1fffdf, 0x3fffdf, 0x7fffeb, 0x7fffec, 0x1fffe0, 0x1fffe1, 0x3fffe0,
    0x1fffe2, 0x7fffed, 0x3fffe1, 0x7fffee, 0x7fffef, 0xfffea, 0x3fffe2, 0x3fffe3, 0x3fffe4,
    0x7ffff0, 0x3fffe5, 0x3fffe6, 0x7ffff1, 0x3ffffe0, 0x3ffffe1, 0xfffeb, 0x7fff1, 0x3fffe7,
    0x7ffff2, 0x3fffe8, 0x1ffffec, 0x3ffffe2, 0x3ffffe3, 0x3ffffe4, 0x7ffffde, 0x7ffffdf,
    0x3ffffe5, 0xfffff1, 0x1ffffed, 0x7fff2, 0x1fffe3, 0x3ffffe6, 0x7ffffe0, 0x7ffffe1, 0x3ffffe7,
    0x7ffffe2, 0xfffff2, 0x1fffe4, 0x1fffe5, 0x3ffffe8, 0x3ffffe9, 0xffffffd, 0x7ffffe3, 0x7ffffe4,
    0x7ffffe5, 0xfffec, 0xfffff3, 0xfffed, 0x1fffe6, 0x3fffe9, 0x1fffe7, 0x1fffe8, 0x7ffff3,
    0x3fffea, 0x3fffeb, 0x1ffffee, 0x1ffffef, 0xfffff4, 0xfffff5, 0x3ffffea, 0x7ffff4, 0x3ffffeb,
    0x7ffffe6, 0x3ffffec, 0x3ffffed, 0x7ffffe7, 0x7ffffe8, 0x7ffffe9, 0x7ffffea, 0x7ffffeb,
    0xffffffe, 0x7ffffec, 0x7ffffed, 0x7ffffee, 0x7ffffef, 0x7fffff0, 0x3ffffee,
];

const LENGTHS: [u8; 256] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 30, 28,
    28, 28, 28, 28, 28, 28, 28, 28, 6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, 5, 5,
    5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10, 13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, 15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6,
    6, 5, 6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, 20, 22, 20, 20, 22, 22, 22, 23, 22,
    23, 23, 23, 23, 23, 24, 23, 24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, 22,
    21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, 21, 21, 22, 21, 23, 22, 23, 23, 20,
    22, 22, 22, 23, 22, 22, 23, 26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, 19,
    21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, 20, 24, 20, 21, 22, 21, 21, 23, 22,
    22, 25, 25, 24, 24, 26, 23, 26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26,
];

/// The end-of-string symbol's code: thirty ones. Padding is its most significant bits.
const EOS_LENGTH: u32 = 30;

/// Per code length: the smallest code of that length, how many codes have it, and where its
/// symbols start in [`Tables::symbols`].
struct Tables {
    first: [u32; 31],
    count: [u16; 31],
    offset: [u16; 31],
    /// The 256 symbols in code order.
    symbols: [u8; 256],
}

const TABLES: Tables = build();

const fn build() -> Tables {
    let mut t = Tables {
        first: [u32::MAX; 31],
        count: [0; 31],
        offset: [0; 31],
        symbols: [0; 256],
    };
    let mut s = 0;
    while s < 256 {
        let len = LENGTHS[s] as usize;
        t.count[len] += 1;
        if CODES[s] < t.first[len] {
            t.first[len] = CODES[s];
        }
        s += 1;
    }
    let mut len = 1;
    let mut at = 0u16;
    while len <= 30 {
        t.offset[len] = at;
        at += t.count[len];
        len += 1;
    }
    let mut s = 0;
    while s < 256 {
        let len = LENGTHS[s] as usize;
        let i = t.offset[len] as u32 + (CODES[s] - t.first[len]);
        t.symbols[i as usize] = s as u8;
        s += 1;
    }
    t
}

/// Why a Huffman string did not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HuffmanError {
    /// A code longer than any symbol's, or the EOS symbol inside the string.
    BadCode,
    /// More than seven bits of padding, or padding that is not the EOS prefix.
    BadPadding,
}

/// Decodes `src`, appending to `out` while it holds fewer than `limit` bytes; returns the
/// decoded length (all of it, kept or not).
pub fn decode(src: &[u8], limit: usize, out: &mut Vec<u8>) -> Result<usize, HuffmanError> {
    let mut decoded = 0usize;
    let t = &TABLES;
    let mut code: u32 = 0;
    let mut len: u32 = 0;
    // Whether every bit of the pending code is a one (a valid padding so far).
    let mut ones = true;
    for &byte in src {
        for shift in (0..8).rev() {
            let bit = u32::from(byte >> shift) & 1;
            code = (code << 1) | bit;
            len += 1;
            ones &= bit == 1;
            let l = len as usize;
            let count = u32::from(t.count[l]);
            if count > 0 && code >= t.first[l] && code - t.first[l] < count {
                if out.len() < limit {
                    out.push(t.symbols[(u32::from(t.offset[l]) + code - t.first[l]) as usize]);
                }
                decoded += 1;
                code = 0;
                len = 0;
                ones = true;
            } else if len >= EOS_LENGTH {
                return Err(HuffmanError::BadCode);
            }
        }
    }
    if len > 7 || !ones {
        return Err(HuffmanError::BadPadding);
    }
    Ok(decoded)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Encodes with the table, for the tests.
    fn encode(src: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let (mut acc, mut bits) = (0u64, 0u32);
        for &b in src {
            acc = (acc << LENGTHS[b as usize]) | u64::from(CODES[b as usize]);
            bits += u32::from(LENGTHS[b as usize]);
            while bits >= 8 {
                out.push((acc >> (bits - 8)) as u8);
                bits -= 8;
            }
        }
        if bits > 0 {
            out.push(((acc << (8 - bits)) as u8) | (0xff >> bits));
        }
        out
    }

    #[test]
    fn every_symbol_round_trips() {
        let all: Vec<u8> = (0..=255).collect();
        let mut out = Vec::new();
        assert_eq!(decode(&encode(&all), 1024, &mut out), Ok(256));
        assert_eq!(out, all);
    }

    #[test]
    fn codes_are_canonical() {
        // Codes of one length are consecutive: the decoder relies on it.
        for len in 1..=30usize {
            let mut codes: Vec<u32> = (0..256)
                .filter(|&s| LENGTHS[s] as usize == len)
                .map(|s| CODES[s])
                .collect();
            codes.sort();
            for w in codes.windows(2) {
                assert_eq!(w[1], w[0] + 1, "length {len}");
            }
        }
    }

    #[test]
    fn rfc7541_examples() {
        // C.4.1: "www.example.com".
        let src = [
            0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab, 0x90, 0xf4, 0xff,
        ];
        let mut out = Vec::new();
        assert_eq!(decode(&src, 64, &mut out), Ok(15));
        assert_eq!(out, b"www.example.com");
        // C.4.2: "no-cache".
        out.clear();
        assert_eq!(
            decode(&[0xa8, 0xeb, 0x10, 0x64, 0x9c, 0xbf], 64, &mut out),
            Ok(8)
        );
        assert_eq!(out, b"no-cache");
    }

    #[test]
    fn bad_input_is_an_error() {
        let mut out = Vec::new();
        // Padding of eight ones.
        assert_eq!(decode(&[0xff], 8, &mut out), Err(HuffmanError::BadPadding));
        // Padding with a zero ('0' is 00000, then 011 is not all ones).
        out.clear();
        assert_eq!(decode(&[0x03], 8, &mut out), Err(HuffmanError::BadPadding));
        // EOS inside the string.
        out.clear();
        assert_eq!(
            decode(&[0xff, 0xff, 0xff, 0xfc], 8, &mut out),
            Err(HuffmanError::BadCode)
        );
        out.clear();
        // Past the limit: counted, not kept.
        assert_eq!(decode(&encode(b"abcdef"), 3, &mut out), Ok(6));
        assert_eq!(out, b"abc");
        assert_eq!(decode(&[], 8, &mut out), Ok(0));
    }
}

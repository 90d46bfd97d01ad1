//! Bounded route templates from raw paths, for metric labels and span names.
//!
//! `route("/users/123/orders/9f8e7d6c-...")` is `/users/*/orders/*`: segments that look like
//! identifiers become `*`, so the number of distinct routes stays small.
//!
//! Output form: `/` followed by non-empty segments joined with `/` (empty segments, and with
//! them a trailing slash, are dropped); at most [`MAX_SEGMENTS`] segments and
//! [`MAX_ROUTE_BYTES`] bytes; whatever does not fit becomes one final `…` segment
//! (`/a/b/…`). The asterisk-form target `*` stays `*`.

/// Longest route, in bytes, `…` included.
pub const MAX_ROUTE_BYTES: usize = 128;
/// Most segments kept before the rest is collapsed to `…`.
pub const MAX_SEGMENTS: usize = 16;
/// Segments longer than this are never words.
const MAX_WORD_BYTES: usize = 64;
/// What stands for the segments that did not fit.
const ELLIPSIS: &str = "…";

/// The route template of `path` (see the module documentation).
pub fn route(path: &str) -> String {
    let mut out = String::new();
    route_into(path, &mut out);
    out
}

/// `route` into a buffer the caller reuses (cleared first): no allocation once it is big enough.
pub fn route_into(path: &str, out: &mut String) {
    out.clear();
    route_append(path, out);
}

/// `route` appended to `out`.
pub fn route_append(path: &str, out: &mut String) {
    let start = out.len();
    let end = path.find(['?', '#']).unwrap_or(path.len());
    let path = path.get(..end).unwrap_or("");
    if path == "*" {
        out.push('*');
        return;
    }
    // Room kept for a final "/…" so the bound holds whatever comes.
    let budget = MAX_ROUTE_BYTES - 1 - ELLIPSIS.len();
    for (n, segment) in path.split('/').filter(|s| !s.is_empty()).enumerate() {
        let segment = template(segment);
        if n >= MAX_SEGMENTS || out.len() - start + 1 + segment.len() > budget {
            out.push('/');
            out.push_str(ELLIPSIS);
            return;
        }
        out.push('/');
        out.push_str(&segment);
    }
    if out.len() == start {
        out.push('/');
    }
}

/// `*` for an identifier, `*.ext` for an identifier with a file extension (`123.json`),
/// else the segment itself.
fn template(segment: &str) -> std::borrow::Cow<'_, str> {
    if is_identifier(segment) {
        return "*".into();
    }
    if let Some((stem, ext)) = segment.rsplit_once('.')
        && (1..=5).contains(&ext.len())
        && ext.bytes().all(|b| b.is_ascii_alphanumeric())
        && is_identifier(stem)
    {
        return format!("*.{ext}").into();
    }
    segment.into()
}

/// Does the segment look like an identifier rather than a word of the API?
fn is_identifier(s: &str) -> bool {
    let bytes = s.as_bytes();
    if bytes.is_empty() {
        return false;
    }
    let digits = bytes.iter().filter(|b| b.is_ascii_digit()).count();
    let letters = bytes.iter().filter(|b| b.is_ascii_alphabetic()).count();
    let all_hex = bytes.iter().all(u8::is_ascii_hexdigit);
    let token_chars = bytes.iter().all(|&b| {
        b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'=' | b'+' | b'~' | b'.')
    });
    // Numbers.
    digits == bytes.len()
        // UUIDs, 8-4-4-4-12 hex digits, any case.
        || is_uuid(bytes)
        // Hashes, object ids, hex-encoded keys.
        || (bytes.len() >= 16 && all_hex)
        // Random tokens and base64(url) ids: long, with letters and digits.
        || (bytes.len() >= 20 && token_chars && digits > 0 && letters > 0)
        // Shorter ids where digits dominate (`a1b2c3d4`, `inv004512`).
        || (bytes.len() >= 8 && token_chars && letters > 0 && digits * 2 >= bytes.len())
        // Never a word: e-mail addresses, control characters, very long segments.
        || bytes.contains(&b'@')
        || bytes.iter().any(u8::is_ascii_control)
        || bytes.len() > MAX_WORD_BYTES
        // Percent-encoded bytes are user data (names, keys), not API words.
        || bytes.contains(&b'%')
}

fn is_uuid(bytes: &[u8]) -> bool {
    bytes.len() == 36
        && bytes.iter().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => *b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn examples() {
        let cases = [
            ("", "/"),
            ("/", "/"),
            ("//", "/"),
            ("*", "*"),
            ("/users/123", "/users/*"),
            ("/users/123/", "/users/*"),
            (
                "/users/123/orders/9f8e7d6c-1a2b-4c3d-8e9f-0a1b2c3d4e5f",
                "/users/*/orders/*",
            ),
            (
                "/users/123/orders/9F8E7D6C-1A2B-4C3D-8E9F-0A1B2C3D4E5F",
                "/users/*/orders/*",
            ),
            ("/api/v1/items?id=3", "/api/v1/items"),
            ("/api/v1/items#frag", "/api/v1/items"),
            ("/api/v2/items/42?x=/1/2", "/api/v2/items/*"),
            ("/healthz", "/healthz"),
            ("/index.html", "/index.html"),
            ("/static/app.3f2a1b9c8d7e6f50.js", "/static/*"),
            ("/img/8f14e45f.png", "/img/*.png"),
            ("/reports/2024.json", "/reports/*.json"),
            ("/blobs/d41d8cd98f00b204e9800998ecf8427e", "/blobs/*"),
            ("/blobs/DEADBEEFDEADBEEF", "/blobs/*"),
            ("/sessions/eyJhbGciOiJIUzI1NiJ9abc123", "/sessions/*"),
            ("/t/dGhpcyBpcyBhIHRva2VuMTIz", "/t/*"),
            ("/invoices/inv00451234", "/invoices/*"),
            ("/users/john%40example.com", "/users/*"),
            ("/users/john@example.com/avatar", "/users/*/avatar"),
            ("/oauth2/token", "/oauth2/token"),
            ("/v1/x86_64/sha256", "/v1/x86_64/sha256"),
            ("/api/users/me", "/api/users/me"),
            ("/café/menu", "/café/menu"),
            ("/a\u{1}b", "/*"),
            ("relative/path/7", "/relative/path/*"),
            ("/beef", "/beef"),
            ("/feed/cafe", "/feed/cafe"),
            (
                "/.well-known/openid-configuration",
                "/.well-known/openid-configuration",
            ),
        ];
        // One buffer through all of them, as the aggregator uses it: nothing carries over.
        let mut reused = String::from("/left/over");
        for (path, want) in cases {
            assert_eq!(route(path), want, "route({path:?})");
            route_into(path, &mut reused);
            assert_eq!(reused, want, "route_into({path:?})");
        }
    }

    #[test]
    fn bounded_in_segments() {
        let path: String = (0..40)
            .map(|i| format!("/s{}", char::from(b'a' + (i % 26) as u8)))
            .collect();
        let r = route(&path);
        assert_eq!(r.split('/').count(), MAX_SEGMENTS + 2, "{r}");
        assert!(r.ends_with("/…"), "{r}");
        assert_eq!(
            route("/a/b/c/d/e/f/g/h/i/j/k/l/m/n/o/p"),
            "/a/b/c/d/e/f/g/h/i/j/k/l/m/n/o/p"
        );
        assert_eq!(
            route("/a/b/c/d/e/f/g/h/i/j/k/l/m/n/o/p/q"),
            "/a/b/c/d/e/f/g/h/i/j/k/l/m/n/o/p/…"
        );
    }

    #[test]
    fn bounded_in_bytes() {
        let word = "abcdefghijklmnopqrstuvwxyzabcdefghijklmnopqrstuvwxyz"; // 52 letters, a word
        let path = format!("/{word}/{word}/{word}/{word}");
        let r = route(&path);
        assert!(r.len() <= MAX_ROUTE_BYTES, "{} {r}", r.len());
        assert_eq!(r, format!("/{word}/{word}/…"));
        let long = "é".repeat(60);
        let r = route(&format!("/{long}/{long}/{long}"));
        assert!(r.len() <= MAX_ROUTE_BYTES, "{} {r}", r.len());
    }

    #[test]
    fn odd_input_never_panics_and_stays_bounded() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let alphabet: Vec<char> = "/?#%.-_@~aZ09é\u{0}\u{7f}\u{10ffff} \r\n".chars().collect();
        for _ in 0..2000 {
            let len = (next(&mut state) % 300) as usize;
            let path: String = (0..len)
                .map(|_| alphabet[(next(&mut state) % alphabet.len() as u64) as usize])
                .collect();
            let r = route(&path);
            assert!(r.len() <= MAX_ROUTE_BYTES, "{path:?} -> {r:?}");
            assert!(r.starts_with('/') || r == "*", "{path:?} -> {r:?}");
            assert!(
                r.split('/').count() <= MAX_SEGMENTS + 2,
                "{path:?} -> {r:?}"
            );
        }
    }

    fn next(state: &mut u64) -> u64 {
        // xorshift64*
        *state ^= *state >> 12;
        *state ^= *state << 25;
        *state ^= *state >> 27;
        state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

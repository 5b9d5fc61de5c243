//! The `name=value` pairs of a request's `Cookie` headers (RFC 6265
//! section 5.4: pairs split by `;`, spaces and tabs around them dropped).
//!
//! Every request is read for four cookies (the Supabase session's chunks,
//! `chatgate_session`, the LibreChat binding, LibreChat's own) and has
//! chatgate's stripped before forwarding. The header is mostly one
//! kilobytes-long base64 value, so the scan jumps from `;` to `;` with
//! `memchr` over bytes: no UTF-8 check of the whole value, no char search.

use http::{header, HeaderMap};

/// One pair of a `Cookie` header. A pair without `=` has its whole text as
/// `name` (what `strip` must see) and `has_value` false (what readers skip).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pair<'a> {
    pub name: &'a [u8],
    pub value: &'a [u8],
    /// The pair as sent, without the spaces around it.
    pub whole: &'a [u8],
    pub has_value: bool,
}

/// The pairs of one `Cookie` header value; empty pieces are skipped.
pub fn pairs(header: &[u8]) -> Pairs<'_> {
    Pairs { rest: Some(header) }
}

/// The pairs of every `Cookie` header of `headers`, in order.
pub fn all(headers: &HeaderMap) -> impl Iterator<Item = Pair<'_>> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .flat_map(|value| pairs(value.as_bytes()))
}

/// The value of the first pair named `name` in `headers`.
pub fn find<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a [u8]> {
    all(headers)
        .find(|pair| pair.has_value && pair.name == name.as_bytes())
        .map(|pair| pair.value)
}

#[derive(Debug, Clone)]
pub struct Pairs<'a> {
    rest: Option<&'a [u8]>,
}

impl<'a> Iterator for Pairs<'a> {
    type Item = Pair<'a>;

    fn next(&mut self) -> Option<Pair<'a>> {
        loop {
            let rest = self.rest?;
            let piece = match memchr::memchr(b';', rest) {
                Some(end) => {
                    self.rest = Some(&rest[end + 1..]);
                    &rest[..end]
                }
                None => {
                    self.rest = None;
                    rest
                }
            };
            let whole = trim(piece);
            if whole.is_empty() {
                continue;
            }
            return Some(match memchr::memchr(b'=', whole) {
                Some(eq) => Pair {
                    name: trim(&whole[..eq]),
                    value: trim(&whole[eq + 1..]),
                    whole,
                    has_value: true,
                },
                None => Pair {
                    name: whole,
                    value: b"",
                    whole,
                    has_value: false,
                },
            });
        }
    }
}

/// Without the spaces and tabs at either end.
pub fn trim(s: &[u8]) -> &[u8] {
    let is_ws = |b: &u8| *b == b' ' || *b == b'\t';
    let start = s.iter().position(|b| !is_ws(b)).unwrap_or(s.len());
    let end = s.iter().rposition(|b| !is_ws(b)).map_or(start, |i| i + 1);
    &s[start..end]
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn names_values(header: &str) -> Vec<(String, String, bool)> {
        pairs(header.as_bytes())
            .map(|p| {
                (
                    String::from_utf8(p.name.to_vec()).unwrap(),
                    String::from_utf8(p.value.to_vec()).unwrap(),
                    p.has_value,
                )
            })
            .collect()
    }

    #[test]
    fn pairs_are_split_at_semicolons_and_trimmed_of_spaces_and_tabs() {
        assert_eq!(
            names_values(" a=1;b = 2 ;\t;c=;=d; e ;f=x=y"),
            [
                ("a".into(), "1".into(), true),
                ("b".into(), "2".into(), true),
                ("c".into(), String::new(), true),
                (String::new(), "d".into(), true),
                ("e".into(), String::new(), false),
                ("f".into(), "x=y".into(), true),
            ]
        );
        assert!(pairs(b"").next().is_none());
        assert!(pairs(b" ; ;").next().is_none());
    }

    #[test]
    fn the_whole_pair_keeps_inner_spaces() {
        let whole: Vec<&[u8]> = pairs(b"a = 1 ;  b=2").map(|p| p.whole).collect();
        assert_eq!(whole, [&b"a = 1"[..], b"b=2"]);
    }

    #[test]
    fn find_reads_every_cookie_header_and_takes_the_first_match() {
        let mut headers = HeaderMap::new();
        headers.append(header::COOKIE, HeaderValue::from_static("x=1; flag"));
        headers.append(header::COOKIE, HeaderValue::from_static("y=2; x=3"));
        assert_eq!(find(&headers, "x"), Some(&b"1"[..]));
        assert_eq!(find(&headers, "y"), Some(&b"2"[..]));
        // A pair without `=` is no cookie to read.
        assert_eq!(find(&headers, "flag"), None);
        assert_eq!(all(&headers).count(), 4);
    }

    #[test]
    fn bytes_beyond_ascii_are_kept_not_refused() {
        let value = HeaderValue::from_bytes(b"a=\xe2\x82\xac; b=2").unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, value);
        assert_eq!(find(&headers, "a"), Some(&b"\xe2\x82\xac"[..]));
        assert_eq!(find(&headers, "b"), Some(&b"2"[..]));
    }
}

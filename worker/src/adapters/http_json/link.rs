//! The `Link` header (RFC 8288 §3): which URL is the `next` page. A header holds several
//! link-values separated by commas; a value is `<URI-Reference>` followed by `;`-separated
//! parameters whose values are tokens or quoted strings (which may hold commas, semicolons and
//! escaped quotes), and `rel` is a space-separated list of relation types compared without
//! regard to case. A link-value that cannot be read is skipped, not the whole header.

/// One link-value: its target as written (relative or absolute) and its relation types,
/// lower-cased.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub target: String,
    pub rels: Vec<String>,
}

/// The target of the first link with relation type `next` among `values` (every `Link`
/// header of one answer, in order), as written.
pub fn next_target<'a>(values: impl IntoIterator<Item = &'a str>) -> Option<String> {
    values
        .into_iter()
        .flat_map(parse)
        .find(|link| link.rels.iter().any(|rel| rel == "next"))
        .map(|link| link.target)
}

/// Every readable link-value of one `Link` header value.
pub fn parse(header: &str) -> Vec<Link> {
    let mut links = Vec::new();
    let mut p = Cursor {
        rest: header.as_bytes(),
    };
    loop {
        p.skip(|b| b == b',' || is_ows(b));
        if p.rest.is_empty() {
            return links;
        }
        match link_value(&mut p) {
            Some(link) => links.push(link),
            // Skip to the next link-value: past the next comma that is not inside a quoted
            // string or a `<…>`.
            None => p.skip_value(),
        }
    }
}

struct Cursor<'a> {
    rest: &'a [u8],
}

impl Cursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.rest.first().copied()
    }

    fn bump(&mut self) -> Option<u8> {
        let (first, rest) = self.rest.split_first()?;
        self.rest = rest;
        Some(*first)
    }

    fn skip(&mut self, mut what: impl FnMut(u8) -> bool) {
        while self.peek().is_some_and(&mut what) {
            self.bump();
        }
    }

    fn take(&mut self, what: impl Fn(u8) -> bool) -> String {
        let end = self
            .rest
            .iter()
            .position(|b| !what(*b))
            .unwrap_or(self.rest.len());
        let (taken, rest) = self.rest.split_at(end);
        self.rest = rest;
        String::from_utf8_lossy(taken).into_owned()
    }

    fn skip_value(&mut self) {
        let (mut quoted, mut angle) = (false, false);
        while let Some(b) = self.bump() {
            match b {
                b'\\' if quoted => {
                    self.bump();
                }
                b'"' if !angle => quoted = !quoted,
                b'<' if !quoted => angle = true,
                b'>' if !quoted => angle = false,
                b',' if !quoted && !angle => return,
                _ => {}
            }
        }
    }
}

fn is_ows(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// RFC 9110 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn link_value(p: &mut Cursor<'_>) -> Option<Link> {
    if p.bump()? != b'<' {
        return None;
    }
    let target = p.take(|b| b != b'>');
    if p.bump()? != b'>' {
        return None;
    }
    let mut rels: Option<Vec<String>> = None;
    loop {
        p.skip(is_ows);
        match p.peek() {
            None | Some(b',') => break,
            Some(b';') => {
                p.bump();
            }
            Some(_) => return None,
        }
        p.skip(is_ows);
        let name = p.take(is_tchar).to_ascii_lowercase();
        if name.is_empty() {
            // `<x>;` at the end, or `;;`: nothing to read here.
            continue;
        }
        p.skip(is_ows);
        let value = if p.peek() == Some(b'=') {
            p.bump();
            p.skip(is_ows);
            if p.peek() == Some(b'"') {
                quoted_string(p)?
            } else {
                p.take(is_tchar)
            }
        } else {
            String::new()
        };
        // Only the first `rel` counts (RFC 8288 §3.3).
        if name == "rel" && rels.is_none() {
            rels = Some(
                value
                    .split_ascii_whitespace()
                    .map(str::to_ascii_lowercase)
                    .collect(),
            );
        }
    }
    Some(Link {
        target,
        rels: rels.unwrap_or_default(),
    })
}

fn quoted_string(p: &mut Cursor<'_>) -> Option<String> {
    p.bump(); // the opening quote
    let mut out = Vec::new();
    loop {
        match p.bump()? {
            b'"' => return Some(String::from_utf8_lossy(&out).into_owned()),
            b'\\' => out.push(p.bump()?),
            b => out.push(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_next_among_several_link_values() {
        let header = r#"<https://api.example/items?page=1>; rel="first", <https://api.example/items?page=3>; rel="next", <https://api.example/items?page=9>; rel="last""#;
        assert_eq!(
            next_target([header]).as_deref(),
            Some("https://api.example/items?page=3")
        );
        assert_eq!(parse(header).len(), 3);
    }

    #[test]
    fn rel_lists_tokens_case_and_spacing() {
        assert_eq!(
            next_target([r#"</p/2>;rel="prev next""#]).as_deref(),
            Some("/p/2")
        );
        assert_eq!(
            next_target(["</p/2> ; REL = Next"]).as_deref(),
            Some("/p/2")
        );
        assert_eq!(
            next_target(["</p/2>;\trel=next;title=x"]).as_deref(),
            Some("/p/2")
        );
        // `next` must be a whole relation type, not part of one.
        assert_eq!(next_target([r#"</p/2>; rel="nextpage""#]), None);
        assert_eq!(next_target([r#"</p/2>; rel="prev""#]), None);
        assert_eq!(next_target(["</p/2>"]), None);
        assert_eq!(next_target([""]), None);
    }

    #[test]
    fn quoted_strings_may_hold_commas_semicolons_and_escapes() {
        let header = r#"</a>; title="one, two; \"three\""; rel="prev", </b>; rel="next""#;
        let links = parse(header);
        assert_eq!(
            links,
            [
                Link {
                    target: "/a".into(),
                    rels: vec!["prev".into()]
                },
                Link {
                    target: "/b".into(),
                    rels: vec!["next".into()]
                },
            ]
        );
        // Commas inside the URI are part of it.
        assert_eq!(
            next_target([r#"</items?ids=1,2,3>; rel="next""#]).as_deref(),
            Some("/items?ids=1,2,3")
        );
    }

    #[test]
    fn only_the_first_rel_counts() {
        assert_eq!(next_target([r#"</a>; rel="prev"; rel="next""#]), None);
    }

    #[test]
    fn a_broken_link_value_is_skipped_not_the_header() {
        assert_eq!(
            next_target([r#"garbage; rel="next", </b>; rel="next""#]).as_deref(),
            Some("/b")
        );
        assert_eq!(
            next_target([r#"</a> junk; rel="next", </b>; rel=next"#]).as_deref(),
            Some("/b")
        );
        assert_eq!(next_target([r#"</a; rel="next""#]), None);
        assert_eq!(next_target([r#"</a>; rel="next"#]), None);
    }

    #[test]
    fn several_headers_are_one_list() {
        assert_eq!(
            next_target([r#"</a>; rel="prev""#, r#"</b>; rel="next""#]).as_deref(),
            Some("/b")
        );
    }
}

//! Bounds a template body must stay within before tera's parser sees it.
//!
//! tera 1 parses with pest, which recurses once per nesting level and backtracks through function
//! call arguments. Measured on tera 1.20 (release build): each level of calls nested in call
//! arguments multiplies parse time by about 4 (`f(a=f(a=…))` eight deep: 0.4 s; one 4 KiB tag
//! three deep: 0.6 s), and some deep inputs overflow the stack (1000 nested `{% if %}`, or a
//! `{{ a + a + … }}` chain of 100 000 terms, on a 2 MiB thread). A stack overflow aborts the
//! process, so an unchecked body could take a node down with one write, and every replica again
//! when it applies the entry. These limits are far beyond what boot templates use, are checked by
//! a linear scan, and are deterministic (no timeouts), so every replica agrees on the verdict.
//!
//! Within these limits the worst cases measured (dev profile with dependencies at opt-level 1, as
//! this workspace builds tests) are about 0.6 s to check a full `MAX_TEMPLATE_LEN` body made only
//! of 2 KiB tags with nested calls, and under 256 KiB of stack for the deepest nesting allowed.
//!
//! The scan is deliberately conservative: it only over-counts (an operator inside a construct tera
//! would reject anyway still counts), so anything it passes is within the bounds.

/// Longest `{{ … }}` or `{% … %}` tag. Parse cost grows faster than linearly with tag length.
pub const MAX_TAG_LEN: usize = 2048;
/// Deepest nesting of `{% if/for/block/macro/filter %}` blocks.
pub const MAX_BLOCK_NESTING: usize = 16;
/// Deepest nesting of `(` and `[` within one tag.
pub const MAX_BRACKET_NESTING: usize = 16;
/// Deepest nesting of function/filter/macro calls and array literals inside each other's
/// arguments within one tag (`f(a=g(b=1))` is 2): the construct pest backtracks through.
pub const MAX_CALL_NESTING: usize = 2;
/// Most binary/unary operators in one tag (each one nests the expression tree one level deeper).
pub const MAX_TAG_OPERATORS: usize = 64;

/// Words after which `(` groups and `[` starts an array literal, rather than calling or indexing.
const KEYWORDS: &[&str] = &[
    "and",
    "or",
    "not",
    "in",
    "is",
    "if",
    "elif",
    "for",
    "set",
    "set_global",
    "return",
];
/// Words that are operators.
const OPERATOR_WORDS: &[&str] = &["and", "or", "not", "in", "is"];
const BLOCK_OPENERS: &[&str] = &["if", "for", "block", "macro", "filter"];
const BLOCK_CLOSERS: &[&str] = &["endif", "endfor", "endblock", "endmacro", "endfilter"];

/// A limit that was exceeded: byte offset into the body, and why.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Exceeded {
    pub offset: usize,
    pub message: String,
}

fn exceeded(offset: usize, message: String) -> Exceeded {
    Exceeded { offset, message }
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

fn find(hay: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    hay.get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|i| i + from)
}

/// The first word of a statement tag starting at `content` (after `{%`), skipping `-` and spaces.
fn first_word(b: &[u8], content: usize) -> &str {
    let mut i = content;
    while i < b.len() && (b[i] == b'-' || b[i].is_ascii_whitespace()) {
        i += 1;
    }
    let start = i;
    while i < b.len() && is_ident(b[i]) {
        i += 1;
    }
    // Identifier bytes are ASCII, so this slice is on char boundaries.
    std::str::from_utf8(&b[start..i]).unwrap_or_default()
}

#[derive(Clone, Copy, PartialEq)]
enum Bracket {
    Group,
    Index,
    Call,
    Array,
}

/// Scans one tag's content from `content` to its `close` sequence (outside string literals) or
/// the end of the body, enforcing the per-tag limits. Returns the index just past the tag.
fn scan_tag(b: &[u8], tag_start: usize, content: usize, close: &[u8]) -> Result<usize, Exceeded> {
    let mut stack: Vec<Bracket> = Vec::new();
    let mut operators = 0;
    let mut cut_short = false;
    let mut i = content;
    let end = loop {
        if i >= b.len() {
            break None;
        }
        if b[i..].starts_with(close) {
            break Some(i);
        }
        if i - tag_start > MAX_TAG_LEN {
            // Stop early: the verdict is known, and the scan stays linear in the limit.
            cut_short = true;
            break None;
        }
        let c = b[i];
        match c {
            // tera 1 strings have no escapes: they end at the next matching quote.
            b'"' | b'\'' | b'`' => {
                i = b[i + 1..]
                    .iter()
                    .position(|&x| x == c)
                    .map_or(b.len(), |p| i + 1 + p + 1);
                continue;
            }
            b'(' | b'[' => {
                let mut j = i;
                while j > content && b[j - 1].is_ascii_whitespace() {
                    j -= 1;
                }
                let word_end = j;
                while j > content && is_ident(b[j - 1]) {
                    j -= 1;
                }
                let word = std::str::from_utf8(&b[j..word_end]).unwrap_or_default();
                let after_value = !word.is_empty() && !KEYWORDS.contains(&word);
                let kind = match (c, after_value) {
                    (b'(', true) => Bracket::Call,
                    (b'(', false) => Bracket::Group,
                    (_, true) => Bracket::Index,
                    _ if word_end > content && matches!(b[word_end - 1], b']' | b')') => {
                        Bracket::Index
                    }
                    _ => Bracket::Array,
                };
                stack.push(kind);
                if stack.len() > MAX_BRACKET_NESTING {
                    return Err(exceeded(
                        i,
                        format!("brackets nested deeper than {MAX_BRACKET_NESTING}"),
                    ));
                }
                let calls = stack
                    .iter()
                    .filter(|k| matches!(k, Bracket::Call | Bracket::Array))
                    .count();
                if calls > MAX_CALL_NESTING {
                    return Err(exceeded(
                        i,
                        format!(
                            "calls and array literals nested deeper than {MAX_CALL_NESTING} \
                             (assign an inner value with {{% set %}} first)"
                        ),
                    ));
                }
            }
            b')' | b']' => {
                stack.pop();
            }
            b'=' | b'!' | b'<' | b'>' if b.get(i + 1) == Some(&b'=') => {
                operators += 1;
                i += 1;
            }
            b'+' | b'-' | b'*' | b'/' | b'%' | b'<' | b'>' => operators += 1,
            _ if is_ident(c) => {
                let start = i;
                while i < b.len() && is_ident(b[i]) {
                    i += 1;
                }
                let word = std::str::from_utf8(&b[start..i]).unwrap_or_default();
                if OPERATOR_WORDS.contains(&word) {
                    operators += 1;
                }
                if operators > MAX_TAG_OPERATORS {
                    return Err(exceeded(
                        start,
                        format!("more than {MAX_TAG_OPERATORS} operators in one tag"),
                    ));
                }
                continue;
            }
            _ => {}
        }
        if operators > MAX_TAG_OPERATORS {
            return Err(exceeded(
                i,
                format!("more than {MAX_TAG_OPERATORS} operators in one tag"),
            ));
        }
        i += 1;
    };
    let tag_end = end.map_or(b.len(), |e| e + close.len());
    if tag_end - tag_start > MAX_TAG_LEN {
        let hint = if end.is_none() && !cut_short {
            " (is it closed?)"
        } else {
            ""
        };
        return Err(exceeded(
            tag_start,
            format!("tag is longer than {MAX_TAG_LEN} bytes{hint}"),
        ));
    }
    // An unclosed short tag is a syntax error that tera reports with its position.
    Ok(tag_end)
}

/// Checks `body` against every limit above; the first one exceeded is reported.
pub(crate) fn check_limits(body: &str) -> Result<(), Exceeded> {
    let b = body.as_bytes();
    let mut blocks = 0usize;
    let mut i = 0;
    while let Some(start) = find(b, i, b"{") {
        match b.get(start + 1) {
            Some(b'#') => {
                // Comments are skipped by tera's grammar without recursion.
                i = find(b, start + 2, b"#}").map_or(b.len(), |e| e + 2);
            }
            Some(b'{') => i = scan_tag(b, start, start + 2, b"}}")?,
            Some(b'%') => {
                let word = first_word(b, start + 2);
                i = scan_tag(b, start, start + 2, b"%}")?;
                if word == "raw" {
                    // Raw content is text to tera: skip to the `{% endraw %}` tag.
                    let mut j = i;
                    i = loop {
                        match find(b, j, b"{%") {
                            Some(s) if first_word(b, s + 2) == "endraw" => {
                                break find(b, s + 2, b"%}").map_or(b.len(), |e| e + 2)
                            }
                            Some(s) => j = s + 2,
                            None => break b.len(),
                        }
                    };
                } else if BLOCK_OPENERS.contains(&word) {
                    blocks += 1;
                    if blocks > MAX_BLOCK_NESTING {
                        return Err(exceeded(
                            start,
                            format!("blocks nested deeper than {MAX_BLOCK_NESTING}"),
                        ));
                    }
                } else if BLOCK_CLOSERS.contains(&word) {
                    blocks = blocks.saturating_sub(1);
                }
            }
            _ => i = start + 1,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One check: `None` for within limits, else the expected offset and message fragment.
    fn check(body: &str, expected: Option<(usize, &str)>) {
        match (check_limits(body), expected) {
            (Ok(()), None) => {}
            (Err(e), Some((offset, fragment))) => {
                assert_eq!(e.offset, offset, "{body:?}: {}", e.message);
                assert!(e.message.contains(fragment), "{}", e.message);
            }
            (got, want) => panic!("{body:?}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn ordinary_templates_are_within_limits() {
        check(
            "#!ipxe\nkernel {{ env.kernel }} {{ boot_params }}\nboot",
            None,
        );
        check(
            "{% for d in machine.disks | sort(attribute=\"name\") %}{{ d.name }}{% endfor %}",
            None,
        );
        check("{{ x | default(value=param(name=\"console\")) }}", None);
        check("{% if not (a and (b or (c and (d)))) %}y{% endif %}", None);
        check("{{ machine.disks[0].parts[1] }}{% set l = [1, 2] %}", None);
        check("{{ \"((((((((((((((((((\" }}", None);
        check("{# {{ f(a=f(a=f(a=1))) }} #}", None);
        check("{% raw %}{{ f(a=f(a=f(a=1))) }}{% endraw %}{{ ok }}", None);
        check("{ not a tag } {{ a }}", None);
    }

    #[test]
    fn limits_are_enforced_with_positions() {
        check(
            "ab{{ f(a=g(b=h(c=1))) }}",
            Some((14, "calls and array literals")),
        );
        check("{{ f(a=[g(b=1)]) }}", Some((9, "calls and array literals")));
        let deep = format!("{{{{ {}a{} }}}}", "(".repeat(17), ")".repeat(17));
        check(&deep, Some((19, "brackets nested")));
        let ifs = format!("{}{}", "{% if a %}".repeat(17), "{% endif %}".repeat(17));
        check(&ifs, Some((160, "blocks nested")));
        let ifs = format!("{}{}", "{% if a %}".repeat(16), "{% endif %}".repeat(16));
        check(&ifs, None);
        let siblings = "{% if a %}{% endif %}".repeat(100);
        check(&siblings, None);
        let ops = format!("{{{{ a{} }}}}", " + a".repeat(65));
        check(&ops, Some((261, "operators")));
        let words = format!("{{% if a{} %}}{{% endif %}}", " and a".repeat(65));
        check(&words, Some((392, "operators")));
        let long = format!("{{{{ \"{}\" }}}}", "x".repeat(MAX_TAG_LEN));
        check(&long, Some((0, "longer than")));
        let just_fits = format!("{{{{ \"{}\" }}}}", "x".repeat(MAX_TAG_LEN - 8));
        check(&just_fits, None);
        let unclosed = format!("x {{{{ \"{}", "a ".repeat(MAX_TAG_LEN));
        check(&unclosed, Some((2, "is it closed")));
        let long_expr = format!("{{{{ a{} }}}}", " ~ a".repeat(MAX_TAG_LEN));
        check(&long_expr, Some((0, "longer than")));
    }
}

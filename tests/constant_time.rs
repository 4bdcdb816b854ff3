//! MAC tags and API key hashes are compared in constant time (RELIABILITY.md, "Claims
//! without a test yet"). A source scan, not a timing measurement:
//!
//! - the constant-time call sites exist where expected: `verify_slice(&tag)` in
//!   `verify_marker` and `verify_fbl` (src/api/copies.rs), `verify_truncated_left(tag)`
//!   in `verify` (src/tracking/token.rs), `same(&k.key_sha256.0, &hash)` in `key_of`
//!   (src/rest/auth.rs), `same` itself folding XORs without an early exit;
//! - HMACs are built only in those two files and `key_sha256` is read only in
//!   src/rest/auth.rs (and declared in src/config/api.rs): a new site fails here until it
//!   is reviewed and listed;
//! - no `verify*` function of those files computes a tag itself (`finalize`) to compare;
//! - nowhere in src/ (test modules left out) is an operand of `==` / `!=` a tag, MAC,
//!   hash, digest, secret or signature.

use std::path::{Path, PathBuf};

const SRC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src");

/// (file, call, how many times in its non-test code, in which function).
const CONSTANT_TIME_SITES: &[(&str, &str, usize, &str)] = &[
    ("api/copies.rs", ".verify_slice(&tag)", 1, "verify_marker"),
    ("api/copies.rs", ".verify_slice(&tag)", 1, "verify_fbl"),
    (
        "tracking/token.rs",
        ".verify_truncated_left(tag)",
        1,
        "verify",
    ),
    ("rest/auth.rs", "same(&k.key_sha256.0, &hash)", 1, "key_of"),
];

/// The files that may build an HMAC.
const MAC_FILES: &[&str] = &["api/copies.rs", "tracking/token.rs"];
/// The files that may name `key_sha256` (the comparison, the declaration; main.rs
/// prints a new key's hash line for the operator, in a string).
const KEY_HASH_FILES: &[&str] = &["config/api.rs", "rest/auth.rs"];

/// Identifiers that, in an operand of `==` or `!=`, mean a secret-dependent value is
/// compared with an early exit.
const SECRET_WORDS: &[&str] = &[
    "tag",
    "tags",
    "mac",
    "macs",
    "hmac",
    "hash",
    "hashes",
    "key_sha256",
    "KeyHash",
    "digest",
    "finalize",
    "into_bytes",
    "signature",
    "secret",
    "secrets",
    "expected_tag",
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code with comments removed and string/char literals blanked (`""`, `' '`), so
/// that only code is scanned.
fn strip(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if c == b'/' && b.get(i + 1) == Some(&b'*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                    depth += 1;
                    i += 2;
                } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    if b[i] == b'\n' {
                        out.push('\n');
                    }
                    i += 1;
                }
            }
        } else if c == b'r'
            && (b.get(i + 1) == Some(&b'"')
                || (b.get(i + 1) == Some(&b'#') && {
                    let mut j = i + 1;
                    while b.get(j) == Some(&b'#') {
                        j += 1;
                    }
                    b.get(j) == Some(&b'"')
                }))
            && !(i > 0 && (b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_'))
        {
            // Raw string: r"..." or r#"..."#.
            let mut j = i + 1;
            let mut hashes = 0;
            while b[j] == b'#' {
                hashes += 1;
                j += 1;
            }
            j += 1;
            loop {
                if j >= b.len() {
                    break;
                }
                if b[j] == b'"'
                    && b[j + 1..]
                        .iter()
                        .take(hashes)
                        .filter(|&&h| h == b'#')
                        .count()
                        == hashes
                {
                    j += 1 + hashes;
                    break;
                }
                if b[j] == b'\n' {
                    out.push('\n');
                }
                j += 1;
            }
            out.push_str("\"\"");
            i = j;
        } else if c == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' {
                    i += 1;
                }
                if i < b.len() && b[i] == b'\n' {
                    out.push('\n');
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
        } else if c == b'\'' {
            // A char literal ('x', '\n', '\u{..}') or a lifetime ('a).
            let end = if b.get(i + 1) == Some(&b'\\') {
                b[i + 2..]
                    .iter()
                    .position(|&x| x == b'\'')
                    .map(|p| i + 2 + p)
            } else {
                // One (possibly multi-byte) character, then the quote.
                let ch = src[i + 1..].chars().next().map_or(1, char::len_utf8);
                (b.get(i + 1 + ch) == Some(&b'\'')).then_some(i + 1 + ch)
            };
            match end {
                Some(end) => {
                    out.push_str("' '");
                    i = end + 1;
                }
                None => {
                    out.push('\'');
                    i += 1;
                }
            }
        } else {
            let ch = src[i..].chars().next().unwrap();
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    out
}

/// The code before the unit tests (`#[cfg(test)] mod tests`).
fn non_test(code: &str) -> &str {
    let mut at = 0;
    while let Some(p) = code[at..].find("#[cfg(test)]") {
        let start = at + p;
        if code[start + "#[cfg(test)]".len()..]
            .trim_start()
            .starts_with("mod ")
        {
            return &code[..start];
        }
        at = start + 1;
    }
    code
}

/// The identifiers of an expression, module paths (`a::b::`) left out.
fn identifiers(expr: &str) -> Vec<&str> {
    let mut words = Vec::new();
    let b = expr.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i].is_ascii_alphabetic() || b[i] == b'_' {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
            if !expr[i..].starts_with("::") {
                words.push(&expr[start..i]);
            }
        } else {
            i += 1;
        }
    }
    words
}

/// Every `==` / `!=` in `code` with its two operands (bracket-aware, up to the nearest
/// `,` `;` `{` `}` `&&` `||` `=>` `=` or an unmatched bracket).
fn comparisons(code: &str) -> Vec<(usize, String, String)> {
    let b = code.as_bytes();
    let mut found = Vec::new();
    let mut i = 1;
    while i + 1 < b.len() {
        let op = (b[i] == b'=' || b[i] == b'!') && b[i + 1] == b'=';
        let part_of_longer = matches!(b[i - 1], b'=' | b'<' | b'>' | b'!')
            || b.get(i + 2) == Some(&b'=')
            || (b[i] == b'=' && b[i - 1] == b'=');
        if !op || part_of_longer {
            i += 1;
            continue;
        }
        // Left operand.
        let mut depth = 0i32;
        let mut l = i;
        while l > 0 {
            let c = b[l - 1];
            match c {
                b')' | b']' => depth += 1,
                b'(' | b'[' if depth == 0 => break,
                b'(' | b'[' => depth -= 1,
                b',' | b';' | b'{' | b'}' if depth == 0 => break,
                b'&' | b'|' if depth == 0 && l >= 2 && b[l - 2] == c => break,
                b'=' if depth == 0 => break,
                b'>' if depth == 0 && l >= 2 && b[l - 2] == b'=' => break,
                _ => {}
            }
            l -= 1;
        }
        // Right operand.
        let mut depth = 0i32;
        let mut r = i + 2;
        while r < b.len() {
            let c = b[r];
            match c {
                b'(' | b'[' => depth += 1,
                b')' | b']' if depth == 0 => break,
                b')' | b']' => depth -= 1,
                b',' | b';' | b'{' | b'}' if depth == 0 => break,
                b'&' | b'|' if depth == 0 && b.get(r + 1) == Some(&c) => break,
                b'=' if depth == 0 && b.get(r + 1) == Some(&b'>') => break,
                _ => {}
            }
            r += 1;
        }
        let line = code[..i].matches('\n').count() + 1;
        let mut left = code[l..i].trim();
        while let Some(rest) = ["if ", "while ", "return ", "match ", "else "]
            .iter()
            .find_map(|k| left.strip_prefix(k))
        {
            left = rest.trim_start();
        }
        found.push((line, left.to_owned(), code[i + 2..r].trim().to_owned()));
        i += 2;
    }
    found
}

/// The comparisons of `code` with a secret-dependent operand.
fn secret_comparisons(code: &str) -> Vec<(usize, String, String)> {
    comparisons(code)
        .into_iter()
        .filter(|(_, left, right)| {
            identifiers(left)
                .into_iter()
                .chain(identifiers(right))
                .any(|w| SECRET_WORDS.contains(&w))
        })
        .collect()
}

/// The body of `fn name` in `code` (its first definition).
fn body<'a>(code: &'a str, name: &str) -> &'a str {
    let head = code
        .find(&format!("fn {name}("))
        .or_else(|| code.find(&format!("fn {name}<")))
        .unwrap_or_else(|| panic!("fn {name} not found"));
    let open = head + code[head..].find('{').unwrap();
    let mut depth = 0;
    for (at, c) in code[open..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return &code[open..=open + at];
                }
            }
            _ => {}
        }
    }
    panic!("fn {name} has no end");
}

fn source(rel: &str) -> String {
    let raw = std::fs::read_to_string(Path::new(SRC).join(rel))
        .unwrap_or_else(|e| panic!("src/{rel}: {e}"));
    non_test(&strip(&raw)).to_owned()
}

/// The scanner itself flags what it must and passes what it must (it cannot pass by
/// seeing nothing).
#[test]
fn the_scanner_tells_a_tag_comparison_from_others() {
    let bad = [
        "if tag == expected { return true; }",
        "let ok = mac.finalize().into_bytes() != *sig;",
        "keys.iter().any(|k| k.key_sha256 == KeyHash(hash))",
        "assert!(digest(&key) == stored.0)",
        "match x { _ if &computed[..16] == tag => 1, _ => 0 }",
    ];
    for code in bad {
        assert_eq!(secret_comparisons(&strip(code)).len(), 1, "{code}");
    }
    let fine = [
        "d.kind == crate::tracking::token::Kind::Unsubscribe",
        "if hex.len() != 64 { return None; }",
        "let s = \"tag == x\"; // hash != y",
        "a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0",
        "x <= tag && tag >= y",
    ];
    for code in fine {
        assert!(secret_comparisons(&strip(code)).is_empty(), "{code}");
    }
    assert_eq!(
        comparisons(&strip("if a == b && c != d(e, f) { }")),
        [
            (1, "a".into(), "b".into()),
            (1, "c".into(), "d(e, f)".into())
        ]
    );
}

#[test]
fn macs_and_key_hashes_are_compared_in_constant_time() {
    // 1. The constant-time call sites, where expected.
    for (file, call, count, function) in CONSTANT_TIME_SITES {
        let code = source(file);
        let in_function = body(&code, function);
        assert_eq!(
            in_function.matches(call).count(),
            *count,
            "src/{file}: `{call}` in fn {function}"
        );
    }
    let auth = source("rest/auth.rs");
    assert_eq!(auth.matches("same(").count(), 2, "fn same and its one call");
    let same = body(&auth, "same");
    assert!(
        same.contains(".fold(0u8") && same.contains("(x ^ y)") && same.contains(") == 0"),
        "same() must fold XORs over every byte: {same}"
    );
    assert_eq!(same.matches("==").count(), 1, "{same}");
    assert!(!same.contains("!=") && !same.contains("return"), "{same}");
    // Every configured key is compared, the match not ending the loop.
    let key_of = body(&auth, "key_of");
    assert!(key_of.contains(".fold(None"), "{key_of}");
    assert!(
        !key_of.contains(".find(") && !key_of.contains(".any(") && !key_of.contains(".position("),
        "{key_of}"
    );

    // 2. Where MACs are built and key hashes read.
    let mut files = Vec::new();
    rust_files(Path::new(SRC), &mut files);
    assert!(files.len() > 40, "{} files under src/", files.len());
    let mut mac_files = Vec::new();
    let mut key_hash_files = Vec::new();
    let mut compared = 0;
    let mut flagged = Vec::new();
    for path in &files {
        let rel = path
            .strip_prefix(SRC)
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/");
        let code = source(&rel);
        if code.contains("Hmac<") || code.contains("hmac::") {
            mac_files.push(rel.clone());
        }
        if identifiers(&code).contains(&"key_sha256") {
            key_hash_files.push(rel.clone());
        }
        compared += comparisons(&code).len();
        flagged.extend(
            secret_comparisons(&code)
                .into_iter()
                .map(|(line, l, r)| format!("src/{rel}:{line}: `{l}` vs `{r}`")),
        );
    }
    mac_files.sort();
    key_hash_files.sort();
    assert_eq!(mac_files, MAC_FILES, "files that build an HMAC");
    assert_eq!(key_hash_files, KEY_HASH_FILES, "files that read key_sha256");
    // The scan saw the code's comparisons (hundreds), not nothing.
    assert!(compared > 200, "only {compared} comparisons seen");

    // 3. No verify function recomputes a tag to compare it itself.
    for (file, functions) in [
        ("api/copies.rs", &["verify_marker", "verify_fbl"][..]),
        ("tracking/token.rs", &["verify"][..]),
    ] {
        let code = source(file);
        for function in functions {
            let body = body(&code, function);
            assert!(
                !body.contains("finalize"),
                "src/{file}: fn {function} computes a tag: {body}"
            );
        }
    }

    // 4. No tag, MAC, hash or secret compared with == / !=.
    assert!(
        flagged.is_empty(),
        "compared with an early exit:\n{}",
        flagged.join("\n")
    );
}

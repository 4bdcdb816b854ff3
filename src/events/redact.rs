//! SparkPost's `reason`: the reply with the personal parts hidden (pure).

/// SparkPost's `reason`: the reply with every address written as `...@...` and every
/// IPv4 address as `a.b.c.d`.
pub fn redact(text: &str) -> String {
    redact_ips(&redact_addresses(text))
}

/// The reply with every e-mail address written as `...@...`.
pub fn redact_addresses(text: &str) -> String {
    text.split_inclusive(|c: char| c.is_whitespace() || "<>()[],;:\"'".contains(c))
        .map(|word| {
            let end = word
                .find(|c: char| c.is_whitespace() || "<>()[],;:\"'".contains(c))
                .unwrap_or(word.len());
            let (token, rest) = word.split_at(end);
            match token.split_once('@') {
                Some((l, d)) if !l.is_empty() && d.contains('.') => format!("...@...{rest}"),
                _ => word.to_owned(),
            }
        })
        .collect()
}

/// Every run of digits and dots that is an IPv4 address, as `a.b.c.d`. Other numbers
/// (status codes `5.1.1`, versions) stay.
fn redact_ips(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find(|c: char| c.is_ascii_digit()) {
        let (before, from) = rest.split_at(start);
        out.push_str(before);
        let end = from
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(from.len());
        let run = &from[..end];
        // A run glued to a letter or digit group before it (`x1.2.3.4`) is a name.
        let glued = before
            .chars()
            .next_back()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !glued
            && run
                .trim_end_matches('.')
                .parse::<std::net::Ipv4Addr>()
                .is_ok()
        {
            out.push_str("a.b.c.d");
            out.push_str(&run[run.trim_end_matches('.').len()..]);
        } else {
            out.push_str(run);
        }
        rest = &from[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_redacted_as_sparkpost_does() {
        assert_eq!(
            redact("550 5.7.1 MAIL REFUSED - IP (17.99.99.99) is in black list"),
            "550 5.7.1 MAIL REFUSED - IP (a.b.c.d) is in black list"
        );
        assert_eq!(
            redact("host mx.example.org[192.0.2.10] said: 550 5.1.1 <bob@example.org>: unknown."),
            "host mx.example.org[a.b.c.d] said: 550 5.1.1 <...@...>: unknown."
        );
        // Status codes, versions and names with digits stay.
        for kept in [
            "4.2.2 over quota",
            "v1.2.3.4 release",
            "1.2.3 only",
            "999.1.1.1 x",
        ] {
            assert_eq!(redact(kept), kept);
        }
        assert_eq!(redact("from 10.0.0.1."), "from a.b.c.d.");
    }
}

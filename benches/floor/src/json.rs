//! Just enough JSON for the two documents herald-floor reads: a publish body
//! (`channel` or `channels`, `data`, `from`) and a token's claims
//! (`channels`). Values are returned as the raw text they came as, which is
//! what the floor embeds in frames (herald embeds `data` verbatim too).
//!
//! It checks structure, not grammar: a value is skipped by matching quotes,
//! braces and brackets, so a malformed `data` passes through unnoticed. The
//! floor's one client is the load generator; herald itself validates.

/// Top-level members of a JSON object: (key as written between its quotes,
/// raw value). `None` when `text` is not one object.
pub fn object(text: &str) -> Option<Vec<(&str, &str)>> {
    let b = text.as_bytes();
    let mut i = ws(b, 0);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    let mut members = Vec::new();
    i = ws(b, i + 1);
    if b.get(i) == Some(&b'}') {
        return (ws(b, i + 1) == b.len()).then_some(members);
    }
    loop {
        if b.get(i) != Some(&b'"') {
            return None;
        }
        let key_end = skip_string(b, i)?;
        let key = text.get(i + 1..key_end - 1)?;
        i = ws(b, key_end);
        if b.get(i) != Some(&b':') {
            return None;
        }
        let start = ws(b, i + 1);
        let end = skip_value(b, start)?;
        members.push((key, text.get(start..end)?));
        i = ws(b, end);
        match b.get(i) {
            Some(b',') => i = ws(b, i + 1),
            Some(b'}') => return (ws(b, i + 1) == b.len()).then_some(members),
            _ => return None,
        }
    }
}

/// The contents of a JSON array of strings (each as written between its
/// quotes); `None` for anything else.
pub fn strings(value: &str) -> Option<Vec<&str>> {
    let b = value.as_bytes();
    if b.first() != Some(&b'[') {
        return None;
    }
    let mut out = Vec::new();
    let mut i = ws(b, 1);
    if b.get(i) == Some(&b']') {
        return Some(out);
    }
    loop {
        if b.get(i) != Some(&b'"') {
            return None;
        }
        let end = skip_string(b, i)?;
        out.push(value.get(i + 1..end - 1)?);
        i = ws(b, end);
        match b.get(i) {
            Some(b',') => i = ws(b, i + 1),
            Some(b']') => return Some(out),
            _ => return None,
        }
    }
}

/// The first index at or after `i` that is not JSON whitespace.
fn ws(b: &[u8], mut i: usize) -> usize {
    while matches!(b.get(i), Some(b' ' | b'\t' | b'\r' | b'\n')) {
        i += 1;
    }
    i
}

/// Past the string starting at `b[i] == '"'`.
fn skip_string(b: &[u8], mut i: usize) -> Option<usize> {
    i += 1;
    loop {
        match b.get(i)? {
            b'\\' => i += 2,
            b'"' => return Some(i + 1),
            _ => i += 1,
        }
    }
}

/// Past the value starting at `i`.
fn skip_value(b: &[u8], i: usize) -> Option<usize> {
    match b.get(i)? {
        b'"' => skip_string(b, i),
        b'{' | b'[' => {
            let (mut depth, mut j) = (0usize, i);
            loop {
                match b.get(j)? {
                    b'"' => {
                        j = skip_string(b, j)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
        }
        _ => {
            let n = b[i..]
                .iter()
                .take_while(|c| !matches!(c, b',' | b'}' | b']' | b' ' | b'\t' | b'\r' | b'\n'))
                .count();
            (n > 0).then_some(i + n)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_body() {
        let m = object(r#"{"channel":"lg_1_fan","data":{"lgt":5,"pad":"a\"}b","x":[1,{"y":2}]}}"#)
            .unwrap();
        assert_eq!(m[0], ("channel", r#""lg_1_fan""#));
        assert_eq!(m[1], ("data", r#"{"lgt":5,"pad":"a\"}b","x":[1,{"y":2}]}"#));
        let m = object(r#" { "channels" : ["a", "b"], "data": 7 , "from":"s" } "#).unwrap();
        assert_eq!(strings(m[0].1).unwrap(), vec!["a", "b"]);
        assert_eq!((m[1].1, m[2].1), ("7", r#""s""#));
        assert_eq!(object("{}").unwrap(), vec![]);
    }

    #[test]
    fn rejects_what_is_not_one_object() {
        for bad in [
            "",
            "[]",
            "{",
            r#"{"a":1"#,
            r#"{"a":1}x"#,
            r#"{"a" 1}"#,
            r#"{"a":}"#,
        ] {
            assert!(object(bad).is_none(), "{bad}");
        }
        assert!(strings("[1]").is_none());
        assert_eq!(strings("[]").unwrap(), Vec::<&str>::new());
    }
}

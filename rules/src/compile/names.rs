//! Names in a rule file: what a valid one is, and the closest known one to suggest for a
//! misspelt one.

pub(super) fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b))
}

pub(super) fn name_msg(what: &str, s: &str) -> String {
    format!("`{s}` is not a valid {what}: expected 1-64 letters, digits, `-`, `_`, `.` or `@`")
}

pub(super) fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// ": did you mean `x`?" for the closest known name, if any is close.
pub(super) fn closest<'a>(s: &str, known: impl Iterator<Item = &'a str>) -> String {
    known
        .map(|k| (edit_distance(s, k), k))
        .filter(|(d, _)| *d <= 2)
        .min()
        .map(|(_, k)| format!(": did you mean `{k}`?"))
        .unwrap_or_default()
}

pub(super) fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) =
        (a.chars().take(64).collect(), b.chars().take(64).collect());
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

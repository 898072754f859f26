//! `${VAR}` and `${VAR:-default}` expansion of environment values from the host.

use std::collections::BTreeMap;

/// Expand `${VAR}` / `${VAR:-default}` in `value` using `lookup`; `$$` is a literal `$`.
/// An unset variable without a default expands to the empty string and is reported in `missing`.
pub fn expand(
    value: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    missing: &mut Vec<String>,
) -> String {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            match body.find('}') {
                Some(end) => {
                    let inner = &body[..end];
                    let (name, default) = match inner.split_once(":-") {
                        Some((n, d)) => (n, Some(d)),
                        None => (inner, None),
                    };
                    match (
                        lookup(name).filter(|v| !v.is_empty() || default.is_none()),
                        default,
                    ) {
                        (Some(v), _) => out.push_str(&v),
                        (None, Some(d)) => out.push_str(d),
                        (None, None) => missing.push(name.to_string()),
                    }
                    rest = &body[end + 1..];
                }
                None => {
                    out.push('$');
                    rest = after;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The names of the host variables `value` would read when expanded (`${VAR}`, `${VAR:-d}`),
/// in order; `$$` escapes are not references. A value without references expands to itself
/// (but for `$$` → `$`) whatever the host's environment holds.
pub fn references(value: &str) -> Vec<String> {
    let seen = std::cell::RefCell::new(Vec::new());
    let lookup = |k: &str| {
        seen.borrow_mut().push(k.to_string());
        None
    };
    let mut missing = Vec::new();
    expand(value, &lookup, &mut missing);
    seen.into_inner()
}

/// Expand every value of a map from the process environment; returns the map and the names of
/// variables that were referenced but unset.
pub fn expand_map(map: &BTreeMap<String, String>) -> (BTreeMap<String, String>, Vec<String>) {
    let lookup = |k: &str| std::env::var(k).ok();
    let mut missing = Vec::new();
    let out = map
        .iter()
        .map(|(k, v)| (k.clone(), expand(v, &lookup, &mut missing)))
        .collect();
    (out, missing)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(k: &str) -> Option<String> {
        match k {
            "A" => Some("alpha".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn expands() {
        let mut missing = Vec::new();
        assert_eq!(expand("x${A}y", &lookup, &mut missing), "xalphay");
        assert_eq!(expand("${B:-def}", &lookup, &mut missing), "def");
        assert_eq!(expand("${EMPTY:-def}", &lookup, &mut missing), "def");
        assert_eq!(expand("$$A $A", &lookup, &mut missing), "$A $A");
        assert_eq!(expand("${UNSET}", &lookup, &mut missing), "");
        assert_eq!(expand("${open", &lookup, &mut missing), "${open");
        assert_eq!(missing, ["UNSET"]);
    }

    #[test]
    fn references_name_every_variable_read() {
        assert_eq!(references("a${X}b${Y:-d}"), ["X", "Y"]);
        assert!(references("$${HOME} $HOME plain ${open").is_empty());
    }
}

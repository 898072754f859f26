//! Reading the verifier's reward files (FORMATS.md §1).

use crate::kinds::ErrorKind;
use crate::result::ErrorInfo;
use std::collections::BTreeMap;

/// Parse the rewards from the contents of `reward.json` (preferred) or `reward.txt`.
///
/// `reward.json` is an object of named numbers (non-numeric values are ignored; booleans count as
/// 0/1) or a bare number; `reward.txt` holds one number. Neither present is
/// `verifier_reward_missing`; empty or unparsable is `verifier_reward_invalid`.
pub fn parse_rewards(
    json: Option<&str>,
    txt: Option<&str>,
) -> Result<BTreeMap<String, f64>, ErrorInfo> {
    if let Some(text) = json {
        return parse_json(text);
    }
    if let Some(text) = txt {
        let t = text.trim();
        if t.is_empty() {
            return Err(ErrorInfo::new(
                ErrorKind::VerifierRewardInvalid,
                "reward.txt is empty: test.sh must write one number",
            ));
        }
        return match t.parse::<f64>() {
            Ok(v) if v.is_finite() => Ok(BTreeMap::from([("reward".to_string(), v)])),
            _ => Err(ErrorInfo::new(
                ErrorKind::VerifierRewardInvalid,
                format!("reward.txt holds {:?}, not a number", truncate(t, 80)),
            )),
        };
    }
    Err(ErrorInfo::new(
        ErrorKind::VerifierRewardMissing,
        "test.sh wrote neither /logs/verifier/reward.json nor /logs/verifier/reward.txt",
    ))
}

fn parse_json(text: &str) -> Result<BTreeMap<String, f64>, ErrorInfo> {
    let invalid = |why: String| ErrorInfo::new(ErrorKind::VerifierRewardInvalid, why);
    if text.trim().is_empty() {
        return Err(invalid("reward.json is empty".into()));
    }
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| invalid(format!("reward.json is not valid JSON: {e}")))?;
    match value {
        serde_json::Value::Number(n) => n
            .as_f64()
            .filter(|v| v.is_finite())
            .map(|v| BTreeMap::from([("reward".to_string(), v)]))
            .ok_or_else(|| invalid("reward.json holds a number that is not finite".into())),
        serde_json::Value::Object(map) => {
            let rewards: BTreeMap<String, f64> = map
                .into_iter()
                .filter_map(|(k, v)| {
                    let n = match v {
                        serde_json::Value::Number(n) => n.as_f64(),
                        serde_json::Value::Bool(b) => Some(if b { 1.0 } else { 0.0 }),
                        _ => None,
                    };
                    n.filter(|x| x.is_finite()).map(|x| (k, x))
                })
                .collect();
            if rewards.is_empty() {
                Err(invalid(
                    "reward.json has no numeric values: write an object such as {\"reward\": 1}"
                        .into(),
                ))
            } else {
                Ok(rewards)
            }
        }
        _ => Err(invalid(
            "reward.json must be an object of named numbers, e.g. {\"reward\": 1}".into(),
        )),
    }
}

fn truncate(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_wins_over_txt() {
        let r = parse_rewards(
            Some(r#"{"reward": 1, "tests_passed": 7, "note": "x"}"#),
            Some("0"),
        )
        .unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r["reward"], 1.0);
        assert_eq!(r["tests_passed"], 7.0);
    }

    #[test]
    fn txt() {
        assert_eq!(
            parse_rewards(None, Some(" 0.75\n")).unwrap()["reward"],
            0.75
        );
    }

    #[test]
    fn missing_and_invalid() {
        assert_eq!(
            parse_rewards(None, None).unwrap_err().kind,
            ErrorKind::VerifierRewardMissing
        );
        for (j, t) in [
            (None, Some("")),
            (None, Some("abc")),
            (Some("{"), None),
            (Some("[1]"), None),
            (Some("{\"a\": \"b\"}"), None),
            (None, Some("NaN")),
        ] {
            assert_eq!(
                parse_rewards(j, t).unwrap_err().kind,
                ErrorKind::VerifierRewardInvalid,
                "{j:?} {t:?}"
            );
        }
    }
}

//! Payload filters, spelled as Qdrant users know them:
//! `{"must": [...], "should": [...], "must_not": [...]}` where each condition is
//! `{"key": "a.b", "match": {"value": v}}`, `{"key": k, "match": {"any": [v, ...]}}` or
//! `{"key": k, "range": {"gt"|"gte"|"lt"|"lte": x}}`.
//!
//! A dotted key walks nested objects; when the value found is an array, the condition holds if any
//! element satisfies it. A missing key never matches (so it satisfies `must_not`).

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

/// Longest list of conditions in one clause, and of values in `match.any`.
pub const MAX_CONDITIONS: usize = 1_024;

/// Most terms in one filter: its conditions and `match.any` values, all clauses together. A filter
/// is checked against every point on a delete by filter, inside the apply step of every node
/// (review M12), so its cost per point is bounded.
pub const MAX_TERMS: usize = 1_024;

/// Longest payload key, in characters.
pub const MAX_KEY_LEN: usize = 256;

/// A boolean combination of payload conditions: at most 1,024 conditions and `match.any` values
/// in all.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    /// Every condition must hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(max_items = 1024)]
    pub must: Vec<Condition>,
    /// At least one condition must hold (when the list is not empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(max_items = 1024)]
    pub should: Vec<Condition>,
    /// No condition may hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(max_items = 1024)]
    pub must_not: Vec<Condition>,
}

/// One condition on one payload key: exactly one of `match` and `range` (schema: `api::schema`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Condition {
    /// Payload key; dots walk into nested objects (`meta.lang`).
    pub key: String,
    /// Equality with one value, or with any of several.
    #[serde(rename = "match", default, skip_serializing_if = "Option::is_none")]
    pub matches: Option<Match>,
    /// Numeric range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<Range>,
}

/// `{"value": v}` or `{"any": [v, ...]}`; values are strings, numbers or booleans.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Match {
    /// Equal to this value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
    /// Equal to any of these values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub any: Option<Vec<Value>>,
}

/// Numeric bounds; all given bounds must hold.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Range {
    /// Greater than.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gt: Option<f64>,
    /// Greater than or equal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gte: Option<f64>,
    /// Less than.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lt: Option<f64>,
    /// Less than or equal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lte: Option<f64>,
}

impl Filter {
    /// Checks the filter's shape; the error names the offending field, e.g. `filter.must[0].match`.
    pub fn validate(&self, prefix: &str) -> Result<(), (String, String)> {
        for (clause, conds) in [
            ("must", &self.must),
            ("should", &self.should),
            ("must_not", &self.must_not),
        ] {
            if conds.len() > MAX_CONDITIONS {
                return Err((
                    format!("{prefix}.{clause}"),
                    format!("at most {MAX_CONDITIONS} conditions"),
                ));
            }
            for (i, c) in conds.iter().enumerate() {
                c.validate(&format!("{prefix}.{clause}[{i}]"))?;
            }
        }
        let terms = self.terms();
        if terms > MAX_TERMS {
            return Err((
                prefix.to_string(),
                format!(
                    "at most {MAX_TERMS} conditions and `match.any` values in all, got {terms}"
                ),
            ));
        }
        Ok(())
    }

    /// Conditions plus `match.any` values beyond the first, over all clauses.
    pub fn terms(&self) -> usize {
        [&self.must, &self.should, &self.must_not]
            .into_iter()
            .flatten()
            .map(|c| {
                let any = c.matches.as_ref().and_then(|m| m.any.as_ref());
                1 + any.map_or(0, |vs| vs.len().saturating_sub(1))
            })
            .sum()
    }

    /// Whether the filter has no condition at all (it matches every point).
    pub fn is_empty(&self) -> bool {
        self.must.is_empty() && self.should.is_empty() && self.must_not.is_empty()
    }

    /// Whether a payload (a JSON object, or none) satisfies the filter.
    pub fn matches(&self, payload: Option<&Value>) -> bool {
        self.must.iter().all(|c| c.matches(payload))
            && (self.should.is_empty() || self.should.iter().any(|c| c.matches(payload)))
            && !self.must_not.iter().any(|c| c.matches(payload))
    }
}

fn is_scalar(v: &Value) -> bool {
    matches!(v, Value::String(_) | Value::Number(_) | Value::Bool(_))
}

impl Condition {
    fn validate(&self, at: &str) -> Result<(), (String, String)> {
        if self.key.is_empty() || self.key.chars().count() > MAX_KEY_LEN {
            return Err((
                format!("{at}.key"),
                format!("must be 1 to {MAX_KEY_LEN} characters"),
            ));
        }
        match (&self.matches, &self.range) {
            (Some(m), None) => match (&m.value, &m.any) {
                (Some(v), None) if is_scalar(v) => Ok(()),
                (Some(_), None) => Err((
                    format!("{at}.match.value"),
                    "must be a string, number or boolean".into(),
                )),
                (None, Some(vs)) if vs.len() <= MAX_CONDITIONS && vs.iter().all(is_scalar) => {
                    Ok(())
                }
                (None, Some(_)) => Err((
                    format!("{at}.match.any"),
                    format!("must be at most {MAX_CONDITIONS} strings, numbers or booleans"),
                )),
                _ => Err((
                    format!("{at}.match"),
                    "needs exactly one of `value` and `any`".into(),
                )),
            },
            (None, Some(r)) => {
                let bounds = [r.gt, r.gte, r.lt, r.lte];
                if bounds.iter().all(Option::is_none) {
                    Err((
                        format!("{at}.range"),
                        "needs at least one of gt, gte, lt, lte".into(),
                    ))
                } else if bounds.iter().flatten().any(|b| !b.is_finite()) {
                    Err((format!("{at}.range"), "bounds must be finite".into()))
                } else {
                    Ok(())
                }
            }
            _ => Err((
                at.to_string(),
                "needs exactly one of `match` and `range`".into(),
            )),
        }
    }

    fn matches(&self, payload: Option<&Value>) -> bool {
        let Some(found) = payload.and_then(|p| lookup(p, &self.key)) else {
            return false;
        };
        let test = |v: &Value| -> bool {
            if let Some(m) = &self.matches {
                if let Some(want) = &m.value {
                    return scalar_eq(v, want);
                }
                if let Some(any) = &m.any {
                    return any.iter().any(|w| scalar_eq(v, w));
                }
                false
            } else if let Some(r) = &self.range {
                let Some(x) = v.as_f64() else { return false };
                r.gt.is_none_or(|b| x > b)
                    && r.gte.is_none_or(|b| x >= b)
                    && r.lt.is_none_or(|b| x < b)
                    && r.lte.is_none_or(|b| x <= b)
            } else {
                false
            }
        };
        match found {
            Value::Array(items) => items.iter().any(test),
            v => test(v),
        }
    }
}

fn lookup<'a>(payload: &'a Value, key: &str) -> Option<&'a Value> {
    if let Some(v) = payload.get(key) {
        return Some(v);
    }
    let mut cur = payload;
    for part in key.split('.') {
        cur = cur.get(part)?;
    }
    Some(cur)
}

fn scalar_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_f64(), y.as_f64()) {
            (Some(x), Some(y)) => x == y,
            _ => false,
        },
        (Value::String(x), Value::String(y)) => x == y,
        (Value::Bool(x), Value::Bool(y)) => x == y,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn f(v: Value) -> Filter {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn must_should_must_not() {
        let p = json!({"lang": "en", "n": 5, "tags": ["a", "b"], "meta": {"src": "deb"}});
        assert!(f(json!({"must": [{"key": "lang", "match": {"value": "en"}}]})).matches(Some(&p)));
        assert!(!f(json!({"must": [{"key": "lang", "match": {"value": "de"}}]})).matches(Some(&p)));
        assert!(
            f(json!({"should": [{"key": "lang", "match": {"value": "de"}},
                                    {"key": "n", "range": {"gte": 5}}]}))
            .matches(Some(&p))
        );
        assert!(
            !f(json!({"must_not": [{"key": "tags", "match": {"any": ["b", "z"]}}]}))
                .matches(Some(&p))
        );
        assert!(
            f(json!({"must": [{"key": "meta.src", "match": {"value": "deb"}}]})).matches(Some(&p))
        );
        assert!(
            f(json!({"must": [{"key": "n", "range": {"gt": 4.5, "lt": 5.5}}]})).matches(Some(&p))
        );
        assert!(f(json!({"must": [{"key": "n", "match": {"value": 5.0}}]})).matches(Some(&p)));
        assert!(!f(json!({"must": [{"key": "missing", "range": {"gt": 0}}]})).matches(Some(&p)));
        assert!(f(json!({"must_not": [{"key": "missing", "range": {"gt": 0}}]})).matches(None));
        assert!(Filter::default().matches(None));
    }

    #[test]
    fn validation_names_the_field() {
        let e = f(json!({"must": [{"key": "a", "match": {"value": [1]}}]}))
            .validate("filter")
            .unwrap_err();
        assert_eq!(e.0, "filter.must[0].match.value");
        let e = f(json!({"should": [{"key": "a"}]}))
            .validate("filter")
            .unwrap_err();
        assert_eq!(e.0, "filter.should[0]");
        let e = f(json!({"must": [{"key": "a", "range": {}}]}))
            .validate("filter")
            .unwrap_err();
        assert_eq!(e.0, "filter.must[0].range");
        assert!(serde_json::from_value::<Filter>(json!({"mus": []})).is_err());
    }

    #[test]
    fn a_filter_holds_a_bounded_number_of_terms() {
        let cond = |n: usize| json!({"key": "k", "match": {"any": (0..n).collect::<Vec<_>>()}});
        // 3 conditions, 1,024 + 1 + 1 values: 1,024 terms (each condition counts one, and each
        // `any` value beyond its first one more).
        let ok = f(json!({"must": [cond(1_022)], "should": [cond(1), cond(1)]}));
        assert_eq!(ok.terms(), 1_024);
        assert!(ok.validate("filter").is_ok());
        let e = f(json!({"must": [cond(1_000)], "must_not": [cond(100)]}))
            .validate("filter")
            .unwrap_err();
        assert_eq!(e.0, "filter");
        assert!(e.1.contains("1024"), "{}", e.1);
        let long = "k".repeat(MAX_KEY_LEN + 1);
        let e = f(json!({"must": [{"key": long, "match": {"value": 1}}]}))
            .validate("filter")
            .unwrap_err();
        assert_eq!(e.0, "filter.must[0].key");
    }
}

//! `-o yaml`: the JSON document of a verb, written as YAML (block style).
//! Strings are always quoted (JSON escapes are valid YAML double-quoted
//! strings), so no value can change type or meaning on the way.

use serde_json::Value;

/// The YAML text of `v`, ending with a newline.
pub fn to_string(v: &Value) -> String {
    let mut out = String::new();
    match v {
        Value::Object(m) if !m.is_empty() => object(&mut out, m, 0),
        Value::Array(a) if !a.is_empty() => array(&mut out, a, 0),
        other => {
            out.push_str(&scalar(other));
            out.push('\n');
        }
    }
    out
}

fn scalar(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        // A JSON string literal is a valid YAML double-quoted scalar.
        Value::String(s) => Value::String(s.clone()).to_string(),
        Value::Array(_) => "[]".into(),
        Value::Object(_) => "{}".into(),
    }
}

fn object(out: &mut String, m: &serde_json::Map<String, Value>, indent: usize) {
    for (k, v) in m {
        out.push_str(&" ".repeat(indent));
        out.push_str(&Value::String(k.clone()).to_string());
        out.push(':');
        after_key(out, v, indent);
    }
}

fn array(out: &mut String, items: &[Value], indent: usize) {
    for v in items {
        out.push_str(&" ".repeat(indent));
        out.push('-');
        after_key(out, v, indent);
    }
}

/// A value after its `key:` or `-`: on the same line if a scalar or empty,
/// else on the next lines, two spaces deeper.
fn after_key(out: &mut String, v: &Value, indent: usize) {
    match v {
        Value::Object(inner) if !inner.is_empty() => {
            out.push('\n');
            object(out, inner, indent + 2);
        }
        Value::Array(items) if !items.is_empty() => {
            out.push('\n');
            array(out, items, indent + 2);
        }
        scalar_or_empty => {
            out.push(' ');
            out.push_str(&scalar(scalar_or_empty));
            out.push('\n');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_documents_are_block_yaml_with_quoted_strings() {
        let v = serde_json::json!({
            "listeners": [{"name": "echo", "paused": false, "services": ["Echo", "Calc"], "n": 3}],
            "empty": [],
            "note": "a: b \"q\"\n",
        });
        let y = to_string(&v);
        let expected = r#""empty": []
"listeners":
  -
    "n": 3
    "name": "echo"
    "paused": false
    "services":
      - "Echo"
      - "Calc"
"note": "a: b \"q\"\n"
"#;
        assert_eq!(y, expected);
    }
}

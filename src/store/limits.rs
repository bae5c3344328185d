//! Bounds on what one command may make a replica hold or compute.
//!
//! A committed log entry is applied on every replica, forever (a restart
//! re-applies it from the log or finds its result in a snapshot). So nothing
//! a request can put in the log may make apply allocate without bound, fail
//! to decode, or crash. The proposer checks these limits before proposing
//! (a clear error, nothing written); `apply` checks them again, the same way
//! on every replica, and rejects a command that would exceed them. The
//! limits that depend on nothing but code are constants here; the object
//! size, which operators may need to raise for large templates, is a pref
//! (`max_object_bytes`) read from the replicated state, so every replica
//! judges by the same value.

use serde_json::Value;

use super::command::Rejection;
use crate::error_code as code;

/// Deepest nesting of any JSON value in an object (an object or array inside
/// another counts one level; the object itself is level 1). Well below
/// serde_json's recursion limit of 128, so that every stored object, and the
/// command or event that carries it (a few levels more), always decodes.
pub const MAX_JSON_DEPTH: usize = 32;

/// Most operations in one JSON Patch.
pub const MAX_PATCH_OPS: usize = 100;

/// How deep `value` nests, counting no further than `limit + 1` (so a huge
/// value costs no more than a small one that is just too deep). Iterative:
/// the value may come from a patch and not from a depth-limited parser.
pub fn depth_exceeds(value: &Value, limit: usize) -> bool {
    let mut stack: Vec<(&Value, usize)> = vec![(value, 1)];
    while let Some((value, depth)) = stack.pop() {
        let children: Box<dyn Iterator<Item = &Value>> = match value {
            Value::Array(items) => Box::new(items.iter()),
            Value::Object(map) => Box::new(map.values()),
            _ => continue,
        };
        if depth > limit {
            return true;
        }
        for child in children {
            if matches!(child, Value::Array(_) | Value::Object(_)) {
                stack.push((child, depth + 1));
            }
        }
    }
    false
}

/// The length of `value` as compact JSON, counting no further than
/// `limit + 1` bytes.
pub fn encoded_len_exceeds(value: &Value, limit: usize) -> bool {
    struct Counter {
        count: usize,
        limit: usize,
    }
    impl std::io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.count += buf.len();
            if self.count > self.limit {
                // Stops the serializer: the answer is known.
                return Err(std::io::Error::other("limit reached"));
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter { count: 0, limit };
    serde_json::to_writer(&mut counter, value).is_err()
}

/// Checks depth first (so the size check never walks a too-deep value), then
/// size.
pub fn check_value(value: &Value, max_bytes: usize, what: &str) -> Result<(), Rejection> {
    if depth_exceeds(value, MAX_JSON_DEPTH) {
        return Err(Rejection::new(
            code::TOO_DEEP,
            format!("{what} nests JSON deeper than {MAX_JSON_DEPTH} levels"),
        ));
    }
    if encoded_len_exceeds(value, max_bytes) {
        return Err(Rejection::new(
            code::TOO_LARGE,
            format!("{what} would be larger than {max_bytes} bytes (the max_object_bytes pref)"),
        ));
    }
    Ok(())
}

/// A patch's shape: its length and the depth of the values it carries.
pub fn check_patch(patch: &json_patch::Patch) -> Result<(), Rejection> {
    if patch.0.len() > MAX_PATCH_OPS {
        return Err(Rejection::new(
            code::TOO_MANY_PATCH_OPS,
            format!(
                "the patch has {} operations; at most {MAX_PATCH_OPS} are allowed",
                patch.0.len()
            ),
        ));
    }
    for (index, op) in patch.0.iter().enumerate() {
        let value = match op {
            json_patch::PatchOperation::Add(o) => &o.value,
            json_patch::PatchOperation::Replace(o) => &o.value,
            json_patch::PatchOperation::Test(o) => &o.value,
            _ => continue,
        };
        if depth_exceeds(value, MAX_JSON_DEPTH) {
            return Err(Rejection::new(
                code::TOO_DEEP,
                format!(
                    "operation {index} carries a value nested deeper than {MAX_JSON_DEPTH} levels"
                ),
            )
            .at(format!("/{index}/value")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn nested(levels: usize) -> Value {
        let mut value = json!(1);
        for _ in 0..levels {
            value = json!({ "a": value });
        }
        value
    }

    #[test]
    fn depth_counts_containers() {
        assert!(!depth_exceeds(&json!(1), 0));
        assert!(!depth_exceeds(&json!({}), 1));
        assert!(depth_exceeds(&json!({}), 0));
        assert!(!depth_exceeds(&nested(32), 32));
        assert!(depth_exceeds(&nested(33), 32));
        assert!(depth_exceeds(&json!([[[1]]]), 2));
        assert!(!depth_exceeds(&json!([[1], [2], {"x": [3]}]), 3));
    }

    #[test]
    fn size_stops_counting_at_the_limit() {
        let value = json!({ "a": "x".repeat(100) });
        let len = value.to_string().len();
        assert!(!encoded_len_exceeds(&value, len));
        assert!(encoded_len_exceeds(&value, len - 1));
    }

    #[test]
    fn checks_name_their_code() {
        assert_eq!(
            check_value(&nested(40), 1 << 20, "x").unwrap_err().code,
            code::TOO_DEEP
        );
        assert_eq!(
            check_value(&json!("x".repeat(10)), 5, "x")
                .unwrap_err()
                .code,
            code::TOO_LARGE
        );
        let ops: Vec<Value> = (0..=MAX_PATCH_OPS)
            .map(|_| json!({"op": "test", "path": "/a", "value": 1}))
            .collect();
        let patch: json_patch::Patch = serde_json::from_value(Value::Array(ops)).unwrap();
        assert_eq!(
            check_patch(&patch).unwrap_err().code,
            code::TOO_MANY_PATCH_OPS
        );
        let patch: json_patch::Patch =
            serde_json::from_value(json!([{"op": "add", "path": "/a", "value": nested(40)}]))
                .unwrap();
        assert_eq!(check_patch(&patch).unwrap_err().code, code::TOO_DEEP);
    }
}

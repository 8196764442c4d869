//! JSON lines that survive a kill in the middle of an append.

use std::io::Write;
use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::RunError;

/// Reads JSON lines from `path` (an absent file reads as empty). A last line without its
/// newline that does not parse is what a kill during an append leaves: it is dropped, and its
/// byte offset returned so the caller can warn and truncate. Any other bad line is an error
/// naming its line number.
pub fn read_jsonl<T: DeserializeOwned>(path: &Path) -> Result<(Vec<T>, Option<u64>), RunError> {
    if !path.exists() {
        return Ok((Vec::new(), None));
    }
    let text = std::fs::read(path).map_err(|e| RunError::read(path, e))?;
    let mut out = Vec::new();
    let mut offset = 0usize;
    let mut truncated = None;
    for (i, line) in text.split_inclusive(|b| *b == b'\n').enumerate() {
        let complete = line.ends_with(b"\n");
        let body = std::str::from_utf8(line).map(str::trim);
        match body {
            Ok("") => {}
            Ok(s) => match serde_json::from_str::<T>(s) {
                Ok(v) => out.push(v),
                Err(_) if !complete => truncated = Some(offset as u64),
                Err(e) => return Err(RunError::Invalid { path: path.to_path_buf(), reason: format!("line {}: {e}", i + 1) }),
            },
            Err(_) if !complete => truncated = Some(offset as u64),
            Err(e) => return Err(RunError::Invalid { path: path.to_path_buf(), reason: format!("line {}: {e}", i + 1) }),
        }
        offset += line.len();
    }
    Ok((out, truncated))
}

/// Appends one JSON line to `path` and syncs it (one `write` of the whole line, so a kill
/// leaves at most a partial last line, which [`read_jsonl`] drops).
pub fn append_jsonl<T: Serialize>(path: &Path, value: &T) -> Result<(), RunError> {
    let mut line = serde_json::to_vec(value).map_err(|e| RunError::Invalid { path: path.to_path_buf(), reason: e.to_string() })?;
    line.push(b'\n');
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(|e| RunError::write(path, e))?;
    f.write_all(&line).and_then(|()| f.sync_data()).map_err(|e| RunError::write(path, e))
}

/// Cuts `path` at `len` bytes: drops the truncated last line that [`read_jsonl`] reported, before
/// appending after it.
pub fn truncate_jsonl(path: &Path, len: u64) -> Result<(), RunError> {
    let f = std::fs::OpenOptions::new().write(true).open(path).map_err(|e| RunError::write(path, e))?;
    f.set_len(len).map_err(|e| RunError::write(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_truncated_last_line_is_dropped_and_other_bad_lines_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("e.jsonl");
        append_jsonl(&p, &serde_json::json!({"a": 1})).unwrap();
        append_jsonl(&p, &serde_json::json!({"a": 2})).unwrap();
        let mut bytes = std::fs::read(&p).unwrap();
        let full = bytes.len() as u64;
        bytes.extend_from_slice(b"{\"a\": 3");
        std::fs::write(&p, &bytes).unwrap();
        let (v, cut) = read_jsonl::<serde_json::Value>(&p).unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(cut, Some(full));
        truncate_jsonl(&p, full).unwrap();
        append_jsonl(&p, &serde_json::json!({"a": 3})).unwrap();
        assert_eq!(read_jsonl::<serde_json::Value>(&p).unwrap().0.len(), 3);
        std::fs::write(&p, "{\"a\": 1}\n{bad\n{\"a\": 2}\n").unwrap();
        let e = read_jsonl::<serde_json::Value>(&p).unwrap_err().to_string();
        assert!(e.contains("line 2"), "{e}");
    }
}

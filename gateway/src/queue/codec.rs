//! Byte formats of the columns that are not plain scalars: header lists (a length-prefixed
//! blob, since header values need not be UTF-8) and the event history (JSON lines, so that an
//! event is appended with `events = events || ?` without reading the row first).

use super::types::{TaskEvent, TaskState};

/// Header blob format version, the first byte of every blob.
const HEADERS_V1: u8 = 1;

/// `[1] ([u32 LE name len][name][u32 LE value len][value])*`
pub(crate) fn encode_headers(headers: &[(String, Vec<u8>)]) -> Vec<u8> {
    let len: usize = headers
        .iter()
        .map(|(n, v)| 8 + n.len() + v.len())
        .sum::<usize>()
        + 1;
    let mut out = Vec::with_capacity(len);
    out.push(HEADERS_V1);
    for (name, value) in headers {
        put(&mut out, name.as_bytes());
        put(&mut out, value);
    }
    out
}

fn put(out: &mut Vec<u8>, bytes: &[u8]) {
    // Header names and values are bounded by the listener far below 4 GiB.
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

pub(crate) fn decode_headers(mut blob: &[u8]) -> Result<Vec<(String, Vec<u8>)>, String> {
    match blob.split_first() {
        None => return Ok(Vec::new()),
        Some((&HEADERS_V1, rest)) => blob = rest,
        Some((v, _)) => return Err(format!("unknown header blob version {v}")),
    }
    let mut headers = Vec::new();
    while !blob.is_empty() {
        let name = take(&mut blob)?;
        let value = take(&mut blob)?;
        let name = String::from_utf8(name.to_vec()).map_err(|_| "header name is not UTF-8")?;
        headers.push((name, value.to_vec()));
    }
    Ok(headers)
}

fn take<'a>(blob: &mut &'a [u8]) -> Result<&'a [u8], String> {
    let (len, rest) = blob
        .split_first_chunk::<4>()
        .ok_or("header blob ends inside a length")?;
    let len = u32::from_le_bytes(*len) as usize;
    if rest.len() < len {
        return Err("header blob ends inside a value".into());
    }
    let (item, rest) = rest.split_at(len);
    *blob = rest;
    Ok(item)
}

/// Frame format version, the first byte of every framed value.
const FRAMES_V1: u8 = 1;

/// Several byte strings in one value: `[1] ([u32 LE len][bytes])*`. The NATS store keeps a task
/// record (JSON metadata, header blobs, bodies) as one framed value, so bodies stay raw bytes.
pub(crate) fn encode_frames(parts: &[&[u8]]) -> Vec<u8> {
    let len = 1 + parts.iter().map(|p| 4 + p.len()).sum::<usize>();
    let mut out = Vec::with_capacity(len);
    out.push(FRAMES_V1);
    for p in parts {
        put(&mut out, p);
    }
    out
}

/// The parts of an `encode_frames` value; exactly `n` of them or an error.
pub(crate) fn decode_frames(mut blob: &[u8], n: usize) -> Result<Vec<&[u8]>, String> {
    match blob.split_first() {
        Some((&FRAMES_V1, rest)) => blob = rest,
        Some((v, _)) => return Err(format!("unknown frame format version {v}")),
        None => return Err("empty value".into()),
    }
    let mut parts = Vec::with_capacity(n);
    while !blob.is_empty() {
        parts.push(take(&mut blob)?);
    }
    if parts.len() != n {
        return Err(format!("expected {n} parts, found {}", parts.len()));
    }
    Ok(parts)
}

/// One history line, newline included.
pub(crate) fn event_line(at_ms: u64, state: TaskState, detail: &str) -> String {
    let ev = TaskEvent {
        at_ms,
        state,
        detail: detail.to_owned(),
    };
    // Serialising a struct of a number, a unit enum and a string cannot fail.
    let mut line = serde_json::to_string(&ev).unwrap_or_default();
    line.push('\n');
    line
}

pub(crate) fn decode_events(text: &str) -> Result<Vec<TaskEvent>, String> {
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_str(l).map_err(|e| format!("bad history line {l:?}: {e}")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_including_binary_values() {
        let h = vec![
            ("content-type".to_owned(), b"application/json".to_vec()),
            ("x-bin".to_owned(), vec![0, 255, 10, 13]),
            ("empty".to_owned(), Vec::new()),
        ];
        assert_eq!(decode_headers(&encode_headers(&h)).unwrap(), h);
        assert_eq!(decode_headers(&encode_headers(&[])).unwrap(), vec![]);
        assert_eq!(decode_headers(&[]).unwrap(), vec![]);
    }

    #[test]
    fn truncated_header_blobs_are_errors_not_panics() {
        let blob = encode_headers(&[("a".into(), b"bcd".to_vec())]);
        // A blob of just the version byte is a valid empty list; any later cut is not.
        for cut in 2..blob.len() {
            assert!(decode_headers(&blob[..cut]).is_err(), "cut at {cut}");
        }
        assert!(decode_headers(&[9]).is_err());
    }

    #[test]
    fn frames_round_trip_and_refuse_damage() {
        let v = encode_frames(&[b"{}", b"", &[0, 1, 2]]);
        assert_eq!(
            decode_frames(&v, 3).unwrap(),
            vec![&b"{}"[..], &b""[..], &[0u8, 1, 2][..]]
        );
        assert!(decode_frames(&v, 2).is_err());
        for cut in 0..v.len() - 1 {
            assert!(decode_frames(&v[..cut], 3).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn events_round_trip() {
        let mut text = event_line(5, TaskState::Enqueued, "accepted");
        text.push_str(&event_line(
            6,
            TaskState::Running,
            "attempt 1 \"quoted\"\nnewline",
        ));
        let evs = decode_events(&text).unwrap();
        assert_eq!(evs.len(), 2);
        assert_eq!(evs[1].state, TaskState::Running);
        assert_eq!(evs[1].detail, "attempt 1 \"quoted\"\nnewline");
    }
}

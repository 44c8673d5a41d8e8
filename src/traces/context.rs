//! W3C Trace Context: the `traceparent` and `tracestate` headers a caller sends (gRPC metadata
//! and HTTP headers are the same headers), and the ids spans are named by.
//! <https://www.w3.org/TR/trace-context/>

use std::fmt;

/// A trace's id: 16 bytes, not all zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceId(pub [u8; 16]);

/// A span's id: 8 bytes, not all zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SpanId(pub [u8; 8]);

fn write_hex(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    bytes.iter().try_for_each(|b| write!(f, "{b:02x}"))
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

/// A valid `traceparent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    /// The trace.
    pub trace_id: TraceId,
    /// The caller's span.
    pub parent_id: SpanId,
    /// Whether the caller sampled the trace (flag bit 0).
    pub sampled: bool,
}

/// `n` lowercase hex digits (the specification allows no capitals) as bytes.
fn hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let digits = s.as_bytes();
    if digits.len() != 2 * N {
        return None;
    }
    let value = |d: u8| match d {
        b'0'..=b'9' => Some(d - b'0'),
        b'a'..=b'f' => Some(d - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        *byte = value(pair[0])? << 4 | value(pair[1])?;
    }
    Some(out)
}

/// Parses `traceparent`; `None` for anything the specification says to ignore.
pub fn parse(value: &str) -> Option<TraceParent> {
    let mut parts = value.trim().split('-');
    let (version, trace_id, parent_id, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let [version] = hex::<1>(version)?;
    // Version 00 has exactly four parts; a later version may add more after them.
    if version == 0xff || (version == 0 && parts.next().is_some()) {
        return None;
    }
    let trace_id = hex::<16>(trace_id)?;
    let parent_id = hex::<8>(parent_id)?;
    let [flags] = hex::<1>(flags)?;
    if trace_id == [0; 16] || parent_id == [0; 8] {
        return None;
    }
    Some(TraceParent {
        trace_id: TraceId(trace_id),
        parent_id: SpanId(parent_id),
        sampled: flags & 1 == 1,
    })
}

/// The most list members `tracestate` may carry, and its longest length.
const TRACESTATE_MEMBERS: usize = 32;
const TRACESTATE_BYTES: usize = 512;

/// The caller's `tracestate` (its header lines joined by commas), if it is one the
/// specification lets us pass on: at most 32 `key=value` members in 512 bytes, keys and values
/// of its characters. Anything else is dropped whole, as the specification asks.
pub fn tracestate<'a>(lines: impl IntoIterator<Item = &'a str>) -> Option<String> {
    let joined = lines
        .into_iter()
        .flat_map(|line| line.split(','))
        .map(str::trim)
        .filter(|member| !member.is_empty())
        .collect::<Vec<_>>();
    if joined.is_empty() || joined.len() > TRACESTATE_MEMBERS {
        return None;
    }
    let key_ok = |key: &str| {
        !key.is_empty()
            && key.len() <= 256
            && key
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-*/@".contains(&b))
    };
    // Printable ASCII but ',' and '=', not ending in a space.
    let value_ok = |value: &str| {
        !value.is_empty()
            && value.len() <= 256
            && !value.ends_with(' ')
            && value
                .bytes()
                .all(|b| (0x20..=0x7e).contains(&b) && b != b',' && b != b'=')
    };
    let valid = joined.iter().all(|member| {
        member
            .split_once('=')
            .is_some_and(|(key, value)| key_ok(key) && value_ok(value))
    });
    let state = joined.join(",");
    (valid && state.len() <= TRACESTATE_BYTES).then_some(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_specifications_example_parses() {
        let text = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let parsed = parse(text).unwrap();
        assert_eq!(
            parsed.trace_id.to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(parsed.parent_id.to_string(), "00f067aa0ba902b7");
        assert!(parsed.sampled);
        let later = parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-extra").unwrap();
        assert!(!later.sampled);
    }

    #[test]
    fn what_the_specification_says_to_ignore_is_ignored() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn tracestate_is_joined_and_passed_on_only_when_valid() {
        assert_eq!(
            tracestate(["rojo=00f067aa0ba902b7", " congo=t61rcWkgMzE ,"]).as_deref(),
            Some("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE")
        );
        assert_eq!(
            tracestate(["vendor@tenant=x"]).as_deref(),
            Some("vendor@tenant=x")
        );
        for bad in ["", "novalue", "Upper=1", "a=b=c", "k=v w ,x"] {
            assert_eq!(tracestate([bad]), None, "{bad:?}");
        }
        let too_many: Vec<String> = (0..33).map(|i| format!("k{i}=v")).collect();
        assert_eq!(tracestate(too_many.iter().map(String::as_str)), None);
    }
}

//! `Range: bytes=…` requests, as Nix sends them to resume an interrupted download.

use bytes::Bytes;
use futures_util::StreamExt;

use crate::storage::ByteStream;

/// A single byte range as requested, before it is resolved against a size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeRequest {
    /// `bytes=N-` or `bytes=N-M`.
    From {
        /// First byte.
        start: u64,
        /// Last byte, inclusive, if given.
        end: Option<u64>,
    },
    /// `bytes=-N`: the last N bytes.
    Suffix(u64),
}

/// Parses a `Range` header. Anything but one well-formed byte range yields `None`,
/// which means "serve the whole object", as RFC 9110 allows.
pub fn parse(header: &str) -> Option<RangeRequest> {
    let spec = header.trim().strip_prefix("bytes=")?.trim();
    if spec.contains(',') {
        return None;
    }
    let (start, end) = spec.split_once('-')?;
    let (start, end) = (start.trim(), end.trim());
    if start.is_empty() {
        return Some(RangeRequest::Suffix(end.parse().ok()?));
    }
    let start: u64 = start.parse().ok()?;
    let end = if end.is_empty() {
        None
    } else {
        let end: u64 = end.parse().ok()?;
        if end < start {
            return None;
        }
        Some(end)
    };
    Some(RangeRequest::From { start, end })
}

/// Limits a byte stream to its first `len` bytes.
pub fn take_bytes(stream: ByteStream, len: u64) -> ByteStream {
    Box::pin(stream.scan(len, |left, chunk| {
        let out = match chunk {
            Ok(_) if *left == 0 => None,
            Ok(mut bytes) => {
                if bytes.len() as u64 > *left {
                    bytes = bytes.slice(..*left as usize);
                }
                *left -= bytes.len() as u64;
                Some(Ok::<Bytes, std::io::Error>(bytes))
            }
            Err(e) => Some(Err(e)),
        };
        std::future::ready(out)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_forms_clients_send() {
        assert_eq!(
            parse("bytes=804-"),
            Some(RangeRequest::From {
                start: 804,
                end: None
            })
        );
        assert_eq!(
            parse("bytes=0-9"),
            Some(RangeRequest::From {
                start: 0,
                end: Some(9)
            })
        );
        assert_eq!(parse("bytes=-5"), Some(RangeRequest::Suffix(5)));
        assert_eq!(parse("bytes=5-1"), None);
        assert_eq!(parse("bytes=0-1,4-5"), None);
        assert_eq!(parse("items=0-1"), None);
        assert_eq!(parse("bytes=x-"), None);
    }

    #[tokio::test]
    async fn take_bytes_truncates() {
        let chunks = vec![
            Ok(Bytes::from_static(b"abc")),
            Ok(Bytes::from_static(b"defg")),
        ];
        let s: ByteStream = Box::pin(futures_util::stream::iter(chunks));
        let out: Vec<_> = take_bytes(s, 5).map(|c| c.unwrap()).collect().await;
        assert_eq!(out.concat(), b"abcde");
    }
}

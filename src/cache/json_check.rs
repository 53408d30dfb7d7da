//! Checks that a byte stream is one JSON object (RFC 8259, UTF-8), chunk by chunk,
//! in memory that does not grow with the document: `.ls` listings run to tens of
//! MiB and are checked while they stream to storage instead of being held whole.
//!
//! Hand-written rather than taken from a crate: the push parsers available (actson)
//! collect every string and number into a buffer, so one 60 MiB string would again
//! be held whole, and leave UTF-8 unchecked. Accepts exactly what
//! `serde_json::from_slice::<&RawValue>` accepts with a `{` first (the check used
//! before), except that nesting may go deeper than serde_json's 128 levels (a
//! listing nests two levels per directory, and Nix reads any depth): up to
//! [`MAX_DEPTH`].

/// Deepest nesting accepted; bounds the memory of the check (one byte a level).
pub const MAX_DEPTH: usize = 4096;

/// Why the bytes are not one JSON object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} at byte {offset}")]
pub struct JsonError {
    /// Offset of the offending byte (the length of the input for a truncated one).
    pub offset: u64,
    /// What was wrong.
    pub what: &'static str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before the top-level `{`.
    Start,
    /// Where a value must come; `]` allowed right after `[`.
    Value { may_close: bool },
    /// Where an object key must come; `}` allowed right after `{`.
    Key { may_close: bool },
    /// After a key.
    Colon,
    /// After a value: `,`, the closing bracket, or the end.
    AfterValue,
    /// After the top-level object: whitespace only.
    Done,
    /// Inside a string.
    Str(Str),
    /// Inside `true`, `false` or `null`: the bytes still expected.
    Literal(&'static [u8]),
    /// Inside a number.
    Num(Num),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Str {
    Plain,
    Escape,
    /// Hex digits still expected in a `\u` escape.
    Hex(u8),
    /// UTF-8 continuation bytes still expected, and the range of the next one.
    Utf8 {
        left: u8,
        lo: u8,
        hi: u8,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Num {
    /// After `-`.
    Minus,
    /// After a leading `0`.
    Zero,
    Int,
    /// After `.`.
    Dot,
    Frac,
    /// After `e`/`E`.
    Exp,
    /// After the exponent's sign.
    ExpSign,
    ExpInt,
}

/// The check in progress.
#[derive(Debug, Clone)]
pub struct JsonObjectCheck {
    state: State,
    /// Open containers, innermost last: `{` or `[`.
    stack: Vec<u8>,
    /// Whether the string in progress is an object key.
    in_key: bool,
    offset: u64,
    error: Option<JsonError>,
}

impl Default for JsonObjectCheck {
    fn default() -> Self {
        Self::new()
    }
}

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

impl JsonObjectCheck {
    /// A check expecting the first byte.
    pub fn new() -> Self {
        JsonObjectCheck {
            state: State::Start,
            stack: Vec::new(),
            in_key: false,
            offset: 0,
            error: None,
        }
    }

    /// Checks the next bytes; the first error found stays the answer.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<(), JsonError> {
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        for &b in chunk {
            if let Err(what) = self.byte(b) {
                let e = JsonError {
                    offset: self.offset,
                    what,
                };
                self.error = Some(e.clone());
                return Err(e);
            }
            self.offset += 1;
        }
        Ok(())
    }

    /// Whether an error was found already (more bytes cannot make it valid).
    pub fn failed(&self) -> bool {
        self.error.is_some()
    }

    /// Whether the bytes fed were exactly one JSON object (and whitespace).
    pub fn finish(&self) -> Result<(), JsonError> {
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        match self.state {
            State::Done => Ok(()),
            _ => Err(JsonError {
                offset: self.offset,
                what: "unexpected end of the document",
            }),
        }
    }

    fn byte(&mut self, b: u8) -> Result<(), &'static str> {
        match self.state {
            State::Str(s) => self.string(s, b),
            State::Literal(rest) => {
                if rest.first() != Some(&b) {
                    return Err("invalid literal");
                }
                self.state = match &rest[1..] {
                    [] => State::AfterValue,
                    more => State::Literal(more),
                };
                Ok(())
            }
            State::Num(n) => self.number(n, b),
            _ if is_ws(b) => Ok(()),
            State::Start => match b {
                b'{' => self.open(b),
                _ => Err("a listing must be a JSON object"),
            },
            State::Done => Err("trailing characters after the object"),
            State::Value { may_close } => match b {
                b']' if may_close => self.close(b),
                _ => self.value(b),
            },
            State::Key { may_close } => match b {
                b'}' if may_close => self.close(b),
                b'"' => {
                    self.in_key = true;
                    self.state = State::Str(Str::Plain);
                    Ok(())
                }
                _ => Err("expected an object key"),
            },
            State::Colon => match b {
                b':' => {
                    self.state = State::Value { may_close: false };
                    Ok(())
                }
                _ => Err("expected ':'"),
            },
            State::AfterValue => match (b, self.stack.last()) {
                (b',', Some(b'{')) => {
                    self.state = State::Key { may_close: false };
                    Ok(())
                }
                (b',', Some(_)) => {
                    self.state = State::Value { may_close: false };
                    Ok(())
                }
                (b'}' | b']', _) => self.close(b),
                _ => Err("expected ',' or a closing bracket"),
            },
        }
    }

    fn value(&mut self, b: u8) -> Result<(), &'static str> {
        self.state = match b {
            b'{' | b'[' => return self.open(b),
            b'"' => {
                self.in_key = false;
                State::Str(Str::Plain)
            }
            b't' => State::Literal(b"rue"),
            b'f' => State::Literal(b"alse"),
            b'n' => State::Literal(b"ull"),
            b'-' => State::Num(Num::Minus),
            b'0' => State::Num(Num::Zero),
            b'1'..=b'9' => State::Num(Num::Int),
            _ => return Err("expected a value"),
        };
        Ok(())
    }

    fn open(&mut self, b: u8) -> Result<(), &'static str> {
        if self.stack.len() >= MAX_DEPTH {
            return Err("nested too deeply");
        }
        self.stack.push(b);
        self.state = if b == b'{' {
            State::Key { may_close: true }
        } else {
            State::Value { may_close: true }
        };
        Ok(())
    }

    fn close(&mut self, b: u8) -> Result<(), &'static str> {
        let opener = if b == b'}' { b'{' } else { b'[' };
        if self.stack.pop() != Some(opener) {
            return Err("mismatched closing bracket");
        }
        self.state = if self.stack.is_empty() {
            State::Done
        } else {
            State::AfterValue
        };
        Ok(())
    }

    fn string(&mut self, s: Str, b: u8) -> Result<(), &'static str> {
        let next = match s {
            Str::Plain => match b {
                b'"' => {
                    self.state = if self.in_key {
                        State::Colon
                    } else {
                        State::AfterValue
                    };
                    return Ok(());
                }
                b'\\' => Str::Escape,
                0x00..=0x1f => return Err("control character in a string"),
                0x20..=0x7f => Str::Plain,
                // UTF-8 lead bytes and the range of their first continuation byte,
                // which rules out overlong forms, surrogates and code points past
                // U+10FFFF (RFC 3629 §4).
                0xc2..=0xdf => utf8(1, 0x80, 0xbf),
                0xe0 => utf8(2, 0xa0, 0xbf),
                0xe1..=0xec | 0xee..=0xef => utf8(2, 0x80, 0xbf),
                0xed => utf8(2, 0x80, 0x9f),
                0xf0 => utf8(3, 0x90, 0xbf),
                0xf1..=0xf3 => utf8(3, 0x80, 0xbf),
                0xf4 => utf8(3, 0x80, 0x8f),
                _ => return Err("invalid UTF-8"),
            },
            Str::Escape => match b {
                b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => Str::Plain,
                b'u' => Str::Hex(4),
                _ => return Err("invalid escape"),
            },
            Str::Hex(left) => {
                if !b.is_ascii_hexdigit() {
                    return Err("invalid \\u escape");
                }
                if left == 1 {
                    Str::Plain
                } else {
                    Str::Hex(left - 1)
                }
            }
            Str::Utf8 { left, lo, hi } => {
                if !(lo..=hi).contains(&b) {
                    return Err("invalid UTF-8");
                }
                if left == 1 {
                    Str::Plain
                } else {
                    utf8(left - 1, 0x80, 0xbf)
                }
            }
        };
        self.state = State::Str(next);
        Ok(())
    }

    fn number(&mut self, n: Num, b: u8) -> Result<(), &'static str> {
        let digit = b.is_ascii_digit();
        let next = match (n, b) {
            (Num::Minus, b'0') => Num::Zero,
            (Num::Minus, _) if digit => Num::Int,
            (Num::Zero, _) if digit => return Err("leading zero in a number"),
            (Num::Int, _) if digit => Num::Int,
            (Num::Zero | Num::Int, b'.') => Num::Dot,
            (Num::Zero | Num::Int | Num::Frac, b'e' | b'E') => Num::Exp,
            (Num::Dot | Num::Frac, _) if digit => Num::Frac,
            (Num::Exp, b'+' | b'-') => Num::ExpSign,
            (Num::Exp | Num::ExpSign | Num::ExpInt, _) if digit => Num::ExpInt,
            // The number ended where it may end: this byte belongs to what follows.
            (Num::Zero | Num::Int | Num::Frac | Num::ExpInt, _) => {
                self.state = State::AfterValue;
                return self.byte(b);
            }
            _ => return Err("invalid number"),
        };
        self.state = State::Num(next);
        Ok(())
    }
}

fn utf8(left: u8, lo: u8, hi: u8) -> Str {
    Str::Utf8 { left, lo, hi }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The check before this module: serde_json, with a `{` first.
    fn reference(bytes: &[u8]) -> bool {
        let starts_as_object = bytes
            .iter()
            .find(|b| !b.is_ascii_whitespace())
            .is_some_and(|&b| b == b'{');
        starts_as_object && serde_json::from_slice::<&serde_json::value::RawValue>(bytes).is_ok()
    }

    fn check_in_chunks(bytes: &[u8], chunk: usize) -> bool {
        let mut c = JsonObjectCheck::new();
        bytes.chunks(chunk.max(1)).all(|part| c.feed(part).is_ok()) && c.finish().is_ok()
    }

    fn check(bytes: &[u8]) -> bool {
        let whole = check_in_chunks(bytes, bytes.len());
        for size in [1, 2, 3, 7] {
            assert_eq!(check_in_chunks(bytes, size), whole, "chunks of {size}");
        }
        whole
    }

    #[test]
    fn known_documents() {
        let good: &[&[u8]] = &[
            b"{}",
            b" \r\n\t{ } \n",
            br#"{"version":1,"root":{"type":"directory","entries":{}}}"#,
            br#"{"a":[1,-0,0.5,1e5,1E+5,-2.5e-3,true,false,null,"x\u00e9\n",[],{},[[]]]}"#,
            "{\"caf\u{e9}\":\"\u{1f600}\"}".as_bytes(),
            br#"{"lone":"\ud800"}"#,
            br#"{"a":1,"a":2}"#,
        ];
        for doc in good {
            assert!(check(doc), "{}", String::from_utf8_lossy(doc));
            assert!(reference(doc), "{}", String::from_utf8_lossy(doc));
        }
        let bad: &[&[u8]] = &[
            b"",
            b"   ",
            b"[]",
            b"\"x\"",
            b"1",
            b"{",
            b"{}}",
            b"{} {}",
            b"{}x",
            b"{\"a\"}",
            b"{\"a\":}",
            b"{\"a\":1,}",
            b"{,}",
            b"{\"a\":[1,]}",
            b"{\"a\":[1 2]}",
            b"{\"a\":01}",
            b"{\"a\":1.}",
            b"{\"a\":.5}",
            b"{\"a\":1e}",
            b"{\"a\":-}",
            b"{\"a\":+1}",
            b"{\"a\":tru}",
            b"{\"a\":nul}",
            b"{\"a\":\"\x01\"}",
            b"{\"a\":\"\\x\"}",
            b"{\"a\":\"\\u12g4\"}",
            b"{\"a\":\"\xff\"}",
            b"{\"a\":\"\xc0\x80\"}",
            b"{\"a\":\"\xed\xa0\x80\"}",
            b"{\"a\":\"\xf4\x90\x80\x80\"}",
            b"{\"a\":\"\xe2\x82\"}",
            b"{\"a\":[}",
            b"{\"a\":{]}",
            b"\x0c{}",
            b"{}\x00",
            b"{'a':1}",
        ];
        for doc in bad {
            assert!(!check(doc), "{}", String::from_utf8_lossy(doc));
            assert!(!reference(doc), "{}", String::from_utf8_lossy(doc));
        }
    }

    #[test]
    fn depth_is_bounded_but_deeper_than_serde_json() {
        let nested = |n: usize| {
            let mut s = "{\"a\":".repeat(n);
            s.push('1');
            s.push_str(&"}".repeat(n));
            s.into_bytes()
        };
        assert!(check(&nested(1000)));
        assert!(check(&nested(MAX_DEPTH)));
        assert!(!check(&nested(MAX_DEPTH + 1)));
    }

    #[test]
    fn errors_name_the_offset() {
        let mut c = JsonObjectCheck::new();
        c.feed(b"{\"a\":").expect("fine so far");
        let e = c.feed(b" x").expect_err("x is no value");
        assert_eq!(e.offset, 6);
        assert_eq!(c.finish(), Err(e));
    }

    /// Pieces that make up JSON and near-JSON documents.
    fn token() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            prop::sample::select(vec![
                "{",
                "}",
                "[",
                "]",
                ":",
                ",",
                " ",
                "\n",
                "\"",
                "\\",
                "\\u",
                "\\n",
                "0",
                "1",
                "-",
                ".",
                "e",
                "E",
                "+",
                "true",
                "false",
                "null",
                "\"k\":",
                "\u{e9}",
                "\u{1f600}",
                "tr",
                "00",
                "1.5",
                "\t",
            ])
            .prop_map(|s| s.as_bytes().to_vec()),
            any::<u8>().prop_map(|b| vec![b]),
        ]
    }

    fn near_json() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(token(), 0..40).prop_map(|parts| parts.concat())
    }

    /// Valid documents, so that the agreement is not only on refusals.
    fn json_value(depth: u32) -> BoxedStrategy<serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::Bool),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(serde_json::Value::from),
            any::<String>().prop_map(serde_json::Value::String),
        ];
        if depth == 0 {
            return leaf.boxed();
        }
        prop_oneof![
            leaf,
            prop::collection::vec(json_value(depth - 1), 0..4).prop_map(serde_json::Value::Array),
            prop::collection::btree_map(any::<String>(), json_value(depth - 1), 0..4)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
        .boxed()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(crate::cache::fuzz_cases(2000)))]

        #[test]
        fn agrees_with_serde_json_on_near_json(doc in near_json()) {
            prop_assert_eq!(check(&doc), reference(&doc));
        }

        #[test]
        fn agrees_with_serde_json_with_an_object_around(doc in near_json()) {
            let mut wrapped = b"{\"k\":".to_vec();
            wrapped.extend_from_slice(&doc);
            wrapped.push(b'}');
            prop_assert_eq!(check(&wrapped), reference(&wrapped));
        }

        #[test]
        fn accepts_serialised_objects(
            map in prop::collection::btree_map(any::<String>(), json_value(3), 0..6),
            pretty in any::<bool>(),
        ) {
            let value = serde_json::Value::Object(map.into_iter().collect());
            let doc = if pretty {
                serde_json::to_vec_pretty(&value)
            } else {
                serde_json::to_vec(&value)
            }.expect("serialisable");
            prop_assert!(check(&doc));
        }

        #[test]
        fn agrees_with_serde_json_on_damaged_objects(
            map in prop::collection::btree_map(any::<String>(), json_value(3), 1..6),
            at in any::<prop::sample::Index>(),
            byte in any::<u8>(),
            how in 0..3u8,
        ) {
            let value = serde_json::Value::Object(map.into_iter().collect());
            let mut doc = serde_json::to_vec(&value).expect("serialisable");
            let i = at.index(doc.len());
            match how {
                0 => doc[i] = byte,
                1 => doc.insert(i, byte),
                _ => {
                    doc.remove(i);
                }
            }
            prop_assert_eq!(check(&doc), reference(&doc));
        }
    }
}

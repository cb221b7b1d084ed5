//! Go's literal syntax, as gdn's configuration (its config file and flag values) is written in.

/// Go's `strconv.Unquote` for a double-quoted literal.
pub(crate) fn unquote(literal: &str) -> Result<String, String> {
    let invalid = || "invalid syntax".to_string();
    let body = literal
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .ok_or_else(invalid)?;
    let mut bytes: Vec<u8> = Vec::with_capacity(body.len());
    let mut chars = body.chars();
    let hex = |chars: &mut std::str::Chars, n: usize| -> Result<u32, String> {
        let digits: String = chars.take(n).collect();
        if digits.len() != n {
            return Err(invalid());
        }
        u32::from_str_radix(&digits, 16).map_err(|_| invalid())
    };
    while let Some(c) = chars.next() {
        match c {
            '"' | '\n' => return Err(invalid()),
            '\\' => {
                let escape = chars.next().ok_or_else(invalid)?;
                let simple = match escape {
                    'a' => Some(7u8),
                    'b' => Some(8),
                    'f' => Some(12),
                    'n' => Some(b'\n'),
                    'r' => Some(b'\r'),
                    't' => Some(b'\t'),
                    'v' => Some(11),
                    '\\' => Some(b'\\'),
                    '"' => Some(b'"'),
                    _ => None,
                };
                if let Some(b) = simple {
                    bytes.push(b);
                    continue;
                }
                match escape {
                    'x' => bytes.push(hex(&mut chars, 2)? as u8),
                    'u' | 'U' => {
                        let n = if escape == 'u' { 4 } else { 8 };
                        let c = char::from_u32(hex(&mut chars, n)?).ok_or_else(invalid)?;
                        let mut buf = [0u8; 4];
                        bytes.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                    }
                    '0'..='7' => {
                        let rest: String = chars.by_ref().take(2).collect();
                        let digits = format!("{escape}{rest}");
                        let value = u32::from_str_radix(&digits, 8).map_err(|_| invalid())?;
                        if digits.len() != 3 || value > 255 {
                            return Err(invalid());
                        }
                        bytes.push(value as u8);
                    }
                    _ => return Err(invalid()),
                }
            }
            c => {
                let mut buf = [0u8; 4];
                bytes.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    String::from_utf8(bytes).map_err(|_| "the quoted value is not UTF-8".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_string_literals() {
        assert_eq!(unquote(r#""a\tb\n\"c\"\\""#).unwrap(), "a\tb\n\"c\"\\");
        assert_eq!(unquote(r#""\x41\101\u00e9\U0001F600""#).unwrap(), "AAé😀");
        assert_eq!(unquote(r#""plain""#).unwrap(), "plain");
        for bad in [
            r#""open"#,
            r#""a"b""#,
            r#""\q""#,
            r#""\x4""#,
            r#""\777""#,
            r#""\xff""#,
        ] {
            assert!(unquote(bad).is_err(), "{bad}");
        }
    }
}

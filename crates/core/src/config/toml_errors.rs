//! Turning toml's errors into `ConfigError`s that name the key, with line and column.

use super::*;

/// Convert an error from the TOML parser / serde into a [`ConfigError`].
///
/// toml reports a message and a byte span but not the key path, so the path is recovered
/// by a light scan of the text up to the span ([`key_context`]). The message's line and
/// column are appended to `expected`.
pub(super) fn toml_error(err: &toml::de::Error, text: &str, file: &Path) -> ConfigError {
    // toml_edit's messages may span several lines; keep ours on one.
    let message = err
        .message()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let span = err.span();
    let ctx = span
        .as_ref()
        .map(|s| key_context(text, s.start))
        .unwrap_or_default();
    let location = match &span {
        Some(s) => {
            let (line, column) = line_col(text, s.start);
            format!(" (line {line}, column {column})")
        }
        None => String::new(),
    };
    // The path of the table / key the span is in, plus `field` for errors about a field
    // of that table.
    let field_key = |field: &str| {
        let mut path = ctx.value_of.clone().unwrap_or_else(|| ctx.table.clone());
        path.push(field.to_string());
        path.join(".")
    };
    let value_key = || {
        let path = ctx.value_of.clone().unwrap_or_else(|| ctx.table.clone());
        if path.is_empty() {
            "(top level)".to_string()
        } else {
            path.join(".")
        }
    };
    // The literal text of the span when it is short and on one line.
    let span_text = span
        .as_ref()
        .and_then(|s| text.get(s.clone()))
        .map(str::trim)
        .filter(|t| !t.is_empty() && !t.contains('\n') && t.len() <= 80);
    // The whole line the span starts on, quoted.
    let offending_line = || match &span {
        Some(s) => {
            let (line, _) = line_col(text, s.start);
            let line_text = text.lines().nth(line - 1).unwrap_or("").trim();
            if line_text.is_empty() {
                "(empty line)".to_string()
            } else {
                format!("`{line_text}`")
            }
        }
        None => "(unknown)".to_string(),
    };

    let error = if let Some((field, rest)) = backquoted_after(&message, "unknown field ") {
        // serde says "expected one of `a`, `b`", "expected `a` or `b`", "expected `a`"
        // or "there are no fields".
        let known = rest.trim_start_matches(',').trim();
        let known = match known.strip_prefix("expected ") {
            Some(list) => format!(
                "one of the known keys: {}",
                list.trim_start_matches("one of ")
            ),
            None => "no keys here".to_string(),
        };
        ConfigError::new(
            field_key(field),
            "(unknown key)",
            format!("{known}{location}"),
        )
    } else if let Some((field, _)) = backquoted_after(&message, "missing field ") {
        // A key missing at the top level is reported at line 1: not worth showing.
        let key = field_key(field);
        let location = if key.contains('.') {
            location.as_str()
        } else {
            ""
        };
        ConfigError::new(
            key,
            "(missing)",
            format!("this required key to be set{location}"),
        )
    } else if let Some((variant, rest)) = backquoted_after(&message, "unknown variant ") {
        let expected = rest.trim_start_matches(',').trim();
        let expected = expected.strip_prefix("expected ").unwrap_or(expected);
        ConfigError::new(value_key(), lit(variant), format!("{expected}{location}"))
    } else if let Some((unexpected, expected)) =
        ["invalid type: ", "invalid value: ", "invalid length "]
            .iter()
            .find_map(|prefix| message.strip_prefix(prefix))
            .and_then(|rest| rest.split_once(", expected "))
    {
        let value = span_text.map_or_else(|| plain_words(unexpected), str::to_string);
        ConfigError::new(
            value_key(),
            value,
            format!("{}{location}", plain_words(expected)),
        )
    } else if let Some((key, _)) = backquoted_after(&message, "duplicate key ") {
        ConfigError::new(
            field_key(key),
            offending_line(),
            format!("each key set only once{location}"),
        )
    } else {
        // TOML syntax errors and anything else: show the offending line as the value.
        ConfigError::new(
            value_key(),
            offending_line(),
            format!("valid TOML: {message}{location}"),
        )
    };
    error.in_file(file)
}

/// Serde's type names in plain words (`u16` -> `an integer in 0..=65535`).
pub(super) fn plain_words(serde_text: &str) -> String {
    let text = serde_text.trim();
    let plain = match text {
        "u16" => "an integer in 0..=65535",
        "u32" => "a non-negative integer up to 4294967295",
        "u64" => "a non-negative integer",
        "i64" => "an integer",
        "a sequence" | "sequence" => "an array",
        "a map" | "map" => "a table",
        "path string" => "a path string",
        _ if text.starts_with("struct ") => "a table",
        _ => text,
    };
    plain.to_string()
}

/// If `message` contains `prefix` followed by a back-quoted word, that word and the rest.
pub(super) fn backquoted_after<'a>(message: &'a str, prefix: &str) -> Option<(&'a str, &'a str)> {
    let start = message.find(prefix)? + prefix.len();
    let rest = message[start..].strip_prefix('`')?;
    let end = rest.find('`')?;
    Some((&rest[..end], &rest[end + 1..]))
}

/// 1-based line and column (in characters) of a byte offset.
pub(super) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// Where a byte offset falls in a TOML document, as far as [`key_context`] can tell.
#[derive(Debug, Default, Clone, PartialEq)]
pub(super) struct KeyContext {
    /// Path of the table the offset is in (from `[headers]`, inline tables, dotted keys).
    pub(super) table: Vec<String>,
    /// Full path of the key whose value contains the offset, if the offset is in a value.
    pub(super) value_of: Option<Vec<String>>,
}

/// An open inline table or array while scanning, with the key path (relative to the
/// current `[header]`) it is the value of.
pub(super) enum Open {
    Table(Vec<String>),
    Array(Vec<String>),
}

/// Split a (possibly dotted, possibly quoted) TOML key into its parts.
pub(super) fn split_key(raw: &str) -> Vec<String> {
    raw.split('.')
        .map(|part| {
            part.trim()
                .trim_matches(|c| c == '"' || c == '\'')
                .to_string()
        })
        .filter(|part| !part.is_empty())
        .collect()
}

/// Best-effort scan of `text` up to byte `offset` to find which table / key it is in.
///
/// This is a small TOML lexer: it knows headers, `key = value`, dotted keys, inline tables,
/// arrays, strings and comments, which is all a config file uses. It is only used to name
/// keys in error messages, so being approximate on exotic input is acceptable.
pub(super) fn key_context(text: &str, offset: usize) -> KeyContext {
    let bytes = text.as_bytes();
    let end = offset.min(bytes.len());
    let mut header: Vec<String> = Vec::new();
    let mut open: Vec<Open> = Vec::new();
    // Start of the key being read, and the key (relative path) whose value we are in.
    let mut key_start = 0;
    let mut value_of: Option<Vec<String>> = None;
    // Path of the innermost inline table (relative to the header).
    let table_rel = |open: &[Open]| match open.last() {
        Some(Open::Table(path)) => path.clone(),
        _ => Vec::new(),
    };

    let mut i = 0;
    // Also look at the byte at `offset` when it opens a `[header]`: serde reports errors
    // about a table at its header.
    while i < end || (i == end && bytes.get(i) == Some(&b'[')) {
        let in_key = value_of.is_none() && !matches!(open.last(), Some(Open::Array(_)));
        match bytes[i] {
            b'#' => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            quote @ (b'"' | b'\'') => {
                i = skip_string(bytes, i, quote);
                continue;
            }
            b'\n' if open.is_empty() => {
                key_start = i + 1;
                value_of = None;
            }
            b'[' if in_key && open.is_empty() && text[key_start..i].trim().is_empty() => {
                // A `[table]` or `[[array]]` header: the rest of the line.
                let line_end = text[i..].find('\n').map_or(text.len(), |n| i + n);
                let name = text[i..line_end].trim_start_matches('[');
                header = split_key(name.split(']').next().unwrap_or(""));
                if offset <= line_end {
                    return KeyContext {
                        table: header,
                        value_of: None,
                    };
                }
                i = line_end;
                continue;
            }
            b'[' | b'{' if !in_key => {
                let path = match (&value_of, open.last()) {
                    (Some(path), _) | (None, Some(Open::Array(path))) => path.clone(),
                    _ => Vec::new(),
                };
                if bytes[i] == b'[' {
                    open.push(Open::Array(path));
                } else {
                    open.push(Open::Table(path));
                    value_of = None;
                    key_start = i + 1;
                }
            }
            b']' if matches!(open.last(), Some(Open::Array(_))) => {
                open.pop();
            }
            b'}' => {
                if let Some(Open::Table(path)) = open.pop() {
                    value_of = Some(path);
                }
            }
            b',' if matches!(open.last(), Some(Open::Table(_))) => {
                value_of = None;
                key_start = i + 1;
            }
            b'=' if in_key => {
                let mut path = table_rel(&open);
                path.extend(split_key(&text[key_start..i]));
                value_of = Some(path);
            }
            _ => {}
        }
        i += 1;
    }

    let in_key = value_of.is_none() && !matches!(open.last(), Some(Open::Array(_)));
    let mut table = header.clone();
    table.extend(table_rel(&open));
    if in_key {
        // A dotted key being read (`postgresql.prot`): its prefix is a table.
        let partial = text.get(key_start..end).unwrap_or("");
        let mut parts = split_key(partial);
        if !partial.trim_end().ends_with('.') {
            parts.pop();
        }
        table.extend(parts);
        KeyContext {
            table,
            value_of: None,
        }
    } else {
        let rel = match (value_of, open.last()) {
            (Some(path), _) => path,
            (None, Some(Open::Array(path))) => path.clone(),
            _ => Vec::new(),
        };
        let mut full = header;
        full.extend(rel);
        KeyContext {
            table,
            value_of: Some(full),
        }
    }
}

/// Index just after the string starting at `start` (basic, literal or multi-line).
pub(super) fn skip_string(bytes: &[u8], start: usize, quote: u8) -> usize {
    let escapes = quote == b'"';
    if bytes[start..].starts_with(&[quote, quote, quote]) {
        let mut i = start + 3;
        while i < bytes.len() {
            if escapes && bytes[i] == b'\\' {
                i += 2;
            } else if bytes[i..].starts_with(&[quote, quote, quote]) {
                i += 3;
                // Up to two more quotes may belong to the content (`""""x"""""`).
                while i < bytes.len() && bytes[i] == quote {
                    i += 1;
                }
                return i;
            } else {
                i += 1;
            }
        }
        bytes.len()
    } else {
        let mut i = start + 1;
        while i < bytes.len() {
            match bytes[i] {
                b'\\' if escapes => i += 2,
                b'\n' => return i,
                b if b == quote => return i + 1,
                _ => i += 1,
            }
        }
        bytes.len()
    }
}

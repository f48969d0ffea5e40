//! Fuzzing the config loader (proptest; `PROPTEST_CASES` raises the bound): any text is a
//! config or a clear error, never a panic; a config that loads is valid and comes back
//! equal from its own TOML. A failing case is kept in `fuzz.proptest-regressions`.
use super::*;
use proptest::prelude::*;

/// Load `text` both ways; panics only through a bug.
fn load(text: &str) -> Option<NodeConfig> {
    let _ = ClientConfig::from_toml_str(text, Path::new(FILE));
    match NodeConfig::from_toml_str(text, Path::new(FILE)) {
        Ok(c) => Some(c),
        Err(e) => {
            // The error names a key or a line: something the user can act on.
            assert!(!e.to_string().is_empty());
            None
        }
    }
}

fn round_trips(c: &NodeConfig) {
    c.validate().expect("a loaded config is valid");
    let again = NodeConfig::from_toml_str(&c.to_toml_string(), Path::new(FILE))
        .expect("a loaded config loads again from its own TOML");
    assert_eq!(&again, c);
}

/// A line of FULL with its value replaced by `value` (keys kept, so validation is reached).
fn mutate(base: &str, line: usize, value: &str, how: u8) -> String {
    let mut lines: Vec<String> = base.lines().map(String::from).collect();
    let i = line % lines.len();
    match how % 4 {
        0 => {
            if let Some((k, _)) = lines[i].split_once('=') {
                lines[i] = format!("{k}= {value}");
            }
        }
        1 => lines[i] = value.to_string(),
        2 => {
            lines.remove(i);
        }
        _ => lines.insert(i, lines[i].clone()),
    }
    lines.join("\n")
}

/// Values as TOML would hold them, hostile ones included.
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        "[ -~]{0,40}".prop_map(|s| format!("{s:?}")),
        "\\PC{0,20}".prop_map(|s| format!("\"{s}\"")),
        Just("true".to_string()),
        Just("[]".to_string()),
        Just("[\"a\", 1]".to_string()),
        Just("{ x = 1 }".to_string()),
        Just("\"/srv/a'b\"".to_string()),
        Just("\"/srv/a\\nb\"".to_string()),
        Just("\"\"".to_string()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, .. ProptestConfig::default() })]

    #[test]
    fn any_text_is_a_config_or_an_error(text in "\\PC{0,300}") {
        if let Some(c) = load(&text) {
            round_trips(&c);
        }
    }

    #[test]
    fn a_mutated_config_is_a_config_or_an_error(
        line in any::<usize>(),
        v in value(),
        how in any::<u8>(),
        full in any::<bool>(),
    ) {
        let base = if full { FULL } else { MINIMAL };
        if let Some(c) = load(&mutate(base, line, &v, how)) {
            round_trips(&c);
        }
    }
}

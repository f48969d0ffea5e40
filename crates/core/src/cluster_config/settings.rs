//! PostgreSQL's own catalogue of parameters (`pg_settings`), and a value checked against
//! it the way PostgreSQL parses it: booleans, integers and reals with their units and
//! ranges, enums by their values. The catalogue comes from the running server, so the
//! check follows its version and its loaded extensions.

use crate::config::{ConfigError, ParamValue};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `pg_settings.vartype`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VarType {
    Bool,
    Integer,
    Real,
    String,
    Enum,
}

impl VarType {
    pub fn parse(s: &str) -> Option<VarType> {
        Some(match s {
            "bool" => VarType::Bool,
            "integer" => VarType::Integer,
            "real" => VarType::Real,
            "string" => VarType::String,
            "enum" => VarType::Enum,
            _ => return None,
        })
    }
}

/// One row of `pg_settings`, the columns the check reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Setting {
    pub name: String,
    pub vartype: VarType,
    /// `pg_settings.context`: `postmaster` needs a restart, `internal` cannot be set.
    pub context: String,
    /// The base unit (`8kB`, `kB`, `ms`, `s`, `min`, ...), if any.
    pub unit: Option<String>,
    pub min: Option<f64>,
    pub max: Option<f64>,
    #[serde(default)]
    pub enumvals: Vec<String>,
}

/// How a change takes effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Applies {
    /// A reload applies it.
    Reload,
    /// Only a restart of PostgreSQL does (`context = postmaster`).
    Restart,
}

/// The running server's parameters, by name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Catalogue {
    pub settings: BTreeMap<String, Setting>,
    /// The server's version, for messages (`15.18`).
    pub version: String,
}

impl Catalogue {
    pub fn new(rows: Vec<Setting>, version: &str) -> Catalogue {
        Catalogue {
            settings: rows.into_iter().map(|s| (s.name.clone(), s)).collect(),
            version: version.to_string(),
        }
    }

    /// How a change to `name` takes effect (a parameter the catalogue lacks, an extension's
    /// placeholder, on a reload).
    pub fn applies(&self, name: &str) -> Applies {
        match self.settings.get(name) {
            Some(s) if s.context == "postmaster" => Applies::Restart,
            _ => Applies::Reload,
        }
    }

    /// Is `value` one PostgreSQL takes for `name`? The error names the key, the value and
    /// what the server accepts.
    pub fn check(&self, name: &str, value: &ParamValue) -> Result<(), ConfigError> {
        let key = format!("postgresql.parameters.{name}");
        let bad = |expected: String| ConfigError::new(key.clone(), value.toml_literal(), expected);
        let Some(s) = self.settings.get(name) else {
            // A dotted name is an extension's (custom) parameter: PostgreSQL keeps it as a
            // placeholder until the extension loads, so it cannot be checked here.
            if name.contains('.') {
                return Ok(());
            }
            return Err(bad(format!(
                "a parameter PostgreSQL {} knows (it has none named {name})",
                self.version
            )));
        };
        if s.context == "internal" {
            return Err(bad(format!(
                "a parameter that can be set ({name} is fixed when PostgreSQL is built or the cluster is made)"
            )));
        }
        let text = match value {
            ParamValue::Str(t) => t.clone(),
            ParamValue::Bool(true) => "on".into(),
            ParamValue::Bool(false) => "off".into(),
            ParamValue::Int(i) => i.to_string(),
            ParamValue::Float(f) => f.to_string(),
        };
        match s.vartype {
            VarType::Bool => parse_bool(&text)
                .map(|_| ())
                .ok_or_else(|| bad("a boolean: on, off, true, false, yes, no, 1 or 0".into())),
            VarType::Enum => {
                if s.enumvals
                    .iter()
                    .any(|v| v.eq_ignore_ascii_case(text.trim()))
                {
                    Ok(())
                } else {
                    Err(bad(format!("one of {}", s.enumvals.join(", "))))
                }
            }
            VarType::String => Ok(()),
            VarType::Integer | VarType::Real => check_number(s, &text).map_err(bad),
        }
    }
}

/// PostgreSQL's `parse_bool`: the words, their unique prefixes, and 1/0.
fn parse_bool(text: &str) -> Option<bool> {
    let t = text.trim().to_ascii_lowercase();
    if t.is_empty() {
        return None;
    }
    let prefix_of = |word: &str, min: usize| t.len() >= min && word.starts_with(t.as_str());
    if prefix_of("true", 1) || prefix_of("yes", 1) || prefix_of("on", 2) || t == "1" {
        Some(true)
    } else if prefix_of("false", 1) || prefix_of("no", 1) || prefix_of("off", 2) || t == "0" {
        Some(false)
    } else {
        None
    }
}

/// Memory units in bytes and time units in microseconds, as PostgreSQL spells them.
const MEMORY_UNITS: &[(&str, f64)] = &[
    ("B", 1.0),
    ("kB", 1024.0),
    ("MB", 1024.0 * 1024.0),
    ("GB", 1024.0 * 1024.0 * 1024.0),
    ("TB", 1024.0 * 1024.0 * 1024.0 * 1024.0),
];
const TIME_UNITS: &[(&str, f64)] = &[
    ("us", 1.0),
    ("ms", 1_000.0),
    ("s", 1_000_000.0),
    ("min", 60_000_000.0),
    ("h", 3_600_000_000.0),
    ("d", 86_400_000_000.0),
];

/// The size of a setting's base unit (`8kB` is 8192 bytes), and the units it accepts.
fn base_unit(unit: &str) -> Option<(f64, &'static [(&'static str, f64)])> {
    let digits: String = unit.chars().take_while(char::is_ascii_digit).collect();
    let name = &unit[digits.len()..];
    let times: f64 = if digits.is_empty() {
        1.0
    } else {
        digits.parse().ok()?
    };
    for table in [MEMORY_UNITS, TIME_UNITS] {
        if let Some((_, size)) = table.iter().find(|(n, _)| *n == name) {
            return Some((times * size, table));
        }
    }
    None
}

/// An integer or real with an optional unit, converted to the setting's base unit and
/// checked against its range.
fn check_number(s: &Setting, text: &str) -> Result<(), String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || matches!(c, '.' | '-' | '+' | 'e' | 'E')))
        .unwrap_or(t.len());
    // `e` may be a unit's start only after a number; no PostgreSQL unit begins with it.
    let (number, unit) = (t[..split].trim(), t[split..].trim());
    let what = if s.vartype == VarType::Integer {
        "an integer"
    } else {
        "a number"
    };
    let units_hint = s
        .unit
        .as_deref()
        .and_then(base_unit)
        .map(|(_, table)| {
            let names: Vec<&str> = table.iter().map(|(n, _)| *n).collect();
            format!(" with an optional unit ({})", names.join(", "))
        })
        .unwrap_or_default();
    let range = match (s.min, s.max) {
        (Some(lo), Some(hi)) => format!(
            " from {} to {}{}",
            show(lo),
            show(hi),
            s.unit
                .as_deref()
                .map(|u| format!(" (in {u})"))
                .unwrap_or_default()
        ),
        _ => String::new(),
    };
    let expected = format!("{what}{units_hint}{range}");
    let Ok(mut n) = number.parse::<f64>() else {
        return Err(expected);
    };
    if !n.is_finite() || (s.vartype == VarType::Integer && unit.is_empty() && n.fract() != 0.0) {
        return Err(expected);
    }
    if !unit.is_empty() {
        let Some((base, table)) = s.unit.as_deref().and_then(base_unit) else {
            return Err(format!("{expected}: {} takes no unit", s.name));
        };
        let Some((_, size)) = table.iter().find(|(u, _)| *u == unit) else {
            return Err(expected);
        };
        n = n * size / base;
    }
    if s.vartype == VarType::Integer {
        n = n.round();
    }
    let below = s.min.is_some_and(|lo| n < lo);
    let above = s.max.is_some_and(|hi| n > hi);
    if below || above {
        return Err(expected);
    }
    Ok(())
}

/// A range bound as PostgreSQL shows it (no `.0` on whole numbers).
fn show(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{}", x as i64)
    } else {
        format!("{x}")
    }
}

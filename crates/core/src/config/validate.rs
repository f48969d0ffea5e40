//! Validation: every key checked, each error naming it.

use super::*;

/// postgresql.conf parameters pgbaton sets itself, with the config key to use instead
/// (`None`: nothing to configure, pgbaton decides).
pub(super) const MANAGED_PARAMETERS: &[(&str, Option<&str>)] = &[
    ("listen_addresses", Some("postgresql.listen_host")),
    ("port", Some("postgresql.port")),
    ("unix_socket_directories", Some("postgresql.socket_dir")),
    ("hba_file", None),
    ("ident_file", None),
    ("config_file", None),
    ("data_directory", None),
    ("wal_level", None),
    ("hot_standby", None),
    ("max_wal_senders", Some("postgresql.max_wal_senders")),
    (
        "max_replication_slots",
        Some("postgresql.max_replication_slots"),
    ),
    (
        "max_slot_wal_keep_size",
        Some("postgresql.max_slot_wal_keep_size"),
    ),
    ("primary_conninfo", None),
    ("primary_slot_name", None),
    ("archive_mode", Some("postgresql.archive_dir")),
    ("archive_command", Some("postgresql.archive_dir")),
    ("restore_command", Some("postgresql.archive_dir")),
    ("wal_log_hints", None),
    ("password_encryption", None),
    ("synchronous_standby_names", Some("replication.synchronous")),
];

/// Databases that always exist and must not be listed in `postgresql.databases`.
pub(super) const BUILTIN_DATABASES: &[&str] = &["postgres", "template0", "template1"];

impl PostgresqlConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        for (key, path) in [
            ("postgresql.bin_dir", &self.bin_dir),
            ("postgresql.socket_dir", &self.socket_dir),
            ("postgresql.pgpass", &self.pgpass),
            ("postgresql.log_file", &self.log_file),
            ("postgresql.archive_dir", &self.archive_dir),
            ("postgresql.pgbaton_bin", &self.pgbaton_bin),
        ] {
            if let Some(path) = path {
                check_abs_path(key, path)?;
            }
        }
        if let Some(t) = &self.tls {
            check_abs_path("postgresql.tls.cert_file", &t.cert_file)?;
            check_abs_path("postgresql.tls.key_file", &t.key_file)?;
            check_abs_path("postgresql.tls.ca_file", &t.ca_file)?;
        }
        // Both end up single-quoted in the archive and restore commands (a shell line).
        for (key, path) in [
            ("postgresql.archive_dir", &self.archive_dir),
            ("postgresql.pgbaton_bin", &self.pgbaton_bin),
        ] {
            if let Some(p) = path.as_deref().and_then(|p| p.to_str().or(Some("\0"))) {
                // `%` too: PostgreSQL substitutes %p, %f and %% in these commands.
                if p.chars().any(|c| c.is_control() || c == '\'' || c == '%') {
                    return Err(ConfigError::new(
                        key,
                        lit(p),
                        "a UTF-8 path without quotes, `%` or control characters (it goes into a shell command)",
                    ));
                }
            }
        }

        // listen_host: any host, IP, `*` or comma-separated list; it ends up quoted in
        // postgresql.conf, so no quotes, backslashes or control characters.
        let host_expected = "a host name, IP address, '*' or a comma-separated list of them";
        if self.listen_host.trim().is_empty() || !is_safe_host_text(&self.listen_host) {
            return Err(ConfigError::new(
                "postgresql.listen_host",
                lit(&self.listen_host),
                host_expected,
            ));
        }
        match &self.connect_host {
            Some(host) => {
                if host.trim().is_empty()
                    || !is_safe_host_text(host)
                    || host.contains(',')
                    || host == "*"
                {
                    return Err(ConfigError::new(
                        "postgresql.connect_host",
                        lit(host),
                        "one host name or IP address other nodes can reach this PostgreSQL at",
                    ));
                }
            }
            None => {
                let listen = self.listen_host.trim();
                let wildcard =
                    listen == "*" || listen.parse::<IpAddr>().is_ok_and(|ip| ip.is_unspecified());
                if wildcard || listen.contains(',') {
                    return Err(ConfigError::new(
                        "postgresql.connect_host",
                        "(not set)",
                        format!(
                            "a host name or IP address other nodes can reach this PostgreSQL at \
                             (required because listen_host is {})",
                            lit(&self.listen_host)
                        ),
                    ));
                }
            }
        }
        if self.port == 0 {
            return Err(ConfigError::new(
                "postgresql.port",
                "0",
                "a TCP port, 1..=65535",
            ));
        }

        check_identifier("postgresql.superuser", &self.superuser)?;

        if self.allowed_networks.is_empty() {
            return Err(ConfigError::new(
                "postgresql.allowed_networks",
                "[]",
                "at least one network in CIDR notation, like \"10.0.0.0/8\"",
            ));
        }
        for net in &self.allowed_networks {
            if !is_cidr(net) {
                return Err(ConfigError::new(
                    "postgresql.allowed_networks",
                    lit(net),
                    "a network in CIDR notation: \"a.b.c.d/n\" (n <= 32) or an IPv6 \"x::y/n\" (n <= 128)",
                ));
            }
        }

        for (i, db) in self.databases.iter().enumerate() {
            check_identifier("postgresql.databases", db)?;
            if BUILTIN_DATABASES.contains(&db.as_str()) {
                return Err(ConfigError::new(
                    "postgresql.databases",
                    lit(db),
                    "a database name other than postgres, template0 and template1 (they always exist)",
                ));
            }
            if self.databases[..i].contains(db) {
                return Err(ConfigError::new(
                    "postgresql.databases",
                    lit(db),
                    "each database listed only once",
                ));
            }
        }

        if self.max_wal_senders < 2 {
            return Err(ConfigError::new(
                "postgresql.max_wal_senders",
                self.max_wal_senders.to_string(),
                "at least 2 (room for a standby and a base backup)",
            ));
        }
        if self.max_replication_slots < 1 {
            return Err(ConfigError::new(
                "postgresql.max_replication_slots",
                self.max_replication_slots.to_string(),
                "at least 1",
            ));
        }
        if !is_pg_size(&self.max_slot_wal_keep_size) {
            return Err(ConfigError::new(
                "postgresql.max_slot_wal_keep_size",
                lit(&self.max_slot_wal_keep_size),
                "a size: an integer with an optional unit kB, MB, GB or TB (like \"1GB\"), or \"-1\" for no limit",
            ));
        }

        for (name, value) in &self.parameters {
            check_parameter(name, value)?;
        }
        Ok(())
    }
}

/// One entry of `postgresql.parameters`.
pub fn check_parameter(name: &str, value: &ParamValue) -> Result<(), ConfigError> {
    let key = format!("postgresql.parameters.{name}");
    let mut chars = name.chars();
    let valid_name = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '.');
    if !valid_name {
        return Err(ConfigError::new(
            "postgresql.parameters",
            lit(name),
            "parameter names of lowercase letters, digits, '_' and '.', starting with a letter or '_'",
        ));
    }
    let managed = MANAGED_PARAMETERS
        .iter()
        .find(|(p, _)| *p == name)
        .map(|(_, use_key)| *use_key);
    let managed = managed.or_else(|| name.starts_with("recovery_target").then_some(None));
    if let Some(use_key) = managed {
        let expected = match use_key {
            Some(k) => format!("a parameter pgbaton does not manage (set `{k}` instead)"),
            None => format!("a parameter pgbaton does not manage (`{name}` is managed by pgbaton)"),
        };
        return Err(ConfigError::new(key, value.toml_literal(), expected));
    }
    match value {
        ParamValue::Str(s) if s.contains(['\n', '\r', '\0']) => Err(ConfigError::new(
            key,
            value.toml_literal(),
            "a string without newlines or NUL characters",
        )),
        ParamValue::Float(f) if !f.is_finite() => Err(ConfigError::new(
            key,
            value.toml_literal(),
            "a finite number",
        )),
        _ => Ok(()),
    }
}

/// More synchronous standbys than this is a typo, not a cluster.
pub(super) const MAX_SYNC_NODES: u32 = 64;

impl ReplicationConfig {
    pub(super) fn validate(&self, pg: &PostgresqlConfig) -> Result<(), ConfigError> {
        check_identifier("replication.user", &self.user)?;
        if self.user == pg.superuser {
            return Err(ConfigError::new(
                "replication.user",
                lit(&self.user),
                format!(
                    "a role other than postgresql.superuser ({})",
                    lit(&pg.superuser)
                ),
            ));
        }
        if let Some(path) = &self.password_file {
            check_abs_path("replication.password_file", path)?;
        }
        if let Some(var) = &self.password_env {
            if self.password_file.is_some() {
                return Err(ConfigError::new(
                    "replication.password_env",
                    lit(var),
                    "only one of password_file and password_env",
                ));
            }
            let mut chars = var.chars();
            let valid = chars
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(ConfigError::new(
                    "replication.password_env",
                    lit(var),
                    "an environment variable name: letters, digits and '_', not starting with a digit",
                ));
            }
        }
        if !(1..=MAX_SYNC_NODES).contains(&self.synchronous_node_count) {
            return Err(ConfigError::new(
                "replication.synchronous_node_count",
                self.synchronous_node_count.to_string(),
                format!("a number of standbys from 1 to {MAX_SYNC_NODES}"),
            ));
        }
        Ok(())
    }
}

impl ApiConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.listen.parse::<SocketAddr>().is_err() {
            return Err(ConfigError::new(
                "api.listen",
                lit(&self.listen),
                "an IP address and port, like \"127.0.0.1:8008\" or \"[::]:8008\"",
            ));
        }
        if let Some(url) = &self.connect_url {
            // https:// exactly when the API serves TLS: an https URL to a plain API, or the
            // reverse, could never be reached.
            let (scheme, want) = if self.tls.is_some() {
                (
                    "https://",
                    "an https:// URL ([api.tls] is set: the API serves TLS only)",
                )
            } else {
                ("http://", "an http:// URL (https:// needs [api.tls])")
            };
            let rest = url.strip_prefix(scheme);
            if !rest.is_some_and(|r| !r.is_empty() && !r.contains(char::is_whitespace)) {
                return Err(ConfigError::new("api.connect_url", lit(url), want));
            }
        }
        if let Some(t) = &self.tls {
            check_abs_path("api.tls.cert_file", &t.cert_file)?;
            check_abs_path("api.tls.key_file", &t.key_file)?;
            check_abs_path("api.tls.ca_file", &t.ca_file)?;
        }
        if let Some(p) = &self.auth_token_file {
            check_abs_path("api.auth_token_file", p)?;
        }
        if let Some(p) = &self.auth_password_file {
            check_abs_path("api.auth_password_file", p)?;
        }
        match (&self.auth_username, &self.auth_password_file) {
            (Some(u), None) => {
                return Err(ConfigError::new(
                    "api.auth_password_file",
                    "(not set)".to_string(),
                    format!("a password file for api.auth_username = {}", lit(u)),
                ))
            }
            (None, Some(_)) => {
                return Err(ConfigError::new(
                    "api.auth_username",
                    "(not set)".to_string(),
                    "a user name for api.auth_password_file",
                ))
            }
            (Some(u), Some(_)) if u.is_empty() || u.contains(':') => {
                return Err(ConfigError::new(
                    "api.auth_username",
                    lit(u),
                    "a non-empty user name without ':'",
                ))
            }
            _ => {}
        }
        Ok(())
    }
}

impl ClientApi {
    /// Absolute paths; a client certificate with its key, and either only with the CA
    /// (review finding: they were silently ignored).
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        for (key, p) in [
            ("api.ca_file", &self.ca_file),
            ("api.cert_file", &self.cert_file),
            ("api.key_file", &self.key_file),
        ] {
            if let Some(p) = p {
                check_abs_path(key, p)?;
            }
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            let key = if self.cert_file.is_some() {
                "api.key_file"
            } else {
                "api.cert_file"
            };
            return Err(ConfigError::new(
                key,
                "(not set)",
                "a client certificate and its key, both or neither",
            ));
        }
        if self.cert_file.is_some() && self.ca_file.is_none() {
            return Err(ConfigError::new(
                "api.ca_file",
                "(not set)",
                "the CA the members' API certificates are checked against (a client \
                 certificate is for APIs served over TLS)",
            ));
        }
        Ok(())
    }
}

impl TimingConfig {
    /// The fence rule and each value's range (node.toml, and the cluster's config over it).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(100..=60_000).contains(&self.loop_interval_ms) {
            return Err(ConfigError::new(
                "timing.loop_interval_ms",
                self.loop_interval_ms.to_string(),
                "a number of milliseconds in 100..=60000",
            ));
        }
        let min_ttl = 3 * self.loop_interval_ms;
        if self.ttl_ms < min_ttl || self.ttl_ms > 3_600_000 {
            return Err(ConfigError::new(
                "timing.ttl_ms",
                self.ttl_ms.to_string(),
                format!(
                    "a number of milliseconds, at least 3 × timing.loop_interval_ms ({min_ttl}) \
                     and at most 3600000 (on etcd, whole seconds: node.toml's value is rounded \
                     down)"
                ),
            ));
        }
        if self.fence_margin_ms < 100 || self.fence_margin_ms >= self.ttl_ms {
            return Err(ConfigError::new(
                "timing.fence_margin_ms",
                self.fence_margin_ms.to_string(),
                format!(
                    "a number of milliseconds, at least 100 and below timing.ttl_ms ({})",
                    self.ttl_ms
                ),
            ));
        }
        let room = 2 * self.loop_interval_ms;
        if self.ttl_ms - self.fence_margin_ms < room {
            return Err(ConfigError::new(
                "timing.fence_margin_ms",
                self.fence_margin_ms.to_string(),
                format!(
                    "at most timing.ttl_ms - 2 × timing.loop_interval_ms ({}): the primary must \
                     get two chances to renew its lease before it fences itself (on etcd, \
                     timing.ttl_ms counts in whole seconds)",
                    self.ttl_ms.saturating_sub(room)
                ),
            ));
        }
        if !(1000..=3_600_000).contains(&self.primary_restart_timeout_ms) {
            return Err(ConfigError::new(
                "timing.primary_restart_timeout_ms",
                self.primary_restart_timeout_ms.to_string(),
                "a number of milliseconds in 1000..=3600000",
            ));
        }
        if self.start_timeout_ms < 1000 {
            return Err(ConfigError::new(
                "timing.start_timeout_ms",
                self.start_timeout_ms.to_string(),
                "a number of milliseconds, at least 1000",
            ));
        }
        if self.orphan_slot_grace_ms > 604_800_000 {
            return Err(ConfigError::new(
                "timing.orphan_slot_grace_ms",
                self.orphan_slot_grace_ms.to_string(),
                "a number of milliseconds, at most 604800000 (a week)",
            ));
        }
        Ok(())
    }
}

/// A string as a TOML-ish quoted literal, for error messages.
pub(crate) fn lit(s: &str) -> String {
    format!("{s:?}")
}

/// Cluster and node names: 1..=63 of `[A-Za-z0-9_.-]`, starting with a letter or digit.
pub(super) fn check_name(key: &str, value: &str) -> Result<(), ConfigError> {
    let valid = (1..=63).contains(&value.len())
        && value.starts_with(|c: char| c.is_ascii_alphanumeric())
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if valid {
        Ok(())
    } else {
        Err(ConfigError::new(
            key,
            lit(value),
            "1 to 63 letters, digits, '_', '.' or '-', starting with a letter or digit",
        ))
    }
}

/// A plain PostgreSQL identifier: `[a-z_][a-z0-9_]{0,62}`.
pub(super) fn check_identifier(key: &str, value: &str) -> Result<(), ConfigError> {
    let valid = (1..=63).contains(&value.len())
        && value.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && value
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if valid {
        Ok(())
    } else {
        Err(ConfigError::new(
            key,
            lit(value),
            "a plain PostgreSQL identifier: 1 to 63 lowercase letters, digits or '_', not starting with a digit",
        ))
    }
}

pub(super) fn check_abs_path(key: &str, path: &Path) -> Result<(), ConfigError> {
    let text = path.to_string_lossy();
    let bad = |why: &str| Err(ConfigError::new(key, lit(&text), why));
    if !path.is_absolute() {
        return bad("an absolute path");
    }
    // Paths go into postgresql.conf values, conninfo strings and the archive command, each
    // single-quoted; a quote or a line break there rewrites the setting (audit finding).
    let Some(utf8) = path.to_str() else {
        return bad("a path in UTF-8");
    };
    if utf8.chars().any(|c| c.is_control() || c == '\'') {
        return bad("an absolute path without quotes (') or control characters (line breaks)");
    }
    if path
        .components()
        .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return bad("an absolute path without '..'");
    }
    Ok(())
}

/// Host text that can go inside a single-quoted postgresql.conf value and a conninfo.
pub(super) fn is_safe_host_text(s: &str) -> bool {
    !s.chars()
        .any(|c| c.is_control() || matches!(c, '\'' | '"' | '\\'))
}

/// `a.b.c.d/n` with n <= 32, or an IPv6 address `/n` with n <= 128.
pub(super) fn is_cidr(s: &str) -> bool {
    let Some((ip, prefix)) = s.split_once('/') else {
        return false;
    };
    let Ok(ip) = ip.parse::<IpAddr>() else {
        return false;
    };
    if prefix.is_empty() || prefix.len() > 3 || !prefix.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    let max = if ip.is_ipv4() { 32 } else { 128 };
    prefix.parse::<u32>().is_ok_and(|n| n <= max)
}

/// A PostgreSQL size: `-1`, or an integer with an optional unit kB, MB, GB or TB.
pub(super) fn is_pg_size(s: &str) -> bool {
    if s == "-1" {
        return true;
    }
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = s.split_at(digits);
    !number.is_empty()
        && number.parse::<i32>().is_ok()
        && matches!(unit, "" | "kB" | "MB" | "GB" | "TB")
}

/// `http://host:port` or `https://host:port` (host: a name, IPv4 or `[IPv6]`; no path).
pub(super) fn is_http_endpoint(s: &str) -> bool {
    let Some(rest) = s
        .strip_prefix("http://")
        .or_else(|| s.strip_prefix("https://"))
    else {
        return false;
    };
    let (host_ok, port) = if let Some(bracketed) = rest.strip_prefix('[') {
        match bracketed.split_once("]:") {
            Some((host, port)) => (host.parse::<Ipv6Addr>().is_ok(), port),
            None => return false,
        }
    } else {
        match rest.rsplit_once(':') {
            Some((host, port)) => (
                !host.is_empty()
                    && host
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')),
                port,
            ),
            None => return false,
        }
    };
    host_ok
        && !port.is_empty()
        && port.bytes().all(|b| b.is_ascii_digit())
        && port.parse::<u16>().is_ok_and(|p| p != 0)
}

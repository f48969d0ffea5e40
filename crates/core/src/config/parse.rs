//! Parsing, serializing, and the defaults that depend on other keys.

use super::*;

impl NodeConfig {
    /// Parse and validate. `file` is only used in error messages.
    pub fn from_toml_str(text: &str, file: &Path) -> Result<NodeConfig, ConfigError> {
        let mut config: NodeConfig =
            toml::from_str(text).map_err(|e| toml_error(&e, text, file))?;
        config.timing.ttl_ms = config.store.lease_ttl_ms(config.timing.ttl_ms);
        // `/srv/pg/data/` and `/srv/pg/./data` are `/srv/pg/data`: a trailing slash once
        // broke `reinit`, which works next to the directory (audit finding).
        config.data_dir = config.data_dir.components().collect();
        config.validate().map_err(|e| e.in_file(file))?;
        Ok(config)
    }

    /// Check every rule: names, absolute paths, hosts and ports, role and database names,
    /// networks, replication limits, extra parameters (not one pgbaton manages), API
    /// address, store and timing ranges. Stops at the first error, which has `file: None`
    /// ([`from_toml_str`](Self::from_toml_str) fills it in).
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_name("cluster", &self.cluster)?;
        check_name("name", &self.name)?;
        if self.name.len() > 55 {
            // Its slot is `pgbaton_<name>`, and a slot name has at most 63 characters: a
            // longer name would be cut, and two long names could share a slot.
            return Err(ConfigError::new(
                "name",
                lit(&self.name),
                "at most 55 characters (its replication slot is pgbaton_<name>, at most 63)",
            ));
        }
        check_abs_path("data_dir", &self.data_dir)?;
        if let Some(user) = &self.os_user {
            if user.is_empty()
                || user.starts_with('-')
                || user
                    .chars()
                    .any(|c| c.is_whitespace() || c.is_control() || c == ':' || c == '/')
            {
                return Err(ConfigError::new(
                    "os_user",
                    lit(user),
                    "an OS user name (not empty, no whitespace, ':' or '/')",
                ));
            }
        }
        self.postgresql.validate()?;
        self.replication.validate(&self.postgresql)?;
        self.api.validate()?;
        self.store.validate()?;
        if let Some(b) = &self.backup {
            b.validate(&self.postgresql, &self.data_dir)?;
        }
        if let Some(b) = &self.bootstrap {
            b.validate(self.backup.as_ref(), &self.cluster)?;
        }
        self.timing.validate()
    }

    /// The config as TOML text; parses back with [`NodeConfig::from_toml_str`] to an equal
    /// config. Options that are `None` are left out.
    ///
    /// # Panics
    /// If a path is not valid UTF-8 (impossible for a config that came from TOML text).
    pub fn to_toml_string(&self) -> String {
        toml::to_string(self).expect("a NodeConfig is always representable in TOML")
    }

    /// The directory holding the data directory; base of the default file locations.
    /// (`data_dir` itself if it has no parent.)
    pub fn base_dir(&self) -> PathBuf {
        self.data_dir
            .parent()
            .unwrap_or(&self.data_dir)
            .to_path_buf()
    }

    /// `postgresql.socket_dir`, default `<base_dir>/run`.
    pub fn socket_dir(&self) -> PathBuf {
        self.postgresql
            .socket_dir
            .clone()
            .unwrap_or_else(|| self.base_dir().join("run"))
    }

    /// `postgresql.pgpass`, default `<base_dir>/pgpass`.
    pub fn pgpass_path(&self) -> PathBuf {
        self.postgresql
            .pgpass
            .clone()
            .unwrap_or_else(|| self.base_dir().join("pgpass"))
    }

    /// The pgBackRest config file pgbaton writes (with `[backup]`): `<base_dir>/pgbackrest.conf`.
    pub fn pgbackrest_conf(&self) -> PathBuf {
        self.base_dir().join("pgbackrest.conf")
    }

    /// pgBackRest's logs, locks and spool: `<base_dir>/pgbackrest/`.
    pub fn pgbackrest_dir(&self) -> PathBuf {
        self.base_dir().join("pgbackrest")
    }

    /// `postgresql.log_file`, default `<base_dir>/postgres.log`.
    pub fn log_file(&self) -> PathBuf {
        self.postgresql
            .log_file
            .clone()
            .unwrap_or_else(|| self.base_dir().join("postgres.log"))
    }

    /// The host others use to reach this PostgreSQL: `postgresql.connect_host`, default
    /// `postgresql.listen_host`.
    pub fn connect_host(&self) -> String {
        self.postgresql
            .connect_host
            .clone()
            .unwrap_or_else(|| self.postgresql.listen_host.clone())
    }

    /// The URL others use to reach this node's API: `api.connect_url`, default
    /// `http://<api.listen>`, with the IP replaced by [`connect_host`](Self::connect_host)
    /// when `api.listen` is a wildcard (`0.0.0.0` / `::`).
    pub fn api_url(&self) -> String {
        if let Some(url) = &self.api.connect_url {
            return url.clone();
        }
        // https when the API serves TLS (`[api.tls]`).
        let scheme = if self.api.tls.is_some() {
            "https"
        } else {
            "http"
        };
        match self.api.listen.parse::<SocketAddr>() {
            Ok(addr) if addr.ip().is_unspecified() => {
                let host = self.connect_host();
                if host.parse::<Ipv6Addr>().is_ok() {
                    format!("{scheme}://[{host}]:{}", addr.port())
                } else {
                    format!("{scheme}://{host}:{}", addr.port())
                }
            }
            Ok(addr) => format!("{scheme}://{addr}"),
            // Only reachable when `validate` was not called.
            Err(_) => format!("{scheme}://{}", self.api.listen),
        }
    }
}

impl ClientConfig {
    /// Parse and validate. `file` is only used in error messages.
    pub fn from_toml_str(text: &str, file: &Path) -> Result<ClientConfig, ConfigError> {
        let config: ClientConfig = toml::from_str(text).map_err(|e| toml_error(&e, text, file))?;
        config.validate().map_err(|e| e.in_file(file))?;
        Ok(config)
    }

    /// Check the cluster name, the store and `[api]`. Errors carry `file: None`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_name("cluster", &self.cluster)?;
        self.store.validate()?;
        self.api.validate()
    }

    /// The config as TOML text.
    ///
    /// # Panics
    /// If the store path is not valid UTF-8.
    pub fn to_toml_string(&self) -> String {
        toml::to_string(self).expect("a ClientConfig is always representable in TOML")
    }
}

//! Secret files (passwords, tokens, private keys): read only when this process's user owns
//! them and nobody else may read or change them.

use anyhow::{bail, Context, Result};
use std::path::Path;

/// Read a secret file (`key` names its setting in errors): refused unless this process's
/// user owns it and nobody else may read or write it (audit finding: secret files were read
/// whatever their mode). Returns the text as read.
pub fn read_secret_file(path: &Path, key: &str) -> Result<String> {
    use std::os::unix::fs::MetadataExt;
    let meta =
        std::fs::metadata(path).with_context(|| format!("read {} ({key})", path.display()))?;
    let me = nix::unistd::geteuid();
    if meta.uid() != me.as_raw() {
        let owner = nix::unistd::User::from_uid(meta.uid().into())
            .ok()
            .flatten()
            .map_or_else(|| format!("uid {}", meta.uid()), |u| u.name);
        let runner = nix::unistd::User::from_uid(me)
            .ok()
            .flatten()
            .map_or_else(|| format!("uid {me}"), |u| u.name);
        bail!(
            "{} ({key}) belongs to {owner}, not to {runner} that reads it: a secret must be \
             its reader's own. chown {runner} {}",
            path.display(),
            path.display()
        );
    }
    let mode = meta.mode() & 0o777;
    if mode & 0o077 != 0 {
        bail!(
            "{} ({key}) has mode {mode:04o}: its group or others may read or change the secret. \
             chmod 600 {}",
            path.display(),
            path.display()
        );
    }
    std::fs::read_to_string(path).with_context(|| format!("read {} ({key})", path.display()))
}

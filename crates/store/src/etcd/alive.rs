//! Members' liveness: `alive/<member>` attached to the member's own etcd lease, kept alive
//! by one message on its KeepAlive stream (no write), granted and put again when etcd no
//! longer knows it, or when the TTL asked for changed (the cluster's timing): a key that
//! outlived its member by the old TTL would keep a dead member alive that long. The view
//! fills in `MemberState::seen_ms` from those keys.

use super::lease::lease_secs;
use super::EtcdStore;
use crate::Result;
use etcd_client::PutOptions;

impl EtcdStore {
    pub(super) async fn keep_member_alive(&self, member: &str, ttl_ms: u64) -> Result<()> {
        const ACTION: &str = "say the member is alive";
        let current = *self.alive_lease.lock().unwrap_or_else(|e| e.into_inner());
        let secs = lease_secs(ttl_ms);
        if let Some((lease, _)) = current.filter(|(_, granted)| *granted == secs) {
            if self.keep_alive_in(&self.alive_keeper, lease).await? > 0 {
                return Ok(());
            }
        }
        let lease = self
            .call(
                ACTION,
                |mut c| async move { c.lease_grant(secs, None).await },
            )
            .await?
            .id();
        let key = self.key(&format!("alive/{member}"));
        self.call(ACTION, |mut c| {
            let key = key.clone();
            async move {
                c.put(key, "", Some(PutOptions::new().with_lease(lease)))
                    .await
            }
        })
        .await?;
        *self.alive_lease.lock().unwrap_or_else(|e| e.into_inner()) = Some((lease, secs));
        if let Some((old, _)) = current.filter(|(old, _)| *old != lease) {
            self.revoke(old).await;
        }
        Ok(())
    }
}

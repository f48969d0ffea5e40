//! Members' liveness: `alive/<member>` attached to the member's own etcd lease, kept alive
//! by one message on its KeepAlive stream (no write), granted and put again when etcd no
//! longer knows it. The view fills in `MemberState::seen_ms` from those keys.

use super::lease::lease_secs;
use super::EtcdStore;
use crate::Result;
use etcd_client::PutOptions;

impl EtcdStore {
    pub(super) async fn keep_member_alive(&self, member: &str, ttl_ms: u64) -> Result<()> {
        const ACTION: &str = "say the member is alive";
        let current = *self.alive_lease.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(lease) = current {
            if self.keep_alive_in(&self.alive_keeper, lease).await? > 0 {
                return Ok(());
            }
        }
        let secs = lease_secs(ttl_ms);
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
        *self.alive_lease.lock().unwrap_or_else(|e| e.into_inner()) = Some(lease);
        Ok(())
    }
}

//! `librechat.max_connections_per_instance` at the connection level (SPEC
//! section 9): `client::UpstreamClient` opens a connection only while it
//! holds one of a fixed number of slots, kept until the connection closes,
//! whether it is busy or idle. Together with the per-request slots of
//! `Upstream::connection_slot` this bounds what a thread ever has open to
//! an instance, even when a new request races a connection on its way back
//! to the list. Waiting in vain for a slot is chatgate's own limit.

/// Waiting for a connection slot took longer than the connect timeout:
/// chatgate's own limit, never the instance's failure.
#[derive(Debug, thiserror::Error)]
#[error("every connection this replica may open to the instance is in use")]
pub struct OwnLimit;

/// Whether `error` (anywhere in its chain) is chatgate's own connection limit.
pub fn is_own_limit(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(error);
    while let Some(e) = source {
        if e.is::<OwnLimit>() {
            return true;
        }
        source = e.source();
    }
    false
}

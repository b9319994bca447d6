//! Safe by default: a stream listener takes whatever connects, and a backup or a migration
//! destination would run the VM it is handed. Without a pair key that is anyone who reaches the
//! port, so such a listener must be reachable from this host only (a loopback address or a
//! `unix:` path) unless the caller says `"insecure": true` (a private link it trusts).

use super::AuthError;
use crate::transport::Endpoint;

/// Whether listening on `endpoint` is allowed: always with a key; without one only on a local
/// endpoint or when the caller said `insecure`.
pub fn check_listener(endpoint: &Endpoint, keyed: bool, insecure: bool) -> Result<(), AuthError> {
    if keyed || insecure || endpoint.is_local_only() {
        return Ok(());
    }
    Err(AuthError::InsecureListen {
        endpoint: endpoint.to_string(),
    })
}

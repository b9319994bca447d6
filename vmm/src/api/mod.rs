//! REST API over a Unix socket, Cloud Hypervisor's endpoint names under `/api/v1/`.

pub mod types;

pub use types::{ApiError, ApiRequest, ApiResponse, VmmEvent};

// TEMPORARY until the API server branch lands.
/// API server errors.
#[derive(Debug, thiserror::Error)]
pub enum ApiServerError {
    #[error("the API server is not built yet")]
    NotBuilt,
}
/// Running server.
pub struct ApiServerHandle;
impl ApiServerHandle {
    /// Waits for the server thread.
    pub fn join(self) {}
}
/// Starts the API server.
pub fn start_server(
    _socket: &std::path::Path,
    _tx: std::sync::mpsc::Sender<VmmEvent>,
) -> Result<ApiServerHandle, ApiServerError> {
    Err(ApiServerError::NotBuilt)
}

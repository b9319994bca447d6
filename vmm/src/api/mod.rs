//! REST API over a Unix socket, Cloud Hypervisor's endpoint names under `/api/v1/`.

pub mod types;

pub use types::{ApiError, ApiRequest, ApiResponse, VmmEvent};

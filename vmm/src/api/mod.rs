//! REST API over a Unix socket, Cloud Hypervisor's endpoint names under `/api/v1/`.

pub mod ft_metrics;
pub mod host;
pub mod metrics;
pub mod metrics_server;
pub mod routes;
pub mod server;
pub mod socket;
pub mod types;

pub use server::{start_server, start_server_with_timeout, ApiServerError, ApiServerHandle};
pub use types::{
    ApiError, ApiRequest, ApiResponse, ReceiveMigrationConfig, RestoreConfig, SendMigrationConfig,
    SnapshotConfig,
};

#[cfg(test)]
mod openapi_tests;

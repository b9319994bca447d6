//! What the API server hands to the VMM thread, and what it gets back.

use crate::config::VmConfig;
use serde::Serialize;
use std::sync::mpsc::Sender;

/// One API call, already parsed and validated for shape (not for state).
#[derive(Debug)]
pub enum ApiRequest {
    VmmPing,
    VmmShutdown,
    VmCreate(Box<VmConfig>),
    VmBoot,
    VmInfo,
    VmPause,
    VmResume,
    VmShutdown,
    VmReboot,
    VmDelete,
    VmCounters,
}

/// An API call that failed: the HTTP status to answer with and the error chain, outermost first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApiError {
    #[serde(skip)]
    pub status: u16,
    /// The error's message followed by each `source()` in turn.
    pub error: Vec<String>,
}

impl ApiError {
    /// Builds an API error from any error, walking its `source()` chain.
    pub fn from_error(status: u16, err: &(dyn std::error::Error + 'static)) -> Self {
        let mut error = vec![err.to_string()];
        let mut cur = err.source();
        while let Some(e) = cur {
            error.push(e.to_string());
            cur = e.source();
        }
        ApiError { status, error }
    }

    /// An API error with a single message.
    pub fn new(status: u16, msg: impl Into<String>) -> Self {
        ApiError {
            status,
            error: vec![msg.into()],
        }
    }
}

/// Successful answer: `None` is 204 No Content, `Some` is 200 with that JSON body.
pub type ApiResponse = Result<Option<serde_json::Value>, ApiError>;

/// Everything the VMM thread reacts to.
#[derive(Debug)]
pub enum VmmEvent {
    /// An API call and where to send its answer.
    Api(ApiRequest, Sender<ApiResponse>),
    /// The guest of boot `boot_id` asked for a reset (i8042, ACPI reset register, triple fault).
    GuestReset { boot_id: u64 },
    /// The guest of boot `boot_id` powered itself off (ACPI S5).
    GuestPowerOff { boot_id: u64 },
    /// A vCPU thread of boot `boot_id` stopped on an error it could not handle.
    VcpuFailed { boot_id: u64, id: u8, error: String },
}

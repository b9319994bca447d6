//! `--metrics-listen ADDR:PORT`: the Prometheus exposition over plain TCP for scrapers that cannot
//! reach the API's Unix socket. Read-only: it serves `GET /metrics` and nothing else.

// Host-side: the server's start and end.
#![allow(clippy::disallowed_macros)]

use super::server::metrics_response;
use crate::controller::View;
use tiny_http::{Method, Response, Server};

/// Why the metrics listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum MetricsServerError {
    /// The `--metrics-listen` address cannot be bound or served on.
    #[error("cannot listen for metrics on {addr}")]
    Bind {
        /// The address as given.
        addr: String,
        /// Why binding or serving failed.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Spawning the metrics thread failed.
    #[error("cannot start the metrics thread")]
    Spawn(#[source] std::io::Error),
}

/// Binds `addr` and serves scrapes on a thread of its own for the life of the process, from the
/// VMM's published view (a scrape never waits for the VMM thread).
pub fn start_metrics_server(addr: &str, view: View) -> Result<(), MetricsServerError> {
    // Bound here (socket(2) is the VMM thread's); tiny_http's threads start on the metrics
    // thread, under its seccomp filter.
    let listener = std::net::TcpListener::bind(addr).map_err(|e| MetricsServerError::Bind {
        addr: addr.to_string(),
        source: Box::new(e),
    })?;
    std::thread::Builder::new()
        .name("tandem_metrics".into())
        .spawn(move || {
            crate::seccomp::apply(crate::seccomp::ThreadKind::Api);
            let server = match Server::from_listener(listener, None) {
                Ok(s) => s,
                Err(e) => {
                    log::error!("metrics: cannot serve: {e}");
                    return;
                }
            };
            for request in server.incoming_requests() {
                let path = request
                    .url()
                    .split('?')
                    .next()
                    .unwrap_or_default()
                    .to_string();
                let response = if request.method() != &Method::Get {
                    Response::from_string("only GET\n").with_status_code(405)
                } else if path != "/metrics" && path != "/api/v1/metrics" {
                    Response::from_string("try /metrics\n").with_status_code(404)
                } else {
                    metrics_response(view.metrics())
                };
                if let Err(e) = request.respond(response) {
                    log::debug!("metrics: cannot answer a scrape: {e}");
                }
            }
        })
        .map_err(MetricsServerError::Spawn)?;
    Ok(())
}

//! The VM's counters as atomics that outlive any one owner of the VM: the API and the metrics
//! read them on their own threads while the VMM, a migration or an FT pair thread holds the VM.

use super::vcpu::VcpuShared;
use devices::serial::SerialCounters;
use devices::virtio::net::NetCounters;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Per-vCPU and per-device counters, by name (`vm.counters`).
pub type CounterMap = BTreeMap<String, BTreeMap<String, u64>>;

/// Handles on every counter of one VM; cheap to clone, readable from any thread.
#[derive(Clone, Default)]
pub struct CounterSource {
    pub(super) vcpus: Vec<(u8, Arc<VcpuShared>)>,
    pub(super) net: Vec<(String, Arc<NetCounters>)>,
    pub(super) serial: Option<Arc<SerialCounters>>,
}

fn named(pairs: impl IntoIterator<Item = (&'static str, u64)>) -> BTreeMap<String, u64> {
    pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

impl CounterSource {
    /// The counters now: one map per vCPU (`vcpu<N>`), per NIC (`net_<id>`) and the serial port.
    pub fn read(&self) -> CounterMap {
        let mut out = BTreeMap::new();
        for (id, v) in &self.vcpus {
            let c = &v.counters;
            out.insert(
                format!("vcpu{id}"),
                named([
                    ("exits", c.exits.load(Ordering::Relaxed)),
                    ("io_exits", c.io_exits.load(Ordering::Relaxed)),
                    ("mmio_exits", c.mmio_exits.load(Ordering::Relaxed)),
                    ("unhandled_mmio", c.unhandled_mmio.load(Ordering::Relaxed)),
                    ("unhandled_io", c.unhandled_io.load(Ordering::Relaxed)),
                ]),
            );
        }
        for (id, c) in &self.net {
            out.insert(format!("net_{id}"), named(c.snapshot()));
        }
        if let Some(s) = &self.serial {
            out.insert(
                "serial".to_string(),
                named([
                    ("tx_bytes", s.tx_bytes.load(Ordering::Relaxed)),
                    ("tx_lost_bytes", s.tx_lost_bytes.load(Ordering::Relaxed)),
                ]),
            );
        }
        out
    }
}

//! The FT families of the metrics endpoint, from `ft.status`'s snapshot (gauges: role, state,
//! backlog, ages) and the status handle's life-long counters (checkpoints, pause histogram, bytes,
//! acks, heartbeats, failovers). Present on every VMM, paired or not, so dashboards need no
//! special case for a standalone one.

use super::metrics::Exposition;
use ft::heartbeat::Path;
use ft::status::{FtCounters, FtState, FtStatus, Role};

const ROLES: [Role; 3] = [Role::Standalone, Role::Primary, Role::Backup];
const STATES: [FtState; 5] = [
    FtState::Syncing,
    FtState::Protected,
    FtState::Unprotected,
    FtState::FailingOver,
    FtState::Halted,
];
const PATHS: [(Path, &str); 2] = [(Path::Channel, "channel"), (Path::Udp, "udp")];

/// The API's name of a role or state (`ft.status` spells them the same way).
fn api_name(v: impl serde::Serialize) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

fn seconds(ms: u64) -> f64 {
    ms as f64 / 1000.0
}

/// Adds every `tandem_ft_*` family.
pub fn add_ft(e: &mut Exposition, s: &FtStatus, c: &FtCounters) {
    for r in ROLES {
        e.gauge(
            "tandem_ft_role",
            "1 for this VMM's FT role (standalone, primary, backup)",
            vec![("role", api_name(r))],
            f64::from(u8::from(s.role == r)),
        );
    }
    for st in STATES {
        e.gauge(
            "tandem_ft_state",
            "1 for this VMM's FT state",
            vec![("state", api_name(st))],
            f64::from(u8::from(s.state == st)),
        );
    }
    e.gauge(
        "tandem_ft_generation",
        "arbitration generation this VMM belongs to",
        vec![],
        s.generation as f64,
    );
    if let Some(n) = s.last_committed_epoch {
        e.gauge(
            "tandem_ft_last_committed_epoch",
            "last checkpoint acked by the backup (primary) or committed (backup)",
            vec![],
            n as f64,
        );
    }
    e.counter(
        "tandem_ft_checkpoints_total",
        "checkpoints committed: acked (primary) or verified and applied (backup)",
        vec![],
        c.checkpoints as f64,
    );
    let buckets: Vec<(Option<f64>, u64)> = c
        .pause_us
        .cumulative()
        .into_iter()
        .map(|(le, n)| (le.map(|us| us as f64 / 1e6), n))
        .collect();
    e.histogram(
        "tandem_ft_checkpoint_pause_seconds",
        "guest pause per checkpoint",
        vec![],
        &buckets,
        c.pause_us.sum as f64 / 1e6,
        c.pause_us.count,
    );
    for (step, d) in c.pause_steps.named() {
        e.counter(
            "tandem_ft_pause_step_seconds_total",
            "guest pause per step, summed over the primary's checkpoints: stop, dirty_log, \
             backlog_wait, copy, vcpu_state, devices, gates, resume",
            vec![("step", step.to_string())],
            d.as_secs_f64(),
        );
    }
    e.gauge(
        "tandem_ft_throttle_ratio",
        "share of the guest's vCPU time flow control takes away now (0: not throttled)",
        vec![],
        f64::from(s.flow.throttle_permille) / 1000.0,
    );
    e.gauge(
        "tandem_ft_epoch_interval_seconds",
        "the epoch length flow control chose (at most the checkpoint interval)",
        vec![],
        s.flow.epoch_us as f64 / 1e6,
    );
    e.gauge(
        "tandem_ft_hot_pages",
        "pages the guest rewrites every epoch, kept writable between checkpoints",
        vec![],
        s.flow.hot_pages as f64,
    );
    e.gauge(
        "tandem_ft_backlog_limit_bytes",
        "bound on bytes captured but not yet acked (ft.enable max_backlog_bytes)",
        vec![],
        s.flow.max_backlog_bytes as f64,
    );
    e.gauge(
        "tandem_ft_checkpoint_bytes",
        "stream bytes of the latest checkpoint",
        vec![],
        s.bytes_last_checkpoint as f64,
    );
    e.counter(
        "tandem_ft_replicated_bytes_total",
        "stream bytes of all checkpoints",
        vec![],
        c.replicated_bytes as f64,
    );
    for (encoding, n) in [
        ("whole", c.pages.whole),
        ("delta", c.pages.delta),
        ("zero", c.pages.zero),
    ] {
        e.counter(
            "tandem_ft_checkpoint_pages_total",
            "checkpoint pages sent (primary), by encoding: whole, delta against the last sent copy, zero",
            vec![("encoding", encoding.to_string())],
            n as f64,
        );
    }
    e.gauge(
        "tandem_ft_backlog_checkpoints",
        "checkpoints captured but not yet acked",
        vec![],
        s.backlog_epochs as f64,
    );
    e.gauge(
        "tandem_ft_backlog_bytes",
        "staged bytes of checkpoints captured but not yet acked",
        vec![],
        s.backlog_bytes as f64,
    );
    e.counter(
        "tandem_ft_acks_total",
        "checkpoint acks received (primary) or sent (backup)",
        vec![],
        c.acks as f64,
    );
    if let Some(ms) = s.ack_age_ms {
        e.gauge(
            "tandem_ft_ack_age_seconds",
            "time since the last ack (primary) or commit (backup)",
            vec![],
            seconds(ms),
        );
    }
    for (path, name) in PATHS {
        let h = c.heartbeats(path);
        e.counter(
            "tandem_ft_heartbeats_sent_total",
            "heartbeats sent to the peer, per liveness path",
            vec![("path", name.to_string())],
            h.sent as f64,
        );
        e.counter(
            "tandem_ft_heartbeats_received_total",
            "heartbeats received from the peer, per liveness path",
            vec![("path", name.to_string())],
            h.received as f64,
        );
        let age = match path {
            Path::Channel => s.heartbeat_age.channel_ms,
            Path::Udp => s.heartbeat_age.udp_ms,
        };
        if let Some(ms) = age {
            e.gauge(
                "tandem_ft_heartbeat_age_seconds",
                "time since the peer was last heard, per liveness path",
                vec![("path", name.to_string())],
                seconds(ms),
            );
        }
    }
    e.counter(
        "tandem_ft_failovers_total",
        "failovers completed here (a backup that went live)",
        vec![],
        c.failovers as f64,
    );
    let d = &s.disk_sync;
    e.gauge(
        "tandem_ft_disk_sync_size_bytes",
        "bytes of the replicated disks the current (or last) initial sync copies",
        vec![],
        d.bytes_total as f64,
    );
    e.gauge(
        "tandem_ft_disk_sync_copied_bytes",
        "how far the initial sync's full pass over the replicated disks has come",
        vec![],
        d.bytes_copied as f64,
    );
    e.gauge(
        "tandem_ft_disk_sync_dirty_blocks",
        "4 KiB disk blocks the guest wrote after they were copied, waiting for the next round",
        vec![],
        d.dirty_blocks as f64,
    );
    e.counter(
        "tandem_ft_disk_sync_sent_bytes_total",
        "disk block data the initial syncs sent (primary) or received (backup); holes and zero blocks are not sent",
        vec![],
        c.disk_sync_bytes as f64,
    );
    add_scrub(e, s, c);
}

/// The replica scrub's families (primary): what it compared, and the differences it found.
fn add_scrub(e: &mut Exposition, s: &FtStatus, c: &FtCounters) {
    e.counter(
        "tandem_ft_scrub_regions_total",
        "regions of memory, disk and device state the replica scrub compared with the backup's copy",
        vec![],
        c.scrub.regions as f64,
    );
    e.counter(
        "tandem_ft_scrub_bytes_total",
        "bytes of memory and disk the replica scrub compared with the backup's copy",
        vec![],
        c.scrub.bytes as f64,
    );
    for (kind, n) in [
        ("memory", c.scrub.mismatches_memory),
        ("disk", c.scrub.mismatches_disk),
        ("device", c.scrub.mismatches_device),
    ] {
        e.counter(
            "tandem_ft_scrub_mismatches_total",
            "regions the replica scrub found different on the backup (each is re-sent), by kind",
            vec![("kind", kind.to_string())],
            n as f64,
        );
    }
    e.gauge(
        "tandem_ft_scrub_unhealed_regions",
        "regions of this pair still different on the backup after every repair attempt",
        vec![],
        s.scrub.unhealed as f64,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use ft::status::StatusHandle;
    use std::time::Duration;

    fn value(s: &prometheus_parse::Scrape, name: &str, label: Option<(&str, &str)>) -> f64 {
        s.samples
            .iter()
            .filter(|x| x.metric == name)
            .filter(|x| label.is_none_or(|(k, v)| x.labels.get(k) == Some(v)))
            .map(|x| match x.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => f64::NAN,
            })
            .sum()
    }

    #[test]
    fn ft_families_follow_the_status() {
        let st = StatusHandle::new();
        st.enable(Role::Primary, 3, None, "ft.enable").unwrap();
        st.transition(FtState::Protected, "synced").unwrap();
        for us in [80, 400, 3000] {
            st.record_checkpoint(Duration::from_micros(us), 1000);
        }
        st.record_commit(3);
        st.record_ack();
        st.record_pause_steps(&ft::checkpoint::PauseSteps {
            copy: Duration::from_micros(250),
            ..Default::default()
        });
        st.set_flow(&ft::checkpoint::FlowReport {
            throttle_permille: 250,
            limited_by: ft::checkpoint::FlowLimit::Backlog,
            epoch: Duration::from_millis(10),
            target_pause: Duration::from_millis(4),
            max_backlog_bytes: 1 << 20,
            hot_pages: 15,
        });
        st.set_backlog(8192, 2);
        st.record_heartbeat_sent(Path::Channel);
        let disk = st.disk_progress();
        disk.start(8 << 20);
        disk.copied(4 << 20);
        disk.sent(3 << 20);
        disk.set_dirty(7);
        let mut e = Exposition::default();
        add_ft(&mut e, &st.snapshot(), &st.counters());
        let text = e.render();
        let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
            .expect("valid exposition");
        let v = |n, l| value(&scrape, n, l);
        assert_eq!(v("tandem_ft_role", Some(("role", "primary"))), 1.0);
        assert_eq!(v("tandem_ft_role", None), 1.0, "one role at a time");
        assert_eq!(v("tandem_ft_state", Some(("state", "protected"))), 1.0);
        assert_eq!(v("tandem_ft_state", Some(("state", "failing_over"))), 0.0);
        assert_eq!(v("tandem_ft_generation", None), 3.0);
        assert_eq!(v("tandem_ft_last_committed_epoch", None), 3.0);
        assert_eq!(v("tandem_ft_checkpoints_total", None), 1.0);
        assert_eq!(v("tandem_ft_replicated_bytes_total", None), 3000.0);
        assert_eq!(v("tandem_ft_backlog_checkpoints", None), 2.0);
        assert_eq!(v("tandem_ft_backlog_bytes", None), 8192.0);
        assert_eq!(v("tandem_ft_backlog_limit_bytes", None), 1048576.0);
        assert_eq!(v("tandem_ft_throttle_ratio", None), 0.25);
        assert_eq!(v("tandem_ft_hot_pages", None), 15.0);
        assert_eq!(v("tandem_ft_epoch_interval_seconds", None), 0.01);
        assert_eq!(
            v("tandem_ft_pause_step_seconds_total", Some(("step", "copy"))),
            0.00025
        );
        assert_eq!(v("tandem_ft_pause_step_seconds_total", None), 0.00025);
        assert_eq!(
            v("tandem_ft_heartbeats_sent_total", Some(("path", "channel"))),
            1.0
        );
        assert_eq!(v("tandem_ft_disk_sync_size_bytes", None), 8388608.0);
        assert_eq!(v("tandem_ft_disk_sync_copied_bytes", None), 4194304.0);
        assert_eq!(v("tandem_ft_disk_sync_dirty_blocks", None), 7.0);
        assert_eq!(v("tandem_ft_disk_sync_sent_bytes_total", None), 3145728.0);
        assert_eq!(v("tandem_ft_checkpoint_pause_seconds_count", None), 3.0);
        assert!((v("tandem_ft_checkpoint_pause_seconds_sum", None) - 0.00348).abs() < 1e-9);
        let h = scrape
            .samples
            .iter()
            .find(|x| x.metric == "tandem_ft_checkpoint_pause_seconds")
            .expect("pause histogram");
        let prometheus_parse::Value::Histogram(b) = &h.value else {
            panic!("not a histogram")
        };
        let at = |le: f64| b.iter().find(|c| c.less_than == le).map(|c| c.count);
        assert_eq!(at(0.0001), Some(1.0));
        assert_eq!(at(0.0005), Some(2.0));
        assert_eq!(at(0.005), Some(3.0));
        assert_eq!(v("tandem_ft_scrub_regions_total", None), 0.0);
        st.record_scrub_checked(
            &ft::scrub::ScrubChecked {
                regions: 5,
                bytes: 4096,
                mismatches: vec!["memory", "disk", "disk"],
            },
            Some("scrub: memory differed"),
        );
        let text2 = {
            let mut e = Exposition::default();
            add_ft(&mut e, &st.snapshot(), &st.counters());
            e.render()
        };
        let scrape2 = prometheus_parse::Scrape::parse(text2.lines().map(|l| Ok(l.to_string())))
            .expect("valid exposition");
        let v2 = |n, l| value(&scrape2, n, l);
        assert_eq!(v2("tandem_ft_scrub_regions_total", None), 5.0);
        assert_eq!(v2("tandem_ft_scrub_bytes_total", None), 4096.0);
        let kind = |k| v2("tandem_ft_scrub_mismatches_total", Some(("kind", k)));
        assert_eq!(
            (kind("memory"), kind("disk"), kind("device")),
            (1.0, 2.0, 0.0)
        );
        assert_eq!(st.snapshot().reason, "scrub: memory differed");
        // No ack age or heartbeat age without a peer heard: absent rather than a fake zero.
        assert!(text.contains("tandem_ft_ack_age_seconds "));
        assert!(!text.contains("tandem_ft_heartbeat_age_seconds"));
    }
}

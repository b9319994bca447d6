//! A VM without KVM: memory in a Vec, a "guest" thread that writes random pages at a set rate, and
//! state that is a blob derived from how many writes the guest made.

use ft::bitmap::DirtyBitmap;
use ft::frame::PAGE_SIZE;
use ft::vm::{MigratableVm, VmOpError, VmState};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

const TICK: Duration = Duration::from_millis(1);

struct Shared {
    mem: Mutex<Vec<u8>>,
    /// `Some` while dirty logging is on.
    dirty: Mutex<Option<DirtyBitmap>>,
    /// Whether the guest may run; the dirtier holds this lock while it writes, so `pause`
    /// returning means no write is in flight.
    running: Mutex<bool>,
    wake: Condvar,
    writes: AtomicU64,
    stop: AtomicBool,
}

/// The fake VM.
pub struct FakeVm {
    shared: Arc<Shared>,
    pages: u64,
    vcpus: u32,
    dirtier: Option<JoinHandle<()>>,
    /// Destination side: make restore_state fail.
    pub fail_restore: bool,
    restored: Option<VmState>,
    pub pauses: u32,
    pub resumes: u32,
    /// Pages 0..hot_pages count as rewritten between any two dirty-log reads, like a guest's hot
    /// working set; makes "never converges" independent of thread scheduling.
    pub hot_pages: u64,
}

impl FakeVm {
    /// A running source: about half its pages hold data, the rest are zero, and a guest thread
    /// dirties `rate` pages per second (one in eight written back to all zeros).
    pub fn source(pages: u64, vcpus: u32, rate: u64, seed: u64) -> FakeVm {
        let mut mem = vec![0u8; pages as usize * PAGE_SIZE];
        let mut s = tandem_testkit::Rng::new(seed);
        for (i, page) in mem.chunks_exact_mut(PAGE_SIZE).enumerate() {
            if i % 2 == 0 || s.next_u64().is_multiple_of(3) {
                for w in page.chunks_exact_mut(8) {
                    w.copy_from_slice(&s.next_u64().to_le_bytes());
                }
            }
        }
        let vm = FakeVm::with_memory(mem, vcpus, true);
        let shared = vm.shared.clone();
        let mut vm = vm;
        vm.dirtier = Some(std::thread::spawn(move || {
            dirtier(shared, pages, rate, seed ^ 0xdead_beef)
        }));
        vm
    }

    /// A destination: zeroed memory, not running, waiting to be restored.
    pub fn destination(pages: u64, vcpus: u32) -> FakeVm {
        FakeVm::with_memory(vec![0u8; pages as usize * PAGE_SIZE], vcpus, false)
    }

    fn with_memory(mem: Vec<u8>, vcpus: u32, running: bool) -> FakeVm {
        let pages = (mem.len() / PAGE_SIZE) as u64;
        FakeVm {
            shared: Arc::new(Shared {
                mem: Mutex::new(mem),
                dirty: Mutex::new(None),
                running: Mutex::new(running),
                wake: Condvar::new(),
                writes: AtomicU64::new(0),
                stop: AtomicBool::new(false),
            }),
            pages,
            vcpus,
            dirtier: None,
            fail_restore: false,
            restored: None,
            pauses: 0,
            resumes: 0,
            hot_pages: 0,
        }
    }

    /// A copy of guest memory.
    pub fn memory(&self) -> Vec<u8> {
        self.shared.mem.lock().unwrap().clone()
    }

    /// Whether the guest runs.
    pub fn is_running(&self) -> bool {
        *self.shared.running.lock().unwrap()
    }

    /// Guest writes so far.
    pub fn writes(&self) -> u64 {
        self.shared.writes.load(Ordering::SeqCst)
    }

    /// Whether dirty logging is on.
    #[allow(dead_code)]
    pub fn dirty_logging(&self) -> bool {
        self.shared.dirty.lock().unwrap().is_some()
    }

    /// The state given to restore_state.
    pub fn restored_state(&self) -> Option<&VmState> {
        self.restored.as_ref()
    }

    fn state_now(&self) -> VmState {
        state_for(self.writes(), self.vcpus)
    }

    /// A handle that reads memory and state from another thread (FT hooks snapshot the primary
    /// at each capture point through it).
    #[allow(dead_code)]
    pub fn probe(&self) -> Probe {
        Probe {
            shared: self.shared.clone(),
            vcpus: self.vcpus,
        }
    }

    fn check_pfn(&self, pfn: u64) -> Result<usize, VmOpError> {
        if pfn >= self.pages {
            return Err(VmOpError::PageOutOfRange {
                pfn,
                pages: self.pages,
            });
        }
        Ok(pfn as usize * PAGE_SIZE)
    }

    fn not_running(&self, what: &'static str) -> Result<(), VmOpError> {
        if self.is_running() {
            return Err(VmOpError::InvalidState {
                what,
                reason: "the VM is running".into(),
            });
        }
        Ok(())
    }
}

fn state_for(w: u64, vcpus: u32) -> VmState {
    VmState {
        vcpus: (0..vcpus)
            .map(|i| format!("vcpu {i} rip={w:#x}").into_bytes())
            .collect(),
        devices: format!("devices after {w} writes").into_bytes().repeat(100),
    }
}

/// Reads a fake VM's memory and state without owning it.
#[derive(Clone)]
#[allow(dead_code)]
pub struct Probe {
    shared: Arc<Shared>,
    vcpus: u32,
}

#[allow(dead_code)]
impl Probe {
    /// A copy of guest memory.
    pub fn memory(&self) -> Vec<u8> {
        self.shared.mem.lock().unwrap().clone()
    }
    /// The state save_state would return now.
    pub fn state(&self) -> VmState {
        state_for(self.shared.writes.load(Ordering::SeqCst), self.vcpus)
    }
    /// Flips every bit of the byte at `at` behind the VM's back (a replica gone wrong).
    pub fn flip(&self, at: usize) {
        self.shared.mem.lock().unwrap()[at] ^= 0xff;
    }
}

fn dirtier(shared: Arc<Shared>, pages: u64, rate: u64, seed: u64) {
    let mut s = tandem_testkit::Rng::new(seed);
    let mut owed = 0.0f64;
    while !shared.stop.load(Ordering::SeqCst) {
        {
            let mut running = shared.running.lock().unwrap();
            while !*running && !shared.stop.load(Ordering::SeqCst) {
                running = shared.wake.wait(running).unwrap();
            }
            owed += rate as f64 * TICK.as_secs_f64();
            while owed >= 1.0 {
                owed -= 1.0;
                let pfn = s.next_u64() % pages;
                let at = pfn as usize * PAGE_SIZE;
                let mut mem = shared.mem.lock().unwrap();
                let page = &mut mem[at..at + PAGE_SIZE];
                if s.next_u64().is_multiple_of(8) {
                    page.fill(0);
                } else {
                    let off = (s.next_u64() as usize % (PAGE_SIZE / 8)) * 8;
                    page[off..off + 8].copy_from_slice(&s.next_u64().to_le_bytes());
                }
                drop(mem);
                if let Some(d) = shared.dirty.lock().unwrap().as_mut() {
                    d.set(pfn);
                }
                shared.writes.fetch_add(1, Ordering::SeqCst);
            }
        }
        std::thread::sleep(TICK);
    }
}

impl Drop for FakeVm {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.wake.notify_all();
        if let Some(t) = self.dirtier.take() {
            let _ = t.join();
        }
    }
}

impl MigratableVm for FakeVm {
    fn memory_size(&self) -> u64 {
        self.pages * PAGE_SIZE as u64
    }
    fn vcpu_count(&self) -> u32 {
        self.vcpus
    }
    fn config_json(&self) -> String {
        format!(r#"{{"vcpus":{},"pages":{}}}"#, self.vcpus, self.pages)
    }
    fn read_page(&self, pfn: u64, buf: &mut [u8; PAGE_SIZE]) -> Result<(), VmOpError> {
        let at = self.check_pfn(pfn)?;
        buf.copy_from_slice(&self.shared.mem.lock().unwrap()[at..at + PAGE_SIZE]);
        Ok(())
    }
    fn write_page(&mut self, pfn: u64, data: &[u8; PAGE_SIZE]) -> Result<(), VmOpError> {
        self.not_running("write_page")?;
        let at = self.check_pfn(pfn)?;
        self.shared.mem.lock().unwrap()[at..at + PAGE_SIZE].copy_from_slice(data);
        Ok(())
    }
    fn start_dirty_log(&mut self) -> Result<(), VmOpError> {
        *self.shared.dirty.lock().unwrap() = Some(DirtyBitmap::new(self.pages));
        Ok(())
    }
    fn take_dirty_pages(&mut self) -> Result<DirtyBitmap, VmOpError> {
        let mut d = self.shared.dirty.lock().unwrap();
        let cur = d.as_mut().ok_or(VmOpError::InvalidState {
            what: "take_dirty_pages",
            reason: "dirty logging is off".into(),
        })?;
        let mut taken = std::mem::replace(cur, DirtyBitmap::new(self.pages));
        for pfn in 0..self.hot_pages {
            taken.set(pfn);
        }
        Ok(taken)
    }
    fn stop_dirty_log(&mut self) -> Result<(), VmOpError> {
        *self.shared.dirty.lock().unwrap() = None;
        Ok(())
    }
    fn pause(&mut self) -> Result<(), VmOpError> {
        *self.shared.running.lock().unwrap() = false;
        self.pauses += 1;
        Ok(())
    }
    fn resume(&mut self) -> Result<(), VmOpError> {
        *self.shared.running.lock().unwrap() = true;
        self.shared.wake.notify_all();
        self.resumes += 1;
        Ok(())
    }
    fn set_vcpus_running(&mut self, running: bool) -> Result<bool, VmOpError> {
        // No devices: stopping the vCPUs is stopping the dirtier.
        *self.shared.running.lock().unwrap() = running;
        self.shared.wake.notify_all();
        Ok(true)
    }
    fn save_state(&mut self) -> Result<VmState, VmOpError> {
        self.not_running("save_state")?;
        Ok(self.state_now())
    }
    fn restore_state(&mut self, state: &VmState) -> Result<(), VmOpError> {
        self.not_running("restore_state")?;
        if self.fail_restore {
            return Err(VmOpError::StateRejected {
                reason: "test destination refuses every state".into(),
            });
        }
        self.restored = Some(state.clone());
        Ok(())
    }
}

impl FakeVm {
    /// The state the source would save now (only meaningful while paused).
    #[allow(dead_code)]
    pub fn current_state(&self) -> VmState {
        self.state_now()
    }
}

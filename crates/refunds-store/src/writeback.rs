//! Background writeback of the store file.
//!
//! The pages of `Durability::None` commits reach the kernel's page cache as
//! redb evicts them from its write buffer (redb 4.6 writes none at such a
//! commit itself), and with the usual dirty thresholds (10% of memory) the
//! kernel does not start writing them for up to 30 s. The next durable commit then waits in
//! `fdatasync` for every page written since the last one, on the writer's
//! thread, while the other core idles. After each non-durable commit the
//! writer nudges this thread, which syncs the file itself, so the disk works
//! while the writer computes the next batch and the durable commit finds
//! little left to wait for. With every commit durable (the sources' default)
//! it is never nudged.
//!
//! It changes no guarantee: a sync here only makes pages durable earlier; a
//! crash still rolls back to the last durable commit, whose header redb
//! writes and syncs itself. A failed sync is logged and otherwise ignored for
//! the same reason.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};
use std::thread::JoinHandle;

pub(crate) struct Writeback {
    /// Dropped first on close, which ends the thread.
    wake: Option<SyncSender<()>>,
    thread: Option<JoinHandle<()>>,
    syncs: Arc<AtomicU64>,
}

impl Writeback {
    /// Starts the thread on its own handle of the file; `None` (logged) when
    /// the file cannot be opened again or no thread can be started, which
    /// only costs speed.
    pub(crate) fn start(path: &Path) -> Option<Writeback> {
        let file = match File::open(path) {
            Ok(file) => file,
            Err(err) => {
                tracing::debug!(%err, "no background writeback of the store file");
                return None;
            }
        };
        // Capacity 1: nudges made while a sync runs fold into one more sync.
        let (wake, woken) = sync_channel::<()>(1);
        let syncs = Arc::new(AtomicU64::new(0));
        let counted = Arc::clone(&syncs);
        let thread = std::thread::Builder::new().name("store-writeback".to_owned()).spawn(move || {
            for () in woken {
                let started = std::time::Instant::now();
                if let Err(err) = file.sync_data() {
                    tracing::debug!(%err, "background writeback of the store file failed");
                }
                counted.fetch_add(1, Ordering::Relaxed);
                metrics::histogram!("refund_projector_store_writeback_seconds").record(started.elapsed().as_secs_f64());
            }
        });
        match thread {
            Ok(thread) => Some(Writeback { wake: Some(wake), thread: Some(thread), syncs }),
            Err(err) => {
                tracing::debug!(%err, "no background writeback of the store file");
                None
            }
        }
    }

    /// Asks for a sync of what the last commit wrote; never blocks.
    pub(crate) fn nudge(&self) {
        if let Some(wake) = &self.wake {
            match wake.try_send(()) {
                Ok(()) | Err(TrySendError::Full(())) => {}
                Err(TrySendError::Disconnected(())) => tracing::debug!("the store writeback thread has ended"),
            }
        }
    }

    /// Syncs finished so far.
    pub(crate) fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }
}

impl Drop for Writeback {
    fn drop(&mut self) {
        drop(self.wake.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

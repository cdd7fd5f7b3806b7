//! Cooperative cancellation. Ctrl-C and SIGTERM set a flag (`cli::signals`);
//! long work polls it between units of work, and async work is raced
//! against it, so kiln stops promptly wherever it is and cleans up on the
//! way out (temporary files go with their owners' destructors).

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How often async work looks at the flag.
const POLL: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("interrupted")]
pub struct Interrupted;

/// `Err(Interrupted)` once `cancel` is set.
pub fn check(cancel: &AtomicBool) -> Result<(), Interrupted> {
    if cancel.load(Ordering::SeqCst) {
        Err(Interrupted)
    } else {
        Ok(())
    }
}

/// The async runtime kiln's registry work runs on (driven by [`block_on`]).
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build()
}

/// Drives `work` on `runtime` until it finishes or `cancel` is set. On a
/// cancel, `work` is dropped at its next await point, which closes its
/// connections and drops its partial files.
pub fn block_on<F: Future>(runtime: &tokio::runtime::Runtime, cancel: &AtomicBool, work: F) -> Result<F::Output, Interrupted> {
    runtime.block_on(race(cancel, work))
}

/// `work`, or `Err(Interrupted)` as soon as `cancel` is set.
async fn race<F: Future>(cancel: &AtomicBool, work: F) -> Result<F::Output, Interrupted> {
    check(cancel)?;
    tokio::pin!(work);
    let mut tick = tokio::time::interval(POLL);
    loop {
        tokio::select! {
            out = &mut work => return Ok(out),
            _ = tick.tick() => check(cancel)?,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_that_never_ends_stops_when_the_flag_is_set() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let cancel = AtomicBool::new(false);
        assert_eq!(block_on(&rt, &cancel, async { 7 }), Ok(7));
        let started = std::time::Instant::now();
        let result = std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(200));
                cancel.store(true, Ordering::SeqCst);
            });
            block_on(&rt, &cancel, std::future::pending::<()>())
        });
        assert_eq!(result, Err(Interrupted));
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
        assert_eq!(check(&cancel), Err(Interrupted));
    }
}

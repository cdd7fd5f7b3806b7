//! PID 1 must reap every orphan, but the agent also needs the exit status of
//! the commands it started. One thread owns waitpid(-1); it hands statuses of
//! registered pids to their waiters and drops the rest.

use std::collections::HashMap;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};

use kiln_protocol::ExitStatus;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// Blocks SIGCHLD in the calling thread; call before spawning threads so all inherit it.
pub fn block_sigchld() {
    let mut set = SigSet::empty();
    set.add(Signal::SIGCHLD);
    let _ = set.thread_block();
}

/// Waiters by pid. Children are reaped only under this lock, which `spawn`
/// holds until the waiter is registered, so no status is lost.
#[derive(Default)]
struct Table {
    waiters: HashMap<i32, Sender<ExitStatus>>,
}

#[derive(Clone)]
pub struct Reaper {
    table: Arc<Mutex<Table>>,
}

impl Reaper {
    pub fn start() -> Reaper {
        let reaper = Reaper { table: Arc::default() };
        let table = reaper.table.clone();
        std::thread::Builder::new()
            .name("reaper".into())
            .spawn(move || reap_forever(&table))
            .expect("spawning the reaper thread");
        reaper
    }

    /// Spawns a child with the table locked, so its exit cannot be delivered
    /// before its waiter is registered, nor reaped while `spawn` runs: when
    /// the child fails between fork and exec, std's spawn waits for it
    /// itself (and panics if it is already gone).
    pub fn spawn<T>(
        &self,
        spawn: impl FnOnce() -> std::io::Result<(i32, T)>,
    ) -> std::io::Result<(T, Receiver<ExitStatus>)> {
        let mut table = self.table.lock().unwrap();
        let (pid, value) = spawn()?;
        let (tx, rx) = channel();
        table.waiters.insert(pid, tx);
        Ok((value, rx))
    }
}

fn reap_forever(table: &Mutex<Table>) {
    let mut set = SigSet::empty();
    set.add(Signal::SIGCHLD);
    loop {
        // Reap everything that is ready, then sleep until the next SIGCHLD.
        // The table stays locked while reaping: `spawn` holds it too, and a
        // child whose exec fails is waited for by std's spawn itself (which
        // panics, killing PID 1, if it finds the child already reaped).
        {
            let mut table = table.lock().unwrap();
            loop {
                match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::Exited(pid, code)) => deliver(&mut table, pid.as_raw(), ExitStatus::Code { code }),
                    Ok(WaitStatus::Signaled(pid, sig, _)) => {
                        deliver(&mut table, pid.as_raw(), ExitStatus::Signal { signal: sig as i32 })
                    }
                    Ok(WaitStatus::StillAlive) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        }
        let _ = set.wait();
    }
}

fn deliver(table: &mut Table, pid: i32, status: ExitStatus) {
    // Unknown pids are orphans re-parented to PID 1: reaping them was the point.
    if let Some(tx) = table.waiters.remove(&pid) {
        let _ = tx.send(status);
    }
}

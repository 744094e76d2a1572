//! A service's background tasks, owned and watched.
//!
//! Every service's `start` spawns its servers and loops through a [`Tasks`] and returns it in
//! its handle; its `run` then waits on [`Tasks::wait`], which ends with the first task that
//! fails (an error, or a server that stops while nobody asked it to) and returns that failure,
//! so the process exits non-zero instead of living on without its ext_proc or HTTP server. The
//! shutdown token is cancelled on the way, so the other tasks (and gRPC health, which turns
//! NOT_SERVING on it) stop too. Dropping a [`Tasks`] detaches its tasks: a test that keeps only
//! a service's address keeps the service running.

use std::future::Future;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Why a service stopped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{task} stopped: {reason}")]
pub struct TaskFailed {
    /// The task's name.
    pub task: &'static str,
    /// What it said.
    pub reason: String,
}

/// The tasks of one service.
#[derive(Debug)]
pub struct Tasks {
    shutdown: CancellationToken,
    done_tx: mpsc::UnboundedSender<(&'static str, Result<(), String>)>,
    done_rx: mpsc::UnboundedReceiver<(&'static str, Result<(), String>)>,
    running: usize,
}

impl Tasks {
    /// Tasks stopped by `shutdown`.
    pub fn new(shutdown: CancellationToken) -> Self {
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        Self {
            shutdown,
            done_tx,
            done_rx,
            running: 0,
        }
    }

    /// The shutdown token the tasks watch.
    pub fn shutdown(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// Spawns a task; its end is reported to [`Self::wait`].
    pub fn spawn<F, E>(&mut self, name: &'static str, task: F)
    where
        F: Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Display,
    {
        let tx = self.done_tx.clone();
        self.running += 1;
        tokio::spawn(async move {
            let r = task.await.map_err(|e| e.to_string());
            let _ = tx.send((name, r));
        });
    }

    /// Waits until every task has ended after a shutdown (`Ok`), or until one fails or stops
    /// on its own (`Err`, and the shutdown token is cancelled so the rest stop).
    pub async fn wait(mut self) -> Result<(), TaskFailed> {
        let mut failed = None;
        while self.running > 0 {
            let Some((task, result)) = self.done_rx.recv().await else {
                break;
            };
            self.running -= 1;
            let failure = match result {
                Err(reason) => Some(TaskFailed { task, reason }),
                Ok(()) if !self.shutdown.is_cancelled() => Some(TaskFailed {
                    task,
                    reason: "ended without being asked to".into(),
                }),
                Ok(()) => None,
            };
            if let Some(f) = failure
                && failed.is_none()
            {
                tracing::error!(task = f.task, reason = f.reason, "a service task stopped");
                self.shutdown.cancel();
                failed = Some(f);
            }
        }
        failed.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_first_failure_ends_the_service() {
        let stop = CancellationToken::new();
        let mut tasks = Tasks::new(stop.clone());
        let s = stop.clone();
        tasks.spawn("loop", async move {
            s.cancelled().await;
            Ok::<(), String>(())
        });
        tasks.spawn("server", async { Err::<(), _>("address in use") });
        let r = tasks.wait().await;
        assert_eq!(
            r,
            Err(TaskFailed {
                task: "server",
                reason: "address in use".into()
            })
        );
        assert!(stop.is_cancelled());
    }

    #[tokio::test]
    async fn a_task_ending_on_its_own_is_a_failure_and_a_shutdown_is_not() {
        let stop = CancellationToken::new();
        let mut tasks = Tasks::new(stop.clone());
        tasks.spawn("server", async { Ok::<(), String>(()) });
        assert_eq!(tasks.wait().await.map_err(|f| f.task), Err("server"));

        let stop = CancellationToken::new();
        let mut tasks = Tasks::new(stop.clone());
        let s = stop.clone();
        tasks.spawn("server", async move {
            s.cancelled().await;
            Ok::<(), String>(())
        });
        stop.cancel();
        assert_eq!(tasks.wait().await, Ok(()));
    }
}

//! The pool of dedicated script threads.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, mpsc};

use tokio::sync::oneshot;

use crate::engine::{Engine, Health, Limits, POOL_JS_STACK, POOL_THREAD_STACK};
use crate::{PoolConfig, ScriptCall, ScriptError, ScriptOutput};

/// Counters of a pool, summed over its threads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Scripts actually compiled (cache misses), over all threads.
    pub compiles: u64,
    /// Calls executed (whatever their outcome).
    pub runs: u64,
}

#[derive(Default)]
pub(crate) struct Counters {
    compiles: AtomicU64,
    runs: AtomicU64,
    /// Script threads still running (for tests of the shutdown).
    pub(crate) live_threads: AtomicUsize,
}

type Reply = oneshot::Sender<Result<ScriptOutput, ScriptError>>;

/// What a pool thread is asked to do: run a script, or any other CPU-bound task that must
/// stay off the async threads (rendering a template, a syntax check).
enum Job {
    Call { call: ScriptCall, reply: Reply },
    Task(Box<dyn FnOnce() + Send>),
}

struct Shared {
    jobs: mpsc::Sender<Job>,
    counters: Arc<Counters>,
}

/// A pool of threads running user scripts in QuickJS; cheap to clone (an `Arc` inside).
#[derive(Clone)]
pub struct ScriptPool {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for ScriptPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScriptPool").field("stats", &self.stats()).finish_non_exhaustive()
    }
}

impl ScriptPool {
    /// Starts `config.threads` (at least one) dedicated script threads.
    ///
    /// A thread that the OS refuses to start is logged and skipped; with none at all, every
    /// [`ScriptPool::run`] answers [`ScriptError::PoolClosed`].
    pub fn new(config: PoolConfig) -> Self {
        let (jobs, receiver) = mpsc::channel::<Job>();
        let receiver = Arc::new(Mutex::new(receiver));
        let counters = Arc::new(Counters::default());
        let limits = Limits::from_config(&config, POOL_JS_STACK);
        for index in 0..config.threads.max(1) {
            let receiver = Arc::clone(&receiver);
            let counters_for_thread = Arc::clone(&counters);
            let limits = limits.clone();
            counters.live_threads.fetch_add(1, Ordering::SeqCst);
            let spawned = std::thread::Builder::new()
                .name(format!("hookline-script-{index}"))
                .stack_size(POOL_THREAD_STACK)
                .spawn(move || worker(&receiver, &limits, &counters_for_thread));
            if let Err(error) = spawned {
                counters.live_threads.fetch_sub(1, Ordering::SeqCst);
                tracing::error!(%error, "could not start a script thread");
            }
        }
        Self { shared: Arc::new(Shared { jobs, counters }) }
    }

    /// Runs a script on one of the pool's threads and waits for the result without blocking
    /// the async caller. Dropping the returned future before a thread has picked the call up
    /// cancels it.
    pub async fn run(&self, call: ScriptCall) -> Result<ScriptOutput, ScriptError> {
        let (reply, answer) = oneshot::channel();
        self.shared.jobs.send(Job::Call { call, reply }).map_err(|_| ScriptError::PoolClosed)?;
        answer.await.unwrap_or(Err(ScriptError::PoolClosed))
    }

    /// Runs `f` on one of the pool's threads and waits for its result without blocking the
    /// async caller: for CPU-bound work of bounded cost (template rendering under its fuel,
    /// syntax checks). A panic in `f` is caught and reported as an internal error.
    pub async fn run_blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ScriptError> {
        let (reply, answer) = oneshot::channel();
        let task = Box::new(move || {
            if reply.is_closed() {
                return;
            }
            let result = catch_unwind(AssertUnwindSafe(f)).map_err(|_| ScriptError::internal("a pool task panicked"));
            let _ = reply.send(result);
        });
        self.shared.jobs.send(Job::Task(task)).map_err(|_| ScriptError::PoolClosed)?;
        answer.await.unwrap_or(Err(ScriptError::PoolClosed))
    }

    /// Syntax-checks a script (see [`crate::check_syntax`]) on a pool thread.
    pub async fn check_syntax(&self, source: String) -> Result<(), ScriptError> {
        self.run_blocking(move || crate::check_syntax(&source)).await?
    }

    /// Compilation and run counters.
    pub fn stats(&self) -> PoolStats {
        let counters = &self.shared.counters;
        PoolStats { compiles: counters.compiles.load(Ordering::Relaxed), runs: counters.runs.load(Ordering::Relaxed) }
    }

    #[cfg(test)]
    pub(crate) fn counters(&self) -> Arc<Counters> {
        Arc::clone(&self.shared.counters)
    }
}

/// Decrements the live-thread count however the thread ends.
struct LiveGuard<'a>(&'a Counters);

impl Drop for LiveGuard<'_> {
    fn drop(&mut self) {
        self.0.live_threads.fetch_sub(1, Ordering::SeqCst);
    }
}

fn worker(receiver: &Mutex<mpsc::Receiver<Job>>, limits: &Limits, counters: &Counters) {
    let _live = LiveGuard(counters);
    let mut engine: Option<Engine> = None;
    loop {
        // Build (or rebuild) the runtime and its realm while idle, so the next call does not
        // wait for them.
        if engine.is_none() {
            match Engine::new(limits.clone()) {
                Ok(fresh) => engine = Some(fresh),
                Err(error) => tracing::error!(%error, "could not create a QuickJS runtime"),
            }
        }
        if let Some(Err(error)) = engine.as_mut().map(Engine::prepare) {
            tracing::error!(%error, "could not set up a QuickJS realm");
        }
        let job = receiver.lock().unwrap_or_else(PoisonError::into_inner).recv();
        let (call, reply) = match job {
            Ok(Job::Call { call, reply }) => (call, reply),
            Ok(Job::Task(task)) => {
                task();
                continue;
            }
            Err(_) => break, // every ScriptPool is gone
        };
        if reply.is_closed() {
            continue; // the caller stopped waiting
        }
        let result = run_job(&mut engine, limits, counters, &call);
        counters.runs.fetch_add(1, Ordering::Relaxed);
        // The caller may have gone away meanwhile; nothing to do then.
        let _ = reply.send(result);
    }
}

fn run_job(
    slot: &mut Option<Engine>,
    limits: &Limits,
    counters: &Counters,
    call: &ScriptCall,
) -> Result<ScriptOutput, ScriptError> {
    if slot.is_none() {
        *slot = Some(Engine::new(limits.clone())?);
    }
    let Some(engine) = slot.as_mut() else {
        return Err(ScriptError::internal("no runtime"));
    };
    let compiled = || {
        counters.compiles.fetch_add(1, Ordering::Relaxed);
    };
    match catch_unwind(AssertUnwindSafe(|| engine.run(call, &compiled))) {
        Ok((result, Health::Good)) => result,
        Ok((result, Health::Discard)) => {
            tracing::warn!(kind = ?call.kind, error = ?result.as_ref().err(), "discarding the QuickJS runtime after a fatal script error");
            *slot = None;
            result
        }
        Err(_) => {
            tracing::error!(kind = ?call.kind, "script engine panicked; replacing the runtime");
            // Freeing a runtime in an unknown state could trip QuickJS's leak assertion and
            // abort the process; leaking it is the safer choice for a rare bug.
            if let Some(engine) = slot.take() {
                std::mem::forget(engine);
            }
            Err(ScriptError::internal("the script engine panicked"))
        }
    }
}

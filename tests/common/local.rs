//! A single-threaded executor for the asynchronous tests: many tasks on one thread of their
//! own, each polled only after its own waker fired, under a watchdog. A call inside a task
//! that blocks the thread keeps every other task from running, and a lost wake-up leaves a
//! task unpolled: either way the tasks never finish, and [`Running::join`] fails the test
//! after [`WAIT_MAX`](super::WAIT_MAX) with a message that says which (the task the thread
//! is stuck in, or how many tasks were never woken again). It bounds a hang; nothing is
//! timed with it.
//!
//! Hand-written rather than a runtime as a dev-dependency: it is 150 lines, and an
//! executor that polls only woken tasks is what these tests need to see a lost wake-up
//! (a runtime may poll a task for reasons of its own).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::Thread;

/// A future the executor owns.
type Boxed<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// A task: a named future the executor owns.
pub type Task<T> = (String, Boxed<T>);

/// Makes a task named `name` of `fut`.
pub fn task<T>(name: impl Into<String>, fut: impl Future<Output = T> + Send + 'static) -> Task<T> {
    (name.into(), Box::pin(fut))
}

/// One task's waker: marks it runnable and unparks the executor's thread.
struct Flag {
    woken: AtomicBool,
    thread: Thread,
}

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::SeqCst);
        self.thread.unpark();
    }
}

/// What the test thread sees of the executor while it runs.
struct Shared {
    /// The index of the task being polled, or `IDLE`.
    polling: AtomicUsize,
    /// Tasks finished.
    done: AtomicUsize,
    /// Set by a watchdog that gave up: the executor ends at its next look.
    abandoned: AtomicBool,
    names: Vec<String>,
}

const IDLE: usize = usize::MAX;

/// Tasks running on their executor's thread ([`spawn`]).
pub struct Running<T> {
    shared: Arc<Shared>,
    results: mpsc::Receiver<Vec<T>>,
    thread: Thread,
}

/// Starts `tasks` on one new thread, which polls each first in the order given (so a task
/// later in the list is first polled after every earlier one was), and then only once its
/// own waker fired.
pub fn spawn<T: Send + 'static>(tasks: Vec<Task<T>>) -> Running<T> {
    let names = tasks.iter().map(|(n, _)| n.clone()).collect();
    let shared = Arc::new(Shared {
        polling: AtomicUsize::new(IDLE),
        done: AtomicUsize::new(0),
        abandoned: AtomicBool::new(false),
        names,
    });
    let (tx, results) = mpsc::channel();
    let inner = shared.clone();
    let handle = std::thread::Builder::new()
        .name("one-thread-executor".into())
        .spawn(move || {
            if let Some(results) = run(tasks, &inner) {
                let _ = tx.send(results);
            }
        })
        .expect("the executor's thread");
    Running {
        shared,
        results,
        thread: handle.thread().clone(),
    }
}

/// Runs `tasks` to the end on one new thread and returns their outputs, in order; fails the
/// test as [`Running::join`] does.
pub fn run_on_one_thread<T: Send + 'static>(tasks: Vec<Task<T>>) -> Vec<T> {
    spawn(tasks).join()
}

impl<T> Running<T> {
    /// How many tasks have finished.
    pub fn done(&self) -> usize {
        self.shared.done.load(Ordering::SeqCst)
    }

    /// Waits for every task to finish and returns their outputs, in order. Fails the test
    /// if they have not within `WAIT_MAX`: naming the task whose poll the thread is stuck
    /// in (a call that blocked the executor's thread), or counting the tasks that were never
    /// woken again (a lost wake-up).
    pub fn join(self) -> Vec<T> {
        match self.results.recv_timeout(super::WAIT_MAX) {
            Ok(results) => results,
            Err(_) => {
                let polling = self.shared.polling.load(Ordering::SeqCst);
                let (done, all) = (self.done(), self.shared.names.len());
                self.shared.abandoned.store(true, Ordering::SeqCst);
                self.thread.unpark();
                if polling != IDLE {
                    panic!(
                        "hung: the executor's one thread has been blocked for {:?} inside a \
                         poll of task {:?} ({done} of {all} tasks done): a call in it blocks \
                         the thread",
                        super::WAIT_MAX,
                        self.shared.names[polling]
                    );
                }
                panic!(
                    "hung: {} of {all} tasks were never woken again within {:?} (a lost \
                     wake-up; the executor's thread is idle)",
                    all - done,
                    super::WAIT_MAX
                );
            }
        }
    }
}

/// The executor's loop; `None` if the watchdog gave up.
fn run<T>(tasks: Vec<Task<T>>, shared: &Shared) -> Option<Vec<T>> {
    let me = std::thread::current();
    let mut tasks: Vec<(Option<Boxed<T>>, Arc<Flag>)> = tasks
        .into_iter()
        .map(|(_, fut)| {
            let flag = Arc::new(Flag {
                woken: AtomicBool::new(true),
                thread: me.clone(),
            });
            (Some(fut), flag)
        })
        .collect();
    let mut results: Vec<Option<T>> = tasks.iter().map(|_| None).collect();
    let mut left = tasks.len();
    while left > 0 {
        let mut polled = false;
        for (i, (slot, flag)) in tasks.iter_mut().enumerate() {
            let Some(fut) = slot else { continue };
            if !flag.woken.swap(false, Ordering::SeqCst) {
                continue;
            }
            polled = true;
            let waker = Waker::from(flag.clone());
            shared.polling.store(i, Ordering::SeqCst);
            let poll = fut.as_mut().poll(&mut Context::from_waker(&waker));
            shared.polling.store(IDLE, Ordering::SeqCst);
            if let Poll::Ready(r) = poll {
                results[i] = Some(r);
                *slot = None;
                left -= 1;
                shared.done.fetch_add(1, Ordering::SeqCst);
            }
        }
        if shared.abandoned.load(Ordering::SeqCst) {
            return None;
        }
        if !polled {
            // Only a waker (or the watchdog) unparks: a task is polled once its waker fired.
            std::thread::park();
        }
    }
    Some(results.into_iter().map(Option::unwrap).collect())
}

/// A future that is pending once, waking its task at once: lets every other woken task run
/// before the caller goes on.
pub async fn yield_now() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            return Poll::Ready(());
        }
        yielded = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    })
    .await
}

/// Polls `fut` once with the calling task's waker: its output if ready, else `None` and the
/// future back (to drop it: a submit or a ticket given up on while it waits).
pub async fn poll_once<F: Future + Unpin>(fut: F) -> Result<F::Output, F> {
    let mut fut = Some(fut);
    std::future::poll_fn(move |cx| {
        let f = fut.as_mut().expect("polled once");
        match Pin::new(f).poll(cx) {
            Poll::Ready(r) => Poll::Ready(Ok(r)),
            Poll::Pending => Poll::Ready(Err(fut.take().expect("polled once"))),
        }
    })
    .await
}

//! The embedded engine as a [`RunQueue`]: every method delegates to the engine's own. Separate
//! because it only adapts (boxing futures, wrapping the reads that need no IO here).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use serde_json::Value;
use std::collections::BTreeMap;
use tokio::sync::Notify;

use tollgate_core::{Adaptive, Declared, Feedback, Limit, Nanos, Period};

use super::Engine;
use crate::limiter::AsyncLimiter;
use crate::metrics::QueueMetrics;
use crate::queue::run::{RunState, RunView};
use crate::queue::run_queue::{LeaseAttempt, LeaseQueue, PauseEnd, QueueFuture, RunQueue, StartAt};
use crate::spec::LimitSpec;
use crate::store::{AcquireEntry, DynStore, Namespace, Pause, Store};
use crate::task::{Task, TaskSpec};

impl<S: Store + 'static> LeaseQueue for Engine<S> {
    fn try_lease<'a>(
        &'a self,
        worker_id: &'a str,
        tasks: &'a [String],
        max: usize,
    ) -> QueueFuture<'a, LeaseAttempt> {
        Box::pin(Engine::try_lease(self, worker_id, tasks, max))
    }

    fn ready(&self) -> &Notify {
        &self.inner.ready
    }

    /// Every change that makes a run ready wakes `ready` in this process: nothing to poll for.
    fn poll_interval(&self) -> Option<Duration> {
        None
    }

    fn lease_calls(&self) -> Option<&AtomicUsize> {
        Some(&self.inner.leasing)
    }
}

impl RunQueue for Engine<DynStore> {
    fn mode(&self) -> &'static str {
        "embedded"
    }

    fn limits(&self) -> &AsyncLimiter {
        &self.inner.limits
    }

    fn put_limit<'a>(&'a self, key: &'a str, spec: LimitSpec) -> QueueFuture<'a, Limit> {
        Box::pin(Engine::put_limit(self, key, spec))
    }

    fn remove_limit<'a>(&'a self, key: &'a str) -> QueueFuture<'a, bool> {
        Box::pin(Engine::remove_limit(self, key))
    }

    fn feedback<'a>(&'a self, key: &'a str, feedback: Feedback) -> QueueFuture<'a, Declared> {
        Box::pin(Engine::feedback(self, key, feedback))
    }

    fn adaptive_limits(&self) -> QueueFuture<'_, BTreeMap<String, Adaptive>> {
        Box::pin(std::future::ready(Ok(Engine::adaptive_limits(self))))
    }

    fn put_task<'a>(&'a self, name: &'a str, spec: TaskSpec) -> QueueFuture<'a, Arc<Task>> {
        Box::pin(Engine::put_task(self, name, spec))
    }

    fn pause<'a>(
        &'a self,
        namespace: Namespace,
        key: &'a str,
        end: PauseEnd,
    ) -> QueueFuture<'a, Nanos> {
        Box::pin(Engine::pause(self, namespace, key, end))
    }

    fn resume<'a>(&'a self, namespace: Namespace, key: &'a str) -> QueueFuture<'a, bool> {
        Box::pin(Engine::resume(self, namespace, key))
    }

    fn pauses(&self) -> QueueFuture<'_, Vec<Pause>> {
        Box::pin(std::future::ready(Engine::pauses(self)))
    }

    fn task<'a>(&'a self, name: &'a str) -> QueueFuture<'a, Option<Arc<Task>>> {
        Box::pin(std::future::ready(Ok(Engine::task(self, name))))
    }

    fn tasks(&self) -> QueueFuture<'_, Vec<Arc<Task>>> {
        Box::pin(std::future::ready(Ok(Engine::tasks(self))))
    }

    fn enqueue_with<'a>(
        &'a self,
        task: &'a str,
        input: Value,
        additional_metadata: Value,
        start: StartAt,
        priority: Option<u8>,
    ) -> QueueFuture<'a, RunView> {
        Box::pin(Engine::enqueue_with(
            self,
            task,
            input,
            additional_metadata,
            start,
            priority,
        ))
    }

    fn emit_at<'a>(
        &'a self,
        name: &'a str,
        data: Value,
        additional_metadata: Value,
        start: StartAt,
    ) -> QueueFuture<'a, Vec<RunView>> {
        Box::pin(Engine::emit_at(
            self,
            name,
            data,
            additional_metadata,
            start,
        ))
    }

    fn heartbeat<'a>(&'a self, id: &'a str, attempt: Option<u32>) -> QueueFuture<'a, RunView> {
        Box::pin(Engine::heartbeat(self, id, attempt))
    }

    fn complete<'a>(
        &'a self,
        id: &'a str,
        attempt: Option<u32>,
        output: Option<Value>,
    ) -> QueueFuture<'a, RunView> {
        Box::pin(Engine::complete(self, id, attempt, output))
    }

    fn fail_with<'a>(
        &'a self,
        id: &'a str,
        attempt: Option<u32>,
        error: String,
        retry: bool,
        retry_after: Option<Nanos>,
    ) -> QueueFuture<'a, RunView> {
        Box::pin(Engine::fail_with(
            self,
            id,
            attempt,
            error,
            retry,
            retry_after,
        ))
    }

    fn release<'a>(&'a self, id: &'a str, attempt: Option<u32>) -> QueueFuture<'a, RunView> {
        Box::pin(Engine::release(self, id, attempt))
    }

    fn cancel<'a>(&'a self, id: &'a str) -> QueueFuture<'a, RunView> {
        Box::pin(Engine::cancel(self, id))
    }

    fn run<'a>(&'a self, id: &'a str) -> QueueFuture<'a, RunView> {
        Box::pin(std::future::ready(Engine::run(self, id)))
    }

    fn explain<'a>(&'a self, id: &'a str) -> QueueFuture<'a, tollgate_api::Explanation> {
        Box::pin(Engine::explain(self, id))
    }

    fn runs<'a>(
        &'a self,
        task: Option<&'a str>,
        state: Option<RunState>,
        limit: usize,
    ) -> QueueFuture<'a, Vec<RunView>> {
        Box::pin(std::future::ready(Ok(Engine::runs(
            self, task, state, limit,
        ))))
    }

    fn depth(&self) -> QueueFuture<'_, Vec<(String, RunState, u64)>> {
        Box::pin(std::future::ready(Ok(Engine::depth(self))))
    }

    fn metrics(&self) -> QueueMetrics {
        Engine::metrics(self)
    }

    fn note_direct_use<'a>(&'a self, entries: &'a [AcquireEntry<'_>]) -> QueueFuture<'a, ()> {
        Box::pin(Engine::note_direct_use(self, entries))
    }

    fn set_retention(&self, retention: Period) {
        Engine::set_retention(self, retention);
    }

    fn prune(&self) -> QueueFuture<'_, usize> {
        Box::pin(Engine::prune(self))
    }

    fn close(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(Engine::close(self))
    }
}

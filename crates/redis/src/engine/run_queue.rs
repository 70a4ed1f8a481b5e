//! The Redis engine as a [`RunQueue`]: every method delegates to the engine's own, whose IO is
//! awaited on the store's multiplexed connection (no runtime thread ever blocks on Redis).

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::Notify;
use tollgate::metrics::QueueMetrics;
use tollgate::{
    AsyncLimiter, LeaseAttempt, LeaseQueue, LimitSpec, Namespace, Pause, PauseEnd, QueueFuture,
    RunQueue, RunState, RunView, StartAt, Task, TaskSpec,
};
use tollgate_core::{Adaptive, Declared, Feedback, Limit, Nanos, Period};

use super::RedisEngine;

impl LeaseQueue for RedisEngine {
    fn try_lease<'a>(
        &'a self,
        worker_id: &'a str,
        tasks: &'a [String],
        max: usize,
    ) -> QueueFuture<'a, LeaseAttempt> {
        Box::pin(RedisEngine::try_lease(self, worker_id, tasks, max))
    }

    fn ready(&self) -> &Notify {
        &self.inner.ready
    }

    /// Another node's pub/sub message may be lost: a waiting long-poll looks at Redis at least
    /// this often ([`RedisEngine::set_poll_interval`]).
    fn poll_interval(&self) -> Option<Duration> {
        Some(RedisEngine::poll_interval(self))
    }
}

impl RunQueue for RedisEngine {
    fn pause<'a>(
        &'a self,
        namespace: Namespace,
        key: &'a str,
        end: PauseEnd,
    ) -> QueueFuture<'a, Nanos> {
        Box::pin(RedisEngine::pause(self, namespace, key, end))
    }

    fn resume<'a>(&'a self, namespace: Namespace, key: &'a str) -> QueueFuture<'a, bool> {
        Box::pin(RedisEngine::resume(self, namespace, key))
    }

    fn pauses(&self) -> QueueFuture<'_, Vec<Pause>> {
        Box::pin(RedisEngine::pauses(self))
    }

    fn mode(&self) -> &'static str {
        "redis"
    }

    fn limits(&self) -> &AsyncLimiter {
        RedisEngine::limits(self)
    }

    fn put_limit<'a>(&'a self, key: &'a str, spec: LimitSpec) -> QueueFuture<'a, Limit> {
        Box::pin(RedisEngine::put_limit(self, key, spec))
    }

    fn remove_limit<'a>(&'a self, key: &'a str) -> QueueFuture<'a, bool> {
        Box::pin(RedisEngine::remove_limit(self, key))
    }

    fn feedback<'a>(&'a self, key: &'a str, feedback: Feedback) -> QueueFuture<'a, Declared> {
        Box::pin(RedisEngine::feedback(self, key, feedback))
    }

    fn adaptive_limits(&self) -> QueueFuture<'_, BTreeMap<String, Adaptive>> {
        Box::pin(RedisEngine::adaptive_limits(self))
    }

    fn put_task<'a>(&'a self, name: &'a str, spec: TaskSpec) -> QueueFuture<'a, Arc<Task>> {
        Box::pin(RedisEngine::put_task(self, name, spec))
    }

    fn task<'a>(&'a self, name: &'a str) -> QueueFuture<'a, Option<Arc<Task>>> {
        Box::pin(RedisEngine::task(self, name))
    }

    fn tasks(&self) -> QueueFuture<'_, Vec<Arc<Task>>> {
        Box::pin(RedisEngine::tasks(self))
    }

    fn enqueue_with<'a>(
        &'a self,
        task: &'a str,
        input: Value,
        additional_metadata: Value,
        start: StartAt,
        priority: Option<u8>,
    ) -> QueueFuture<'a, RunView> {
        Box::pin(RedisEngine::enqueue_with(
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
        Box::pin(RedisEngine::emit_at(
            self,
            name,
            data,
            additional_metadata,
            start,
        ))
    }

    fn heartbeat<'a>(&'a self, id: &'a str, attempt: Option<u32>) -> QueueFuture<'a, RunView> {
        Box::pin(RedisEngine::heartbeat(self, id, attempt))
    }

    fn complete<'a>(
        &'a self,
        id: &'a str,
        attempt: Option<u32>,
        output: Option<Value>,
    ) -> QueueFuture<'a, RunView> {
        Box::pin(RedisEngine::complete(self, id, attempt, output))
    }

    fn fail_with<'a>(
        &'a self,
        id: &'a str,
        attempt: Option<u32>,
        error: String,
        retry: bool,
        retry_after: Option<Nanos>,
    ) -> QueueFuture<'a, RunView> {
        Box::pin(RedisEngine::fail_with(
            self,
            id,
            attempt,
            error,
            retry,
            retry_after,
        ))
    }

    fn release<'a>(&'a self, id: &'a str, attempt: Option<u32>) -> QueueFuture<'a, RunView> {
        Box::pin(RedisEngine::release(self, id, attempt))
    }

    fn cancel<'a>(&'a self, id: &'a str) -> QueueFuture<'a, RunView> {
        Box::pin(RedisEngine::cancel(self, id))
    }

    fn run<'a>(&'a self, id: &'a str) -> QueueFuture<'a, RunView> {
        Box::pin(RedisEngine::run(self, id))
    }

    fn explain<'a>(&'a self, id: &'a str) -> QueueFuture<'a, tollgate::api::Explanation> {
        Box::pin(RedisEngine::explain(self, id))
    }

    fn runs<'a>(
        &'a self,
        task: Option<&'a str>,
        state: Option<RunState>,
        limit: usize,
    ) -> QueueFuture<'a, Vec<RunView>> {
        Box::pin(RedisEngine::runs(self, task, state, limit))
    }

    fn depth(&self) -> QueueFuture<'_, Vec<(String, RunState, u64)>> {
        Box::pin(RedisEngine::depth(self))
    }

    fn metrics(&self) -> QueueMetrics {
        RedisEngine::metrics(self)
    }

    // `note_direct_use`: the default (nothing to do). Redis keeps direct use itself.

    fn set_retention(&self, retention: Period) {
        RedisEngine::set_retention(self, retention);
    }

    fn prune(&self) -> QueueFuture<'_, usize> {
        Box::pin(RedisEngine::prune(self))
    }

    fn close(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(RedisEngine::close(self))
    }
}

//! Tasks, runs, events and workers: `PUT/GET /v1/tasks/{name}`, `GET /v1/tasks`,
//! `POST /v1/tasks/{name}/runs`, `POST /v1/events`, `POST /v1/workers/lease`,
//! `POST /v1/runs/{id}/{heartbeat,complete,fail,release,cancel}`, `GET /v1/runs/{id}`,
//! `GET /v1/runs`.

use std::time::Duration;

use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tollgate_api::{
    AttemptRequest, CancelRequest, CompleteRequest, Depth, EnqueueRequest, EventAnswer,
    EventRequest, EventRun, FailRequest, LeasedRun, LeasedRuns, RunListing, RunState, RunView,
    TaskListing, TaskSpec, WorkerLeaseRequest,
};

use crate::client::{Client, millis_ceil};
use crate::error::Error;

/// A task as the server shows it: its definition, and how many runs it has in each state.
///
/// Read through its wire type, [`tollgate_api::Task`]; a type of this crate so that it can
/// carry [`Task::builder`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(from = "tollgate_api::Task")]
#[non_exhaustive]
pub struct Task {
    /// The task's name.
    pub name: String,
    /// Its definition; it can be sent back to [`Client::put_task`] as it is.
    pub spec: TaskSpec,
    /// Its runs per state.
    pub depth: Depth,
}

impl From<tollgate_api::Task> for Task {
    fn from(t: tollgate_api::Task) -> Task {
        Task {
            name: t.name,
            spec: t.spec,
            depth: t.depth,
        }
    }
}

/// Which runs [`Client::list_runs`] answers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RunFilter {
    /// Only runs of this task.
    pub task: Option<String>,
    /// Only runs in this state.
    pub state: Option<RunState>,
    /// At most this many (server default 100, at most 1000).
    pub limit: Option<u32>,
}

impl RunFilter {
    /// Every run.
    pub fn all() -> RunFilter {
        RunFilter::default()
    }

    /// Only runs of `task`.
    #[must_use]
    pub fn task(mut self, task: impl Into<String>) -> RunFilter {
        self.task = Some(task.into());
        self
    }

    /// Only runs in `state`.
    #[must_use]
    pub fn state(mut self, state: RunState) -> RunFilter {
        self.state = Some(state);
        self
    }

    /// At most `limit` runs (the newest).
    #[must_use]
    pub fn limit(mut self, limit: u32) -> RunFilter {
        self.limit = Some(limit);
        self
    }
}

impl Client {
    /// `PUT /v1/tasks/{name}`: defines or redefines a task (runs already enqueued keep the
    /// limits rendered for them).
    ///
    /// # Errors
    /// [`Error::Api`] naming the field: 400 `invalid_expression` for CEL that does not
    /// compile, 422 `unknown_limit` for a `static_key` naming no declared limit, 400
    /// `invalid_period`, `invalid_name`, ….
    pub async fn put_task(&self, name: &str, spec: &TaskSpec) -> Result<Task, Error> {
        self.call(
            Method::PUT,
            self.url(&["v1", "tasks", name]),
            Some(spec),
            Duration::ZERO,
        )
        .await
    }

    /// `GET /v1/tasks/{name}`.
    ///
    /// # Errors
    /// [`Error::Api`] 404 `unknown_task`.
    pub async fn get_task(&self, name: &str) -> Result<Task, Error> {
        self.call(
            Method::GET,
            self.url(&["v1", "tasks", name]),
            None::<&()>,
            Duration::ZERO,
        )
        .await
    }

    /// `GET /v1/tasks`: every task, by name.
    ///
    /// # Errors
    /// Transport and server errors only.
    pub async fn list_tasks(&self) -> Result<Vec<Task>, Error> {
        let tasks: TaskListing = self
            .call(
                Method::GET,
                self.url(&["v1", "tasks"]),
                None::<&()>,
                Duration::ZERO,
            )
            .await?;
        Ok(tasks.tasks.into_iter().map(Task::from).collect())
    }

    /// `POST /v1/tasks/{name}/runs`: enqueues a run; answered, once it is durable, with the
    /// run: `queued`, `waiting` (parked on a limit, with `waiting_on` and `eligible_at_ms`),
    /// `skipped` (a duplicate, or over its limits under `on_limit: skip`, with `skip_reason`),
    /// or `failed` (units no limit can ever hold).
    ///
    /// # Errors
    /// [`Error::Api`] 404 `unknown_task`; 422 `invalid_expression` when the task's CEL cannot
    /// be evaluated for this input (the run is not stored: never run unlimited).
    pub async fn enqueue(
        &self,
        task: &str,
        input: &Value,
        additional_metadata: Option<&Value>,
    ) -> Result<RunView, Error> {
        self.enqueue_starting(task, input, additional_metadata, None, None)
            .await
    }

    /// [`Client::enqueue`] for a run that starts no sooner than `delay` from now (Celery's
    /// `countdown`): `scheduled` until then, with its due instant in `eligible_at_ms`;
    /// nothing is decided for it before (millisecond resolution, rounded up).
    ///
    /// # Errors
    /// As [`Client::enqueue`].
    pub async fn enqueue_after(
        &self,
        task: &str,
        input: &Value,
        additional_metadata: Option<&Value>,
        delay: Duration,
    ) -> Result<RunView, Error> {
        self.enqueue_starting(
            task,
            input,
            additional_metadata,
            Some(millis_ceil(delay)),
            None,
        )
        .await
    }

    /// [`Client::enqueue`] for a run that starts no sooner than `at` (Celery's `eta`); an
    /// instant already past starts it at once.
    ///
    /// # Errors
    /// As [`Client::enqueue`].
    pub async fn enqueue_at(
        &self,
        task: &str,
        input: &Value,
        additional_metadata: Option<&Value>,
        at: std::time::SystemTime,
    ) -> Result<RunView, Error> {
        let since_epoch = at
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        self.enqueue_starting(
            task,
            input,
            additional_metadata,
            None,
            Some(millis_ceil(since_epoch)),
        )
        .await
    }

    async fn enqueue_starting(
        &self,
        task: &str,
        input: &Value,
        additional_metadata: Option<&Value>,
        delay_ms: Option<u64>,
        run_at_ms: Option<u64>,
    ) -> Result<RunView, Error> {
        let body = EnqueueRequest {
            input: input.clone(),
            additional_metadata: additional_metadata.cloned(),
            delay_ms,
            run_at_ms,
            priority: None,
        };
        self.enqueue_request(task, &body).await
    }

    /// `POST /v1/tasks/{task}/runs` with `body` as written: a delay, an instant, a
    /// `priority` (1 to 4) of its own.
    ///
    /// # Errors
    /// As [`Client::enqueue`]; 400 `invalid_field` for `delay_ms` with `run_at_ms`, or a
    /// priority outside 1 to 4.
    pub async fn enqueue_request(
        &self,
        task: &str,
        body: &EnqueueRequest,
    ) -> Result<RunView, Error> {
        self.call(
            Method::POST,
            self.url(&["v1", "tasks", task, "runs"]),
            Some(body),
            Duration::ZERO,
        )
        .await
    }

    /// `POST /v1/events`: one run of every task triggered by event `name`, with `data` as
    /// input. Answers the runs started (none when no task listens), each standing alone: a
    /// task whose CEL cannot be evaluated for `data` gets a `failed` run whose `error` says why,
    /// and the others are enqueued.
    ///
    /// # Errors
    /// [`Error::Api`] for a bad event name; transient errors when the store is unavailable.
    pub async fn send_event(
        &self,
        name: &str,
        data: &Value,
        additional_metadata: Option<&Value>,
    ) -> Result<Vec<EventRun>, Error> {
        self.send_event_after(name, data, additional_metadata, None)
            .await
    }

    /// [`Client::send_event`] whose runs start no sooner than `delay` from now (`scheduled`
    /// until then); `None` for at once.
    ///
    /// # Errors
    /// As [`Client::send_event`].
    pub async fn send_event_after(
        &self,
        name: &str,
        data: &Value,
        additional_metadata: Option<&Value>,
        delay: Option<Duration>,
    ) -> Result<Vec<EventRun>, Error> {
        let body = EventRequest {
            name: name.to_owned(),
            data: data.clone(),
            additional_metadata: additional_metadata.cloned(),
            delay_ms: delay.map(millis_ceil),
            run_at_ms: None,
        };
        let answer: EventAnswer = self
            .call(
                Method::POST,
                self.url(&["v1", "events"]),
                Some(&body),
                Duration::ZERO,
            )
            .await?;
        Ok(answer.runs)
    }

    /// `POST /v1/workers/lease`: up to `max` runs of `tasks` for worker `worker_id`, a long
    /// poll. Answers as soon as the server holds at least one run; waits up to `wait` only
    /// while it has none (an empty answer then). The call's timeout grows by `wait`.
    ///
    /// ```
    /// # async fn f(client: &tollgate_client::Client) -> Result<(), tollgate_client::Error> {
    /// use std::time::Duration;
    /// let tasks = ["sync-user".to_owned()];
    /// for run in client.worker_lease("w1", &tasks, 10, Some(Duration::from_secs(20))).await? {
    ///     // … do the work, heartbeating before run.lease_expires_at_ms …
    ///     client.complete(&run.id, Some(run.attempt), None).await?;
    /// }
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// [`Error::Api`] 422 `unknown_task` (field `tasks[i]`) for a task that is not defined.
    pub async fn worker_lease(
        &self,
        worker_id: &str,
        tasks: &[String],
        max: u32,
        wait: Option<Duration>,
    ) -> Result<Vec<LeasedRun>, Error> {
        let body = WorkerLeaseRequest {
            worker_id: worker_id.to_owned(),
            tasks: tasks.to_vec(),
            max: u64::from(max),
            wait_ms: wait.map(millis_ceil),
        };
        let leased: LeasedRuns = self
            .call(
                Method::POST,
                self.url(&["v1", "workers", "lease"]),
                Some(&body),
                wait.unwrap_or_default(),
            )
            .await?;
        Ok(leased.runs)
    }

    /// `POST /v1/runs/{id}/heartbeat`: extends a running run's lease by its task's
    /// `lease_timeout` from now; answers the run with its new `lease_expires_at_ms`.
    ///
    /// `attempt` (the [`LeasedRun::attempt`] the worker was given) makes the call apply only
    /// to that attempt: a worker whose lease lapsed, and whose run was leased again, gets 409
    /// `invalid_state` (field `attempt`) instead of touching the new attempt. The same holds
    /// for [`Client::complete`], [`Client::fail`] and [`Client::release`].
    ///
    /// # Errors
    /// [`Error::Api`] 404 `unknown_run`; 409 `invalid_state` when the run is not running, or
    /// is on another attempt.
    pub async fn heartbeat(&self, run_id: &str, attempt: Option<u32>) -> Result<RunView, Error> {
        self.run_action(run_id, "heartbeat", &AttemptRequest { attempt })
            .await
    }

    /// `POST /v1/runs/{id}/complete`: marks a running run succeeded, with its `output`.
    ///
    /// # Errors
    /// As [`Client::heartbeat`].
    pub async fn complete(
        &self,
        run_id: &str,
        attempt: Option<u32>,
        output: Option<&Value>,
    ) -> Result<RunView, Error> {
        self.run_action(
            run_id,
            "complete",
            &CompleteRequest {
                output: output.cloned(),
                attempt,
                feedback: None,
            },
        )
        .await
    }

    /// `POST /v1/runs/{id}/complete` with any of its fields, `feedback` among them: what the
    /// upstream an adaptive limit protects said (`ok` raises its limit in force by one), then
    /// the run succeeds.
    ///
    /// ```
    /// # async fn f(client: &tollgate_client::Client, run_id: &str) -> Result<(), tollgate_client::Error> {
    /// use tollgate_client::{CompleteRequest, FeedbackOutcome, RunFeedback};
    /// let body = CompleteRequest {
    ///     feedback: Some(RunFeedback::new("stripe-api", FeedbackOutcome::Ok)),
    ///     ..CompleteRequest::default()
    /// };
    /// client.complete_with(run_id, &body).await?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// As [`Client::heartbeat`]; 404 `unknown_limit` or 422 `not_adaptive` (field
    /// `feedback.key`), then the run is left as it was.
    pub async fn complete_with(
        &self,
        run_id: &str,
        body: &CompleteRequest,
    ) -> Result<RunView, Error> {
        self.run_action(run_id, "complete", body).await
    }

    /// `POST /v1/runs/{id}/fail`: records a failure. With `retry`, the run is queued again
    /// while attempts remain (after its task's `retry` backoff, `scheduled` meanwhile);
    /// otherwise (or when none remain) it fails for good.
    ///
    /// # Errors
    /// As [`Client::heartbeat`].
    pub async fn fail(
        &self,
        run_id: &str,
        attempt: Option<u32>,
        error: &str,
        retry: bool,
    ) -> Result<RunView, Error> {
        let body = FailRequest {
            error: error.to_owned(),
            retry,
            attempt,
            retry_after_ms: None,
            pause: None,
            feedback: None,
        };
        self.run_action(run_id, "fail", &body).await
    }

    /// [`Client::fail`] with a retry after `retry_after` (an upstream's `Retry-After`) instead
    /// of the task's backoff, while attempts remain: the run is `scheduled` until then.
    ///
    /// # Errors
    /// As [`Client::heartbeat`].
    pub async fn fail_retry_after(
        &self,
        run_id: &str,
        attempt: Option<u32>,
        error: &str,
        retry_after: Duration,
    ) -> Result<RunView, Error> {
        let body = FailRequest {
            error: error.to_owned(),
            retry: true,
            attempt,
            retry_after_ms: Some(millis_ceil(retry_after)),
            pause: None,
            feedback: None,
        };
        self.run_action(run_id, "fail", &body).await
    }

    /// `POST /v1/runs/{id}/fail` with any of its fields, `pause` and `feedback` among them: an
    /// upstream's 429 with `Retry-After` pauses that key for every worker, a `throttled`
    /// feedback halves an adaptive limit's limit in force, then the run fails (and, with
    /// `retry`, waits for the pause like every run on the key).
    ///
    /// ```
    /// # async fn f(client: &tollgate_client::Client, run_id: &str) -> Result<(), tollgate_client::Error> {
    /// use tollgate_client::{FailPause, FailRequest, FeedbackOutcome, RunFeedback};
    /// let pause = FailPause { key: "stripe-api".into(), for_ms: Some(30_000), ..FailPause::default() };
    /// let body = FailRequest {
    ///     error: "429 Too Many Requests".into(),
    ///     retry: true,
    ///     attempt: None,
    ///     retry_after_ms: None,
    ///     pause: Some(pause),
    ///     feedback: Some(RunFeedback::new("stripe-api", FeedbackOutcome::Throttled)),
    /// };
    /// client.fail_with(run_id, &body).await?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// As [`Client::heartbeat`]; 404 `unknown_limit` (field `pause.key` or `feedback.key`) for
    /// a static key that is not declared, 422 `not_adaptive` (field `feedback.key`) for a limit
    /// that does not adapt; then the run is left as it was.
    pub async fn fail_with(&self, run_id: &str, body: &FailRequest) -> Result<RunView, Error> {
        self.run_action(run_id, "fail", body).await
    }

    /// `POST /v1/runs/{id}/release`: hands a running run back without counting an attempt
    /// (graceful worker shutdown); the units it took are given back.
    ///
    /// # Errors
    /// As [`Client::heartbeat`].
    pub async fn release(&self, run_id: &str, attempt: Option<u32>) -> Result<RunView, Error> {
        self.run_action(run_id, "release", &AttemptRequest { attempt })
            .await
    }

    /// `POST /v1/runs/{id}/cancel`: cancels a run that has not ended. A running run's worker
    /// learns it on its next call (409 `invalid_state`).
    ///
    /// # Errors
    /// [`Error::Api`] 404 `unknown_run`; 409 `invalid_state` for a run that has ended.
    pub async fn cancel(&self, run_id: &str) -> Result<RunView, Error> {
        self.run_action(run_id, "cancel", &CancelRequest {}).await
    }

    async fn run_action(
        &self,
        run_id: &str,
        action: &str,
        body: &impl Serialize,
    ) -> Result<RunView, Error> {
        self.call(
            Method::POST,
            self.url(&["v1", "runs", run_id, action]),
            Some(body),
            Duration::ZERO,
        )
        .await
    }

    /// `GET /v1/runs/{id}`: a run with its `state`, `attempt`, `waiting_on`,
    /// `eligible_at_ms`, `skip_reason`, ….
    ///
    /// # Errors
    /// [`Error::Api`] 404 `unknown_run`.
    pub async fn get_run(&self, run_id: &str) -> Result<RunView, Error> {
        self.call(
            Method::GET,
            self.url(&["v1", "runs", run_id]),
            None::<&()>,
            Duration::ZERO,
        )
        .await
    }

    /// `GET /v1/runs/{id}/explain`: why a run waits, key by key: each limit and concurrency
    /// key it needs with its limit in force, usage, pause, and the run's place in the key's
    /// wait queue (with up to 10 runs ahead of it); for a queued run, how many ready runs of its
    /// task are ahead.
    ///
    /// # Errors
    /// [`Error::Api`] 404 `unknown_run`.
    pub async fn explain(&self, run_id: &str) -> Result<tollgate_api::Explanation, Error> {
        self.call(
            Method::GET,
            self.url(&["v1", "runs", run_id, "explain"]),
            None::<&()>,
            Duration::ZERO,
        )
        .await
    }

    /// `GET /v1/runs?task=&state=&limit=`: runs, newest first.
    ///
    /// # Errors
    /// [`Error::Api`] 422 `unknown_task` (field `task`) for a task that is not defined; 400
    /// `invalid_field` for a `limit` of 0 or over 1000.
    pub async fn list_runs(&self, filter: &RunFilter) -> Result<Vec<RunView>, Error> {
        let mut url = self.url(&["v1", "runs"]);
        {
            let mut query = url.query_pairs_mut();
            if let Some(task) = &filter.task {
                query.append_pair("task", task);
            }
            if let Some(state) = filter.state {
                query.append_pair("state", state.as_str());
            }
            if let Some(limit) = filter.limit {
                query.append_pair("limit", &limit.to_string());
            }
        }
        if url.query() == Some("") {
            url.set_query(None);
        }
        let runs: RunListing = self
            .call(Method::GET, url, None::<&()>, Duration::ZERO)
            .await?;
        Ok(runs.runs)
    }
}

//! The task-run admission queue: runs wait, parked with an exact `eligible_at`, until every
//! limit they name allows them. [`Engine`](crate::Engine) is its API; `state` its state machine;
//! `run_queue` the interface both engines implement ([`RunQueue`](crate::RunQueue)) and the front
//! they share (the long-poll, name checks, compiling tasks); `wait_queue` and `ready_queue` the
//! order runs are tried and leased in (priorities, fairness keys); `explain` why a run waits,
//! built alike by both engines; `key_uses` what the runs not yet ended name.

pub mod explain;
pub(crate) mod key_uses;
pub(crate) mod ready_queue;
pub mod run;
pub mod run_queue;
pub(crate) mod state;
pub mod wait_queue;

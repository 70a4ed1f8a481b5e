//! The task-run admission queue: runs wait, parked with an exact `eligible_at`, until every
//! limit they name allows them. [`Engine`](crate::Engine) is its API; `state` its state machine.

pub mod run;
pub(crate) mod state;

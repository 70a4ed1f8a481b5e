//! [`TaskSpec`]: a task definition in its JSON form (`PUT /v1/tasks/{name}`), kept as given so
//! that `GET /v1/tasks/{name}` shows it back. The types are the wire types of `tollgate-api`.

pub use tollgate_api::{
    ConcurrencyUse, IdempotencyUse, KeyScope, NumberOrExpr, OnLimit, RateLimitUse, RetrySpec,
    TaskSpec, Throttle, ThrottleSpec,
};

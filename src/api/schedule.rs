//! `/api/schedule/preview`: the next fire times of an expression, computed by the same
//! code the scheduler uses.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::Query;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{ApiError, Envelope, Reply};
use crate::node::NodeCore;
use crate::scheduler::cron::{parse_timezone, Schedule};

pub fn routes() -> OpenApiRouter<Arc<NodeCore>> {
    OpenApiRouter::new().routes(routes!(preview))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Preview {
    pub cron: String,
    pub timezone: String,
    /// RFC 3339 UTC instants, strictly after `from`.
    pub fire_times: Vec<String>,
}

/// Computes a preview; shared by the API and `raftcron schedule preview`.
pub fn compute(expr: &str, timezone: &str, count: usize, from: DateTime<Utc>) -> Result<Preview, ApiError> {
    let schedule = Schedule::parse(expr).map_err(|e| ApiError::BadRequest(format!("cron: {e}")))?;
    let tz = parse_timezone(timezone).map_err(|e| ApiError::BadRequest(format!("timezone: {e}")))?;
    if count == 0 || count > 100 {
        return Err(ApiError::BadRequest("count: must be between 1 and 100".into()));
    }
    // `@every` is anchored at the task's creation; for a preview, at `from`.
    let fire_times = schedule
        .fire_times(tz, from, from, count)
        .into_iter()
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true))
        .collect();
    Ok(Preview { cron: expr.to_string(), timezone: timezone.to_string(), fire_times })
}

/// The next fire times of a cron expression.
#[utoipa::path(
    get, path = "/api/schedule/preview", tag = "schedule",
    params(
        ("cron" = String, Query, description = "5-field, 6-field (leading seconds), a macro or @every <duration>"),
        ("timezone" = Option<String>, Query, description = "IANA zone; default the scheduler's default_timezone"),
        ("count" = Option<usize>, Query, description = "how many, 1 to 100, default 5"),
        ("from" = Option<String>, Query, description = "RFC 3339 instant; fire times are strictly after it; default now"),
    ),
    responses((status = 200, body = Envelope<Preview>), (status = 400), (status = 401)),
    security(("bearer" = []))
)]
async fn preview(
    axum::extract::State(core): axum::extract::State<Arc<NodeCore>>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Result<Reply<Preview>, ApiError> {
    let expr = q.get("cron").ok_or_else(|| ApiError::BadRequest("cron: the query parameter is required".into()))?;
    let timezone = q.get("timezone").cloned().unwrap_or_else(|| core.config.scheduler.default_timezone.clone());
    let count = match q.get("count") {
        None => 5,
        Some(c) => c.parse::<usize>().map_err(|_| ApiError::BadRequest(format!("count: {c:?} is not a number")))?,
    };
    let from = match q.get("from") {
        None => Utc::now(),
        Some(f) => DateTime::parse_from_rfc3339(f)
            .map_err(|e| ApiError::BadRequest(format!("from: {f:?} is not an RFC 3339 instant: {e}")))?
            .with_timezone(&Utc),
    };
    Ok(Reply::ok(compute(expr, &timezone, count, from)?))
}

//! Who may call what: one table of every route and the roles it admits, enforced by one
//! middleware for API keys and JWTs alike, and printed in the README (a test holds the
//! two equal, another holds the table to the router, and the auth-matrix test holds the
//! server to it).
//!
//! Roles: `admin` ⊇ `operator` ⊇ `viewer`; `worker` is a principal of its own that may
//! act only for the worker id it is named after. For routes that name a worker, the table
//! says which roles may call them at all; the handler then holds a worker credential to
//! its own id ([`own_worker`]).
//!
//! This module must never decide anything from the request beyond its route and caller.

use std::sync::Arc;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::auth::Caller;
use super::ApiError;
use crate::config::Role;
use crate::node::NodeCore;

/// What a route admits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No credential at all.
    Open,
    /// This role or a higher one (never a worker).
    Role(Role),
    /// An admin, or the worker the request names.
    Worker,
    /// A viewer or higher, or the worker the request names.
    WorkerOrViewer,
}

impl Access {
    pub fn admits(self, role: Role) -> bool {
        match self {
            Access::Open => true,
            Access::Role(needed) => role.covers(needed),
            Access::Worker => matches!(role, Role::Admin | Role::Worker),
            Access::WorkerOrViewer => role == Role::Worker || role.covers(Role::Viewer),
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Access::Open => "anyone, no credential",
            Access::Role(Role::Viewer) => "viewer, operator, admin",
            Access::Role(Role::Operator) => "operator, admin",
            Access::Role(Role::Admin) => "admin",
            Access::Role(Role::Worker) => "worker",
            Access::Worker => "admin, or the worker itself",
            Access::WorkerOrViewer => "viewer, operator, admin, or the worker itself",
        }
    }
}

/// Every route: method, path (as the router matches it), who may call it.
pub const ROUTES: &[(&str, &str, Access)] = &[
    ("GET", "/api/health", Access::Open),
    ("GET", "/metrics", Access::Open),
    ("GET", "/api/openapi.json", Access::Open),
    ("GET", "/api/system/status", Access::Role(Role::Viewer)),
    ("GET", "/api/tasks", Access::Role(Role::Viewer)),
    ("POST", "/api/tasks", Access::Role(Role::Admin)),
    ("GET", "/api/tasks/{task_id}", Access::Role(Role::Viewer)),
    ("PUT", "/api/tasks/{task_id}", Access::Role(Role::Admin)),
    ("DELETE", "/api/tasks/{task_id}", Access::Role(Role::Admin)),
    // Resuming a `disabled` task also needs admin (checked by the handler).
    ("POST", "/api/tasks/{task_id}/pause", Access::Role(Role::Operator)),
    ("POST", "/api/tasks/{task_id}/resume", Access::Role(Role::Operator)),
    ("POST", "/api/tasks/{task_id}/trigger", Access::Role(Role::Operator)),
    ("GET", "/api/tasks/{task_id}/runs", Access::Role(Role::Viewer)),
    ("GET", "/api/runs", Access::Role(Role::Viewer)),
    ("GET", "/api/runs/{run_id}", Access::Role(Role::Viewer)),
    ("POST", "/api/runs/{run_id}/cancel", Access::Role(Role::Operator)),
    ("POST", "/api/runs/{run_id}/report", Access::Worker),
    ("GET", "/api/schedule/preview", Access::Role(Role::Viewer)),
    ("GET", "/api/workers", Access::Role(Role::Viewer)),
    ("GET", "/api/workers/{worker_id}", Access::WorkerOrViewer),
    ("PUT", "/api/workers/{worker_id}", Access::Role(Role::Admin)),
    ("POST", "/api/workers/{worker_id}/register", Access::Worker),
    ("POST", "/api/workers/{worker_id}/heartbeat", Access::Worker),
    ("GET", "/api/workers/{worker_id}/assignments", Access::Worker),
    ("GET", "/api/cluster", Access::Role(Role::Viewer)),
    ("POST", "/api/cluster/nodes", Access::Role(Role::Admin)),
    ("DELETE", "/api/cluster/nodes/{node_id}", Access::Role(Role::Admin)),
    ("POST", "/api/cluster/transfer-leader", Access::Role(Role::Admin)),
    // A backup holds every task secret.
    ("GET", "/api/cluster/snapshot", Access::Role(Role::Admin)),
];

/// The rule for a matched route.
pub fn access_of(method: &str, path: &str) -> Option<Access> {
    ROUTES.iter().find(|(m, p, _)| *m == method && *p == path).map(|(_, _, a)| *a)
}

/// The table as the README prints it (between its `access-table` markers).
pub fn markdown_table() -> String {
    let mut out = String::from("| method | path | who may call it |\n|---|---|---|\n");
    for (m, p, a) in ROUTES {
        out.push_str(&format!("| {m} | `{p}` | {} |\n", a.describe()));
    }
    out
}

/// Middleware, after authentication: refuses a caller whose role the route does not
/// admit (403). A route missing from the table is refused to everyone: failing closed.
pub async fn authorize(State(_core): State<Arc<NodeCore>>, req: Request, next: Next) -> Response {
    let path = req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_string()).unwrap_or_default();
    // HEAD is GET without the body: the same rule.
    let method =
        if req.method() == axum::http::Method::HEAD { "GET".to_string() } else { req.method().as_str().to_string() };
    let Some(caller) = req.extensions().get::<Caller>() else {
        return ApiError::Unauthorized("no credential".into()).into_response();
    };
    match access_of(&method, &path) {
        Some(a) if a.admits(caller.role) => next.run(req).await,
        Some(a) => ApiError::Forbidden(format!(
            "role {} may not {method} {path}; allowed: {}",
            format!("{:?}", caller.role).to_lowercase(),
            a.describe()
        ))
        .into_response(),
        None => ApiError::Forbidden(format!("{method} {path} has no access rule")).into_response(),
    }
}

/// For routes that name a worker: an admin may act for any, a worker only for itself.
pub fn own_worker(caller: &Caller, worker: &str) -> Result<(), ApiError> {
    if caller.role == Role::Admin
        || (caller.role == Role::Worker && crate::model::worker::acts_for(&caller.name, worker))
    {
        Ok(())
    } else {
        Err(ApiError::Forbidden(format!("credential {:?} may not act for worker {worker:?}", caller.name)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_readme_prints_the_table_the_server_enforces() {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
        let start = readme.find("<!-- access-table -->\n").expect("README has the access-table marker");
        let rest = &readme[start + "<!-- access-table -->\n".len()..];
        let end = rest.find("<!-- /access-table -->").expect("README closes the access table");
        assert_eq!(&rest[..end], markdown_table(), "README's route table differs from api::access::ROUTES");
    }

    #[test]
    fn the_table_covers_every_route_of_the_router_once() {
        let (_, _, doc) = super::super::api_routes();
        let mut routed: Vec<(String, String)> = Vec::new();
        for (path, item) in doc.paths.paths {
            for (method, op) in [
                ("GET", item.get.is_some()),
                ("POST", item.post.is_some()),
                ("PUT", item.put.is_some()),
                ("DELETE", item.delete.is_some()),
                ("PATCH", item.patch.is_some()),
            ] {
                if op {
                    routed.push((method.into(), path.clone()));
                }
            }
        }
        routed.push(("GET".into(), "/api/openapi.json".into()));
        routed.sort();
        let mut table: Vec<(String, String)> = ROUTES.iter().map(|(m, p, _)| (m.to_string(), p.to_string())).collect();
        table.sort();
        assert_eq!(routed, table);
    }

    #[test]
    fn roles_nest_and_workers_stand_apart() {
        use Role::*;
        assert!(Access::Role(Viewer).admits(Admin) && Access::Role(Viewer).admits(Operator));
        assert!(!Access::Role(Operator).admits(Viewer) && !Access::Role(Viewer).admits(Worker));
        assert!(Access::Worker.admits(Worker) && Access::Worker.admits(Admin) && !Access::Worker.admits(Operator));
        assert!(Access::WorkerOrViewer.admits(Worker) && Access::WorkerOrViewer.admits(Viewer));
    }
}

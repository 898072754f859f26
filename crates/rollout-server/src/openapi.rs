//! The OpenAPI 3.1 document of the server, written by hand (a derive crate would add a
//! dependency and annotations on every handler for a document of this size); a test keeps it
//! equal to [`crate::routes`] and checks real responses against its schemas.

use axum::Json;
use serde_json::{json, Value};

/// An axum path as OpenAPI writes it (`{*path}` → `{path}`).
pub fn openapi_path(axum_path: &str) -> String {
    axum_path.replace("{*", "{")
}

fn r(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

fn ok(status: &str, schema: Value, description: &str) -> Value {
    json!({status: {"description": description, "content": {"application/json": {"schema": schema}}}})
}

fn errors(codes: &[&str]) -> Value {
    let mut m = serde_json::Map::new();
    for c in codes {
        m.insert(
            c.to_string(),
            json!({"description": "error", "content": {"application/json": {"schema": r("Error")}}}),
        );
    }
    Value::Object(m)
}

fn merge(mut a: Value, b: Value) -> Value {
    if let (Some(a), Value::Object(b)) = (a.as_object_mut(), b) {
        a.extend(b);
    }
    a
}

fn param(name: &str, place: &str, description: &str) -> Value {
    json!({"name": name, "in": place, "required": place == "path", "schema": {"type": "string"}, "description": description})
}

fn op(summary: &str, params: Vec<Value>, responses: Value, auth: bool) -> Value {
    let mut o = json!({"summary": summary, "parameters": params, "responses": responses});
    if auth {
        o["security"] = json!([{"bearer": []}, {"hotkey": []}]);
    }
    o
}

fn nullable(t: &str) -> Value {
    json!({"type": [t, "null"]})
}

/// The document.
pub fn document() -> Value {
    let id = || param("id", "path", "batch or job id");
    let trial = || param("trial", "path", "trial name (or task name)");
    let mut paths = serde_json::Map::new();
    let mut add = |method: &str, path: &str, operation: Value| {
        let entry = paths.entry(path.to_string()).or_insert_with(|| json!({}));
        entry[method] = operation;
    };
    add(
        "get",
        "/health",
        op("Liveness", vec![], ok("200", r("Health"), "alive"), false),
    );
    add(
        "get",
        "/status",
        op(
            "Version, uptime, queue depth, limits",
            vec![],
            ok("200", r("Status"), "status"),
            false,
        ),
    );
    add(
        "get",
        "/metrics",
        op(
            "Prometheus metrics",
            vec![],
            json!({"200": {"description": "text exposition", "content": {"text/plain": {"schema": {"type": "string"}}}}}),
            false,
        ),
    );
    add(
        "post",
        "/submit",
        merge(
            op(
                "Submit a term-executor archive (multipart field `archive` or `file`)",
                vec![
                    json!({"name": "concurrent_tasks", "in": "query", "required": false, "schema": {"type": "integer", "minimum": 1}}),
                ],
                merge(
                    ok("202", r("SubmitResponse"), "accepted"),
                    errors(&["400", "401", "403", "413", "503"]),
                ),
                true,
            ),
            json!({"requestBody": {"required": true, "content": {"multipart/form-data": {"schema": {"type": "object", "properties": {"archive": {"type": "string", "format": "binary"}, "file": {"type": "string", "format": "binary"}}}}}}}),
        ),
    );
    add(
        "get",
        "/batches",
        op(
            "List batches",
            vec![],
            ok(
                "200",
                json!({"type": "array", "items": r("BatchListItem")}),
                "batches",
            ),
            false,
        ),
    );
    add(
        "get",
        "/batch/{id}",
        op(
            "A batch",
            vec![id()],
            merge(ok("200", r("Batch"), "batch"), errors(&["404"])),
            false,
        ),
    );
    add(
        "get",
        "/batch/{id}/tasks",
        op(
            "A batch's tasks",
            vec![id()],
            merge(ok("200", r("BatchTasks"), "tasks"), errors(&["404"])),
            false,
        ),
    );
    add(
        "get",
        "/batch/{id}/task/{task_id}",
        op(
            "One task of a batch",
            vec![id(), param("task_id", "path", "task id")],
            merge(ok("200", r("BatchTaskDetail"), "task"), errors(&["404"])),
            false,
        ),
    );
    add(
        "post",
        "/batch/{id}/cancel",
        op(
            "Cancel a batch",
            vec![id()],
            merge(
                ok("202", r("CancelResponse"), "cancelling"),
                errors(&["401", "403", "404", "409"]),
            ),
            true,
        ),
    );
    add("get", "/ws", op("WebSocket of a batch's events: snapshot, batch_status (extracting), task_status (each change of a task's status: cloning_repo, installing_deps, running_agent, running_tests), batch_started, task_started, task_complete, batch_complete", vec![param("batch_id", "query", "batch id")], merge(json!({"101": {"description": "switching protocols"}}), errors(&["400", "404"])), false));
    add(
        "get",
        "/api/v1/openapi.json",
        op(
            "This document",
            vec![],
            json!({"200": {"description": "OpenAPI document", "content": {"application/json": {"schema": {"type": "object"}}}}}),
            false,
        ),
    );
    add("post", "/api/v1/jobs", merge(op(
        "Submit a job: a job configuration (JSON body), or multipart `config` + `archive` of Harbor tasks",
        vec![],
        merge(ok("202", r("Job"), "accepted"), errors(&["400", "401", "403", "413", "503"])),
        true,
    ), json!({"requestBody": {"required": true, "content": {
        "application/json": {"schema": r("JobConfig")},
        "multipart/form-data": {"schema": {"type": "object", "properties": {"config": r("JobConfig"), "archive": {"type": "string", "format": "binary"}}}}
    }}})));
    add(
        "get",
        "/api/v1/jobs",
        op(
            "List jobs (batches included)",
            vec![],
            ok("200", r("JobList"), "jobs"),
            false,
        ),
    );
    add(
        "get",
        "/api/v1/jobs/{id}",
        op(
            "A job",
            vec![id()],
            merge(ok("200", r("Job"), "job"), errors(&["404"])),
            false,
        ),
    );
    add(
        "post",
        "/api/v1/jobs/{id}/cancel",
        op(
            "Cancel a job",
            vec![id()],
            merge(
                ok("202", r("JobCancelResponse"), "cancelling"),
                errors(&["401", "403", "404", "409"]),
            ),
            true,
        ),
    );
    add(
        "get",
        "/api/v1/jobs/{id}/trials",
        op(
            "A job's trials",
            vec![id()],
            merge(ok("200", r("TrialList"), "trials"), errors(&["404"])),
            false,
        ),
    );
    add(
        "get",
        "/api/v1/jobs/{id}/trials/{trial}",
        op(
            "One trial",
            vec![id(), trial()],
            merge(ok("200", r("Trial"), "trial"), errors(&["404"])),
            false,
        ),
    );
    add(
        "get",
        "/api/v1/jobs/{id}/trials/{trial}/files/{path}",
        op(
            "Download a file of the trial directory",
            vec![
                id(),
                trial(),
                param("path", "path", "path inside the trial directory"),
            ],
            merge(
                json!({"200": {"description": "the file", "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}}),
                errors(&["400", "401", "403", "404"]),
            ),
            true,
        ),
    );
    add("get", "/api/v1/jobs/{id}/events", op("Server-Sent Events of a job: snapshot, then StreamEvent objects named by their `event`", vec![id()], merge(json!({"200": {"description": "event stream", "content": {"text/event-stream": {"schema": r("StreamEvent")}}}}), errors(&["404"])), false));
    add(
        "get",
        "/api/v1/jobs/{id}/ws",
        op(
            "WebSocket of a job's events (StreamEvent JSON messages)",
            vec![id()],
            merge(
                json!({"101": {"description": "switching protocols"}}),
                errors(&["404"]),
            ),
            false,
        ),
    );
    let hash = || {
        param(
            "hash",
            "path",
            "artifact hash (BLAKE3 hex, or a unique prefix of 6+ digits)",
        )
    };
    add(
        "post",
        "/api/v1/bundles",
        op(
            "Import a lineage bundle (what `rollout register` sends)",
            vec![],
            merge(
                ok("201", r("BundleImported"), "imported"),
                errors(&["400", "401", "403", "404"]),
            ),
            true,
        ),
    );
    add(
        "get",
        "/api/v1/artifacts/{hash}",
        op(
            "What the provenance store knows about an artifact",
            vec![hash()],
            merge(ok("200", r("Artifact"), "artifact"), errors(&["404"])),
            false,
        ),
    );
    add(
        "get",
        "/api/v1/artifacts/{hash}/lineage",
        op(
            "The jobs and artifacts upstream of an artifact, as a tree",
            vec![
                hash(),
                param(
                    "depth",
                    "query",
                    "producing jobs to follow upstream (default 10, at most 64)",
                ),
            ],
            merge(ok("200", r("LineageNode"), "lineage"), errors(&["404"])),
            false,
        ),
    );

    for (method, path, operation) in crate::sessions::openapi_paths() {
        add(method, &openapi_path(path), operation);
    }

    // Reads of runs need the same credentials as writes, unless the server runs with
    // --public-reads.
    for path in [
        "/batches",
        "/batch/{id}",
        "/batch/{id}/tasks",
        "/batch/{id}/task/{task_id}",
        "/ws",
        "/api/v1/jobs",
        "/api/v1/jobs/{id}",
        "/api/v1/jobs/{id}/trials",
        "/api/v1/jobs/{id}/trials/{trial}",
        "/api/v1/jobs/{id}/events",
        "/api/v1/jobs/{id}/ws",
    ] {
        if let Some(get) = paths.get_mut(path).and_then(|p| p.get_mut("get")) {
            get["security"] = json!([{"bearer": []}, {"hotkey": []}, {}]);
            get["description"] = json!("Needs credentials unless the server runs with --public-reads; submitted secrets (agent env values, key-like options) are redacted and server paths removed.");
            if let Some(resp) = get["responses"].as_object_mut() {
                for code in ["401", "403"] {
                    resp.insert(code.into(), json!({"description": "error", "content": {"application/json": {"schema": r("Error")}}}));
                }
            }
        }
    }
    let run_status = json!({"type": "string", "enum": ["pending", "extracting", "running", "completed", "failed", "cancelled", "interrupted"]});
    let task_status = json!({"type": "string", "enum": ["queued", "cloning_repo", "installing_deps", "running_agent", "running_tests", "completed", "failed", "cancelled", "interrupted"]});
    let schemas = json!({
        "Error": {"type": "object", "required": ["error", "message"], "description": "Submission refusals (400) include: invalid_job (a setting `rollout run` refuses too), over_limit (over an operator limit: --max-memory-mb, --max-cpus, --max-pids, --max-attempts, --max-timeout-multiplier, --max-trials-per-job), host_variable (a `${VAR}` that would read the server's environment), source_refused (a local path, scheme, host or registry the server's source policy refuses), invalid_source, invalid_archive. Messages never hold server paths.", "properties": {"error": {"type": "string"}, "message": {"type": "string"}}},
        "Health": {"type": "object", "required": ["status"], "properties": {"status": {"type": "string"}}},
        "Status": {"type": "object", "required": ["version", "uptime_secs", "active_batches", "queued_batches", "total_batches", "completed_batches", "tasks_passed", "tasks_failed", "max_concurrent_tasks", "max_batches", "has_active_batch", "auth", "limits"], "properties": {
            "version": {"type": "string"}, "uptime_secs": {"type": "integer"}, "active_batches": {"type": "integer"},
            "queued_batches": {"type": "integer"}, "total_batches": {"type": "integer"}, "completed_batches": {"type": "integer"},
            "tasks_passed": {"type": "integer"}, "tasks_failed": {"type": "integer"}, "max_concurrent_tasks": {"type": "integer"},
            "max_batches": {"type": "integer"}, "has_active_batch": {"type": "boolean"}, "auth": {"type": "string", "enum": ["none", "token", "hotkey"]},
            "shutting_down": {"type": "boolean"},
            "limits": {"type": "object", "required": ["max_body_bytes", "max_archive_bytes", "max_extracted_bytes", "max_files", "max_compression_ratio"], "properties": {
                "max_body_bytes": {"type": "integer"}, "max_archive_bytes": {"type": "integer"}, "max_extracted_bytes": {"type": "integer"},
                "max_files": {"type": "integer"}, "max_compression_ratio": {"type": "number"}, "max_path_len": {"type": "integer"},
                "max_memory_mb": {"type": "integer"}, "max_cpus": {"type": "number"}, "max_pids": {"type": "integer"}, "max_attempts": {"type": "integer"},
                "max_timeout_multiplier": {"type": "number"}, "max_trials_per_job": {"type": "integer"}}},
            "public_reads": {"type": "boolean"}}},
        "SubmitResponse": {"type": "object", "required": ["batch_id", "total_tasks", "concurrent_tasks", "ws_url"], "properties": {
            "batch_id": {"type": "string"}, "total_tasks": {"type": "integer"}, "concurrent_tasks": {"type": "integer"}, "ws_url": {"type": "string"}}},
        "Batch": {"type": "object", "required": ["batch_id", "status", "total_tasks", "completed_tasks", "passed_tasks", "failed_tasks", "aggregate_reward", "error", "duration_ms", "created_at"], "properties": {
            "batch_id": {"type": "string"}, "status": run_status, "total_tasks": {"type": "integer"}, "completed_tasks": {"type": "integer"},
            "passed_tasks": {"type": "integer"}, "failed_tasks": {"type": "integer"}, "aggregate_reward": {"type": "number"},
            "error": nullable("string"), "duration_ms": nullable("integer"), "created_at": {"type": "string", "format": "date-time"},
            "concurrent_tasks": {"type": "integer"}}},
        "BatchListItem": {"type": "object", "required": ["batch_id", "created_at", "status"], "properties": {
            "batch_id": {"type": "string"}, "created_at": {"type": "string"}, "status": run_status}},
        "BatchTask": {"type": "object", "required": ["task_id", "status", "passed", "reward", "test_output", "error", "duration_ms"], "properties": {
            "task_id": {"type": "string"}, "trial_name": {"type": "string"}, "status": task_status, "passed": nullable("boolean"),
            "reward": nullable("number"), "test_output": nullable("string"), "error": nullable("string"), "duration_ms": nullable("integer")}},
        "BatchTaskDetail": {"allOf": [r("BatchTask"), {"type": "object", "required": ["test_results"], "properties": {"test_results": {"type": "array", "items": r("TestResult")}}}]},
        "TestResult": {"type": "object", "required": ["name", "passed", "exit_code", "output"], "properties": {
            "name": {"type": "string"}, "passed": {"type": "boolean"}, "exit_code": {"type": "integer"}, "output": {"type": "string"}}},
        "BatchTasks": {"type": "object", "required": ["batch_id", "tasks"], "properties": {"batch_id": {"type": "string"}, "tasks": {"type": "array", "items": r("BatchTask")}}},
        "CancelResponse": {"type": "object", "required": ["batch_id", "status"], "properties": {"batch_id": {"type": "string"}, "status": {"type": "string"}}},
        "JobCancelResponse": {"type": "object", "required": ["id", "status"], "properties": {"id": {"type": "string"}, "status": {"type": "string"}}},
        "JobConfig": {"type": "object", "description": "A job configuration as in docs/job-format.md (the JSON form of job.yaml); paths are relative to the uploaded archive."},
        "Job": {"type": "object", "required": ["id", "kind", "status", "created_at", "n_trials", "n_finished", "n_passed", "mean_reward", "concurrency"], "properties": {
            "id": {"type": "string"}, "kind": {"type": "string", "enum": ["batch", "job"]}, "status": run_status,
            "created_at": {"type": "string"}, "started_at": nullable("string"), "finished_at": nullable("string"),
            "n_trials": {"type": "integer"}, "n_finished": {"type": "integer"}, "n_passed": {"type": "integer"},
            "mean_reward": {"type": "number"}, "mean_reward_by_key": {"type": "object", "additionalProperties": {"type": "number"}}, "concurrency": {"type": "integer"}, "error": nullable("string"),
            "config": {"type": "object"}, "result": {"type": ["object", "null"], "description": "the job's result.json (docs/results.md) once finished"}}},
        "JobList": {"type": "object", "required": ["jobs"], "properties": {"jobs": {"type": "array", "items": r("Job")}}},
        "Trial": {"type": "object", "required": ["name", "task_name", "status", "reward", "passed", "error"], "properties": {
            "name": {"type": "string"}, "task_name": {"type": "string"}, "status": task_status, "reward": nullable("number"),
            "passed": nullable("boolean"), "error": nullable("string"), "duration_ms": nullable("integer"),
            "started_at": nullable("string"), "finished_at": nullable("string"),
            "result": {"type": ["object", "null"], "description": "the trial's result.json (docs/results.md) once finished"}}},
        "TrialList": {"type": "object", "required": ["job_id", "trials"], "properties": {"job_id": {"type": "string"}, "trials": {"type": "array", "items": r("Trial")}}},
        "BundleImported": {"type": "object", "required": ["root", "imported"], "properties": {"root": {"type": "string"}, "imported": {"type": "object"}}},
        "Artifact": {"type": "object", "required": ["hash", "size", "kind"], "properties": {"hash": {"type": "string"}, "size": {"type": "integer"}, "kind": {"type": "string"}}},
        "LineageNode": {"type": "object", "required": ["hash"], "properties": {"hash": {"type": "string"}}},
        "StreamEvent": {"type": "object", "required": ["seq", "event", "job_id", "data", "emitted_at"], "properties": {
            "seq": {"type": "integer"}, "event": {"type": "string", "enum": ["job_status", "task_status", "job_started", "trial_started", "phase_started", "phase_finished", "trial_finished", "cancelling", "note", "job_finished"]},
            "job_id": {"type": "string"}, "trial": {"type": "string"}, "task_id": {"type": "string"}, "data": {"type": "object"},
            "emitted_at": {"type": "string", "format": "date-time"}}},
    });
    let mut schemas = schemas;
    if let (Some(all), Value::Object(more)) =
        (schemas.as_object_mut(), crate::sessions::openapi_schemas())
    {
        all.extend(more);
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": "rollout serve", "version": crate::VERSION,
                 "description": "The term-executor compatible API and the native job API of rollout. Errors are {error, message}."},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "--auth token"},
                "hotkey": {"type": "apiKey", "in": "header", "name": "X-Hotkey", "description": "--auth hotkey: X-Hotkey (SS58), X-Nonce, X-Signature = hex sr25519 signature (context \"substrate\") over hotkey followed by nonce"}
            }
        }
    })
}

pub async fn serve_document() -> Json<Value> {
    Json(document())
}

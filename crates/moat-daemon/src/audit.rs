//! The daemon's side of the audit log: one writer per registered run that
//! asked for one (`RunSpec::audit_path`), fed by registration, the proxy's
//! request observer and `Request::Audit`, sealed at unregistration with the
//! installation key (`MOAT_HOME/audit/signing.key`).
//!
//! Nothing here may fail a run: an audit log that cannot be opened is
//! logged and skipped.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use moat_audit::{AuditWriter, SigningKey};
use moat_home::MoatHome;
use moat_proxy::{RequestEvent, RequestObserver};
use serde_json::{json, Value};

use crate::protocol::RunSpec;

/// Events queued per run before new ones are dropped (and counted).
const QUEUE: usize = 8192;

/// The open audit logs, by run id.
pub(crate) struct Audits {
    writers: RwLock<HashMap<String, Arc<AuditWriter>>>,
    key: Option<Arc<SigningKey>>,
    /// The cap on each run's log: the trace's (`MOAT_MAX_TRACE_BYTES`),
    /// since the same requests fill both.
    max_bytes: u64,
}

impl Audits {
    /// Loads (or creates) the signing key; without one, logs are written
    /// but not sealed. Each run's log is kept near `max_bytes`.
    pub(crate) fn new(home: &MoatHome, max_bytes: u64) -> Arc<Audits> {
        let key = match SigningKey::load_or_create(&home.audit_dir()) {
            Ok(key) => Some(Arc::new(key)),
            Err(e) => {
                tracing::warn!(error = %e, "audit logs will not be signed");
                None
            }
        };
        Arc::new(Audits {
            writers: RwLock::new(HashMap::new()),
            key,
            max_bytes,
        })
    }

    /// Opens the run's log (if it asked for one) and records its start.
    pub(crate) fn open(&self, run: &RunSpec, grants: &[String]) {
        let Some(path) = &run.audit_path else {
            return;
        };
        let writer = match self.writer(&run.run_id) {
            Some(w) => w,
            None => {
                match AuditWriter::open_for_run_capped(path, &run.run_id, QUEUE, self.max_bytes) {
                    Ok(w) => {
                        let w = Arc::new(w);
                        if let Ok(mut map) = self.writers.write() {
                            map.insert(run.run_id.clone(), w.clone());
                        }
                        w
                    }
                    Err(e) => {
                        tracing::warn!(run_id = %run.run_id, error = %e, "audit log disabled");
                        return;
                    }
                }
            }
        };
        let hosts: Vec<String> = run.rules.iter().map(|r| r.host.to_string()).collect();
        writer.append(
            "run",
            json!({
                "action": "started",
                "grants": grants,
                "policy": run.policy.to_string(),
                "rules": hosts,
                "allow_hosts": run.allow_hosts,
            }),
        );
        for inj in &run.injections {
            writer.append(
                "credential",
                json!({"name": inj.grant, "action": "injected", "host": inj.host}),
            );
        }
    }

    fn writer(&self, run_id: &str) -> Option<Arc<AuditWriter>> {
        self.writers.read().ok()?.get(run_id).cloned()
    }

    /// Appends an event sent by a client.
    pub(crate) fn append(&self, run_id: &str, kind: &str, data: Value) -> Result<(), String> {
        let valid_kind = !kind.is_empty()
            && kind.len() <= 32
            && kind
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !valid_kind {
            return Err(format!(
                "invalid audit entry type {kind:?}: use 1 to 32 lowercase letters, digits or '_'"
            ));
        }
        if !data.is_object() {
            return Err("audit entry data must be a JSON object".into());
        }
        let Some(writer) = self.writer(run_id) else {
            return Err(format!(
                "run {run_id} has no open audit log in the proxy daemon: events can only be \
                 added while the run is registered. List active runs with: moat proxy status"
            ));
        };
        writer.append(kind, data);
        Ok(())
    }

    /// Waits until everything queued for `run_id` is written and synced:
    /// for entries something else reads back (a restarted daemon takes
    /// `moat allow`/`moat deny` changes from the log).
    pub(crate) fn flush(&self, run_id: &str) -> Result<(), String> {
        let writer = self
            .writer(run_id)
            .ok_or_else(|| format!("run {run_id} has no open audit log"))?;
        writer.flush().map_err(|e| e.to_string())
    }

    /// Records the run's end, then seals and closes its log, off the async
    /// threads. Returns once the attestation is written.
    pub(crate) async fn stop(self: &Arc<Self>, run_id: &str, reason: Option<&str>) {
        let writer = match self.writers.write() {
            Ok(mut map) => map.remove(run_id),
            Err(_) => None,
        };
        let Some(writer) = writer else {
            return;
        };
        let mut data = json!({"action": "stopped"});
        if let (Some(reason), Some(map)) = (reason, data.as_object_mut()) {
            map.insert("reason".into(), Value::String(reason.to_owned()));
        }
        writer.append("run", data);
        let key = self.key.clone();
        let run_id = run_id.to_owned();
        let sealed = tokio::task::spawn_blocking(move || writer.seal(key)).await;
        match sealed {
            Ok(Ok(_)) => tracing::debug!(%run_id, "audit log sealed"),
            Ok(Err(e)) => tracing::warn!(%run_id, error = %e, "sealing the audit log"),
            Err(e) => tracing::warn!(%run_id, error = %e, "sealing the audit log"),
        }
    }

    /// The ids of runs with an open log.
    pub(crate) fn run_ids(&self) -> Vec<String> {
        self.writers
            .read()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    }
}

impl RequestObserver for Audits {
    fn on_request(&self, event: &RequestEvent<'_>) {
        let Some(writer) = self.writer(event.run_id) else {
            return;
        };
        let mut data = json!({
            "method": event.method,
            "url": event.url,
            "status_code": event.status_code,
            "duration_ms": (event.duration_ms * 1000.0).round() / 1000.0,
            "decision": if event.allowed { "allow" } else { "deny" },
        });
        if let Some(map) = data.as_object_mut() {
            if let Some(label) = event.credential_used {
                map.insert("credential_used".into(), Value::String(label.to_owned()));
            }
            if let Some(error) = event.error {
                map.insert("error".into(), Value::String(error.to_owned()));
            }
        }
        writer.append("network", data);
    }
}

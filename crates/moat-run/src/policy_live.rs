//! `moat allow`, `moat deny` and `moat policy`: a running run's network
//! policy, changed and shown through the proxy daemon's control socket
//! (mode 0600 under `MOAT_HOME/proxy`, which no sandbox can reach: only
//! the user who started the run changes its policy). The daemon applies a
//! change to the run's next request and records it in the run's audit log;
//! moat.yaml is never touched.

use moat_daemon::protocol::Request;
use moat_daemon::{DaemonClient, PolicyView};
use moat_home::MoatHome;
use moat_policy::{LiveAction, LiveChange};
use moat_storage::{RunMetadata, RunStore};

/// Why a live policy command failed.
#[derive(Debug, thiserror::Error)]
pub enum LivePolicyError {
    /// HOST or a RULE does not parse.
    #[error(transparent)]
    Parse(#[from] moat_policy::LiveChangeError),
    /// The run is not found, or the store cannot be read.
    #[error(transparent)]
    Storage(#[from] moat_storage::StorageError),
    /// The run has stopped: there is no policy in force to change.
    #[error("run {name} ({id}) is not running ({state}): only a running run's policy can change")]
    NotRunning {
        /// Run name.
        name: String,
        /// Run id.
        id: String,
        /// Its state.
        state: String,
    },
    /// No daemon serves this MOAT_HOME, so the run has no proxy.
    #[error("run {name} ({id}) has no proxy daemon: the daemon is not running")]
    NoDaemon {
        /// Run name.
        name: String,
        /// Run id.
        id: String,
    },
    /// Talking to the daemon failed, or it refused.
    #[error(transparent)]
    Daemon(#[from] moat_daemon::ClientError),
    /// Starting the async runtime failed.
    #[error("starting the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

impl moat_hint::Hint for LivePolicyError {
    fn hint(&self) -> Option<moat_hint::Fix> {
        match self {
            LivePolicyError::NotRunning { .. } | LivePolicyError::NoDaemon { .. } => Some(
                "Add the host to network.rules in moat.yaml (or pass --allow-host HOST) and \
                 start the run again: moat allow and moat deny change running runs only."
                    .into(),
            ),
            LivePolicyError::Parse(_) => Some(
                "Write HOST as in network.rules (api.example.com or *.example.com, no port), \
                 and each RULE as METHOD PATH (e.g. 'GET /repos/**')."
                    .into(),
            ),
            LivePolicyError::Storage(e) => e.hint(),
            LivePolicyError::Daemon(e) => e.hint(),
            LivePolicyError::Runtime(_) => None,
        }
    }
}

/// What to do with the run's policy.
#[derive(Debug, Clone)]
pub enum PolicyAction {
    /// `moat allow` / `moat deny`: HOST and RULEs as written.
    Change(LiveAction, String, Vec<String>),
    /// `moat policy`.
    Show,
}

/// Changes or shows the policy of the running run `run` (id, id prefix or
/// name); returns what to print (JSON with `json`).
pub fn live_policy(
    home: &MoatHome,
    run: &str,
    action: PolicyAction,
    json: bool,
) -> Result<String, LivePolicyError> {
    let change = match &action {
        PolicyAction::Change(verb, host, rules) => Some(LiveChange::parse(*verb, host, rules)?),
        PolicyAction::Show => None,
    };
    let meta = running(home, run)?;
    let run_id = meta.id.to_string();
    let request = match change.clone() {
        Some(change) => Request::PolicyChange {
            run_id: run_id.clone(),
            change,
        },
        None => Request::PolicyShow {
            run_id: run_id.clone(),
        },
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(LivePolicyError::Runtime)?;
    let view = runtime.block_on(async {
        let Some(client) = DaemonClient::connect_existing(home).await? else {
            return Err(LivePolicyError::NoDaemon {
                name: meta.name.clone(),
                id: run_id.clone(),
            });
        };
        Ok(client.policy(&request).await?)
    })?;
    if json {
        return Ok(format!(
            "{}\n",
            serde_json::to_string_pretty(&view).unwrap_or_default()
        ));
    }
    Ok(match change {
        Some(change) => changed(&meta, &change),
        None => table(&meta, &view),
    })
}

/// The run, if it is running.
fn running(home: &MoatHome, run: &str) -> Result<RunMetadata, LivePolicyError> {
    let store = RunStore::new(home.clone());
    let mut meta = store.find(Some(run), |_| true)?;
    RunStore::reconcile_view(&mut meta);
    if !meta.state.is_active() {
        return Err(LivePolicyError::NotRunning {
            name: meta.name.clone(),
            id: meta.id.to_string(),
            state: meta.state.to_string(),
        });
    }
    Ok(meta)
}

fn changed(meta: &RunMetadata, change: &LiveChange) -> String {
    let past = match change.action {
        LiveAction::Allow => "Allowed",
        LiveAction::Deny => "Denied",
    };
    let rules: Vec<String> = change.rules.iter().map(|r| r.to_string()).collect();
    let what = if rules.is_empty() {
        change.host.to_string()
    } else {
        format!("{} ({})", change.host, rules.join(", "))
    };
    format!(
        "{past} {what} for run {} from its next request on (recorded in its audit log).\n\
         See the policy in force with: moat policy {}\n",
        meta.name, meta.name
    )
}

fn table(meta: &RunMetadata, view: &PolicyView) -> String {
    let mut rows: Vec<[String; 4]> = vec![[
        "HOST".into(),
        "ACTION".into(),
        "RULES".into(),
        "SOURCE".into(),
    ]];
    for e in &view.entries {
        let rules = if e.rules.is_empty() {
            "-".to_owned()
        } else {
            e.rules.join("; ")
        };
        rows.push([e.host.clone(), e.action.clone(), rules, e.source.clone()]);
    }
    let default = match view.policy {
        moat_policy::Policy::Strict => "deny",
        moat_policy::Policy::Permissive => "allow",
    };
    rows.push([
        "(any other host)".into(),
        default.into(),
        "-".into(),
        format!("policy: {}", view.policy),
    ]);
    let width = |i: usize| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0);
    let widths = [width(0), width(1), width(2)];
    let mut out = format!(
        "Run {} ({}): policy {}, {} change(s) while running. Entries are consulted top to bottom.\n",
        meta.name, view.run_id, view.policy, view.changes
    );
    for r in &rows {
        out.push_str(&format!(
            "{:w0$}  {:w1$}  {:w2$}  {}\n",
            r[0],
            r[1],
            r[2],
            r[3],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2]
        ));
    }
    out
}

/// The `moat allow` / `moat deny` changes recorded in a run's audit log
/// (`policy` entries), in order; lines that are not one are skipped. The
/// log lives under `MOAT_HOME`, which no sandbox reaches.
pub(crate) fn changes_in_audit_log(path: &std::path::Path) -> Vec<LiveChange> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|entry| entry["type"] == "policy")
        .filter_map(|entry| {
            let d = &entry["data"];
            let change = serde_json::json!({
                "action": d["action"], "host": d["host"], "rules": d["rules"],
            });
            serde_json::from_value(change).ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_come_back_from_the_audit_log_in_order() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let log = dir.path().join("audit.jsonl");
        std::fs::write(
            &log,
            concat!(
                r#"{"seq":1,"type":"run","data":{"action":"allow"}}"#, "\n",
                r#"{"seq":2,"type":"policy","data":{"action":"allow","host":"api.example.com","rules":[],"by":"uid 0 pid 1"}}"#, "\n",
                "torn\n",
                r#"{"seq":3,"type":"policy","data":{"action":"deny","host":"api.example.com","rules":["deny DELETE /**"],"by":"uid 0 pid 2"}}"#, "\n",
                r#"{"seq":4,"type":"policy","data":{"action":"deny","host":"*","rules":[]}}"#, "\n",
            ),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let changes = changes_in_audit_log(&log);
        assert_eq!(changes.len(), 2);
        assert_eq!(changes[0].action, LiveAction::Allow);
        assert_eq!(changes[1].rules[0].to_string(), "deny DELETE /**");
        assert!(changes_in_audit_log(&dir.path().join("none")).is_empty());
    }
}

//! Services a sandbox reaches by name (`dependencies: [postgres@17]`):
//! what each one is ([`ServiceDef`]: image, port, credentials, readiness
//! check, the variables the sandbox gets), what a run asks of one
//! ([`ServiceRequest`]), and the [`Sidecar`] that request becomes.
//!
//! The catalogue is data every container runtime reads alike: it says
//! what a PostgreSQL sidecar is, not how an engine starts it. Turning a
//! request into a sidecar needs no runtime, so the orchestrator does it;
//! drivers that run containers start the sidecar, the others refuse it
//! ([`crate::DriverError::ServicesUnsupported`]).

use std::collections::BTreeMap;

use crate::Sidecar;

/// What one service is. `{password}`, `{user}` and `{db}` in the command,
/// readiness check and URL are replaced by the run's values; `{host}` and
/// `{port}` in the URL too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceDef {
    /// The dependency name (`postgres`), also the host name in the sandbox.
    pub name: &'static str,
    /// The official image's repository; the tag is the version.
    pub image: &'static str,
    /// The image tag used when `dependencies:` names no version.
    pub default_version: &'static str,
    /// The port it serves on.
    pub port: u16,
    /// `MOAT_<PREFIX>_*` variables in the sandbox.
    pub env_prefix: &'static str,
    /// The user the sandbox connects as, when the service has users.
    pub user: Option<&'static str>,
    /// The sidecar variable naming another user (`POSTGRES_USER`).
    pub user_env: Option<&'static str>,
    /// The database, when the service has databases.
    pub db: Option<&'static str>,
    /// The sidecar variable naming the database (`POSTGRES_DB`).
    pub db_env: Option<&'static str>,
    /// The sidecar variable carrying the password; `None` when the
    /// password is a command argument.
    pub password_env: Option<&'static str>,
    /// The sidecar's command; empty for the image's own.
    pub command: &'static [&'static str],
    /// The readiness check, run inside the sidecar.
    pub ready: &'static [&'static str],
    /// The connection URL given to the sandbox.
    pub url: &'static str,
}

/// PostgreSQL.
pub const POSTGRES: ServiceDef = ServiceDef {
    name: "postgres",
    image: "postgres",
    default_version: "17",
    port: 5432,
    env_prefix: "POSTGRES",
    user: Some("postgres"),
    user_env: Some("POSTGRES_USER"),
    db: Some("postgres"),
    db_env: Some("POSTGRES_DB"),
    password_env: Some("POSTGRES_PASSWORD"),
    command: &[],
    ready: &[
        "pg_isready",
        "-h",
        "localhost",
        "-U",
        "{user}",
        "-d",
        "{db}",
    ],
    url: "postgresql://{user}:{password}@{host}:{port}/{db}",
};

/// MySQL.
pub const MYSQL: ServiceDef = ServiceDef {
    name: "mysql",
    image: "mysql",
    default_version: "8",
    port: 3306,
    env_prefix: "MYSQL",
    user: Some("root"),
    user_env: None,
    db: Some("moat"),
    db_env: Some("MYSQL_DATABASE"),
    password_env: Some("MYSQL_ROOT_PASSWORD"),
    command: &[],
    ready: &[
        "mysqladmin",
        "ping",
        "-h",
        "127.0.0.1",
        "-u",
        "root",
        "--password={password}",
    ],
    url: "mysql://{user}:{password}@{host}:{port}/{db}",
};

/// Redis.
pub const REDIS: ServiceDef = ServiceDef {
    name: "redis",
    image: "redis",
    default_version: "7",
    port: 6379,
    env_prefix: "REDIS",
    user: None,
    user_env: None,
    db: None,
    db_env: None,
    password_env: None,
    command: &["redis-server", "--requirepass", "{password}"],
    ready: &["redis-cli", "--no-auth-warning", "-a", "{password}", "PING"],
    url: "redis://:{password}@{host}:{port}",
};

/// Every service moat can start.
pub const SERVICES: &[ServiceDef] = &[POSTGRES, MYSQL, REDIS];

/// The definition of service `name`.
pub fn service_def(name: &str) -> Option<&'static ServiceDef> {
    SERVICES.iter().find(|s| s.name == name)
}

/// What moat.yaml says of one service (`services.<name>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceOptions {
    /// Variables for the sidecar; they override moat's (`POSTGRES_DB`,
    /// `POSTGRES_PASSWORD`), and the sandbox's variables follow them.
    pub env: BTreeMap<String, String>,
    /// Another image than the official one.
    pub image: Option<String>,
    /// Memory limit, MiB.
    pub memory_mb: Option<u64>,
    /// Wait for readiness before the command starts.
    pub wait: bool,
    /// Shell commands run in the sidecar once it is ready.
    pub provision: Vec<String>,
}

impl Default for ServiceOptions {
    fn default() -> Self {
        ServiceOptions {
            env: BTreeMap::new(),
            image: None,
            memory_mb: None,
            wait: true,
            provision: Vec::new(),
        }
    }
}

/// A service a run asks for: which one, which version, and what
/// moat.yaml's `services.<name>` says of it. Made once, when the run is
/// planned, from `dependencies:`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceRequest {
    /// The service.
    pub service: &'static ServiceDef,
    /// The version written (`postgres@16`); the service's default
    /// otherwise.
    pub version: Option<String>,
    /// Its options.
    pub options: ServiceOptions,
}

/// A sidecar ready to start, and the variables the sandbox gets to reach
/// it (`MOAT_POSTGRES_URL`...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedService {
    /// What the runtime starts.
    pub sidecar: Sidecar,
    /// Variables for the sandbox.
    pub env: Vec<(String, String)>,
}

/// The service's credentials and the words its templates are filled with.
struct Credentials<'a> {
    def: &'a ServiceDef,
    password: String,
    user: Option<String>,
    db: Option<String>,
}

impl Credentials<'_> {
    /// `template` with `{password}`, `{user}`, `{db}`, `{host}` and
    /// `{port}` replaced.
    fn fill(&self, template: &str) -> String {
        template
            .replace("{password}", &self.password)
            .replace("{user}", self.user.as_deref().unwrap_or_default())
            .replace("{db}", self.db.as_deref().unwrap_or_default())
            .replace("{host}", self.def.name)
            .replace("{port}", &self.def.port.to_string())
    }
}

impl ServiceRequest {
    /// A request for `service` with no version and default options.
    pub fn new(service: &'static ServiceDef) -> Self {
        ServiceRequest {
            service,
            version: None,
            options: ServiceOptions::default(),
        }
    }

    /// The sidecar for this request and the variables the sandbox gets.
    /// `password` is the run's fresh one, used unless the options set the
    /// service's password variable.
    pub fn plan(&self, password: &str) -> PlannedService {
        let credentials = self.credentials(password);
        let def = self.service;
        let sidecar = Sidecar {
            name: def.name.to_owned(),
            image: self.image(),
            env: self.sidecar_env(&credentials),
            command: def.command.iter().map(|a| credentials.fill(a)).collect(),
            port: def.port,
            ready: def.ready.iter().map(|a| credentials.fill(a)).collect(),
            provision: self
                .options
                .provision
                .iter()
                .map(|c| vec!["sh".to_owned(), "-c".to_owned(), c.clone()])
                .collect(),
            memory_mb: self.options.memory_mb,
            wait: self.options.wait,
            secrets: vec![credentials.password.clone()],
        };
        PlannedService {
            sidecar,
            env: sandbox_env(&credentials),
        }
    }

    /// `services.<name>.image`, else the official image at the version.
    fn image(&self) -> String {
        match &self.options.image {
            Some(image) => image.clone(),
            None => format!(
                "{}:{}",
                self.service.image,
                self.version
                    .as_deref()
                    .unwrap_or(self.service.default_version)
            ),
        }
    }

    /// The password, user and database: the options' variables win over
    /// moat's choices.
    fn credentials(&self, password: &str) -> Credentials<'static> {
        let def = self.service;
        let from_env = |key: Option<&str>| key.and_then(|k| self.options.env.get(k)).cloned();
        Credentials {
            def,
            password: from_env(def.password_env).unwrap_or_else(|| password.to_owned()),
            user: from_env(def.user_env).or(def.user.map(str::to_owned)),
            db: from_env(def.db_env).or(def.db.map(str::to_owned)),
        }
    }

    /// The sidecar's variables: moat's password and database, then the
    /// options' (which replace them).
    fn sidecar_env(&self, credentials: &Credentials<'_>) -> Vec<(String, String)> {
        let def = self.service;
        let mut env: BTreeMap<String, String> = BTreeMap::new();
        if let Some(key) = def.password_env {
            env.insert(key.to_owned(), credentials.password.clone());
        }
        if let (Some(key), Some(db)) = (def.db_env, &credentials.db) {
            env.insert(key.to_owned(), db.clone());
        }
        env.extend(self.options.env.clone());
        env.into_iter().collect()
    }
}

/// `MOAT_<PREFIX>_URL`, `_HOST`, `_PORT`, `_USER`, `_PASSWORD`, `_DB`.
fn sandbox_env(credentials: &Credentials<'_>) -> Vec<(String, String)> {
    let def = credentials.def;
    let prefix = format!("MOAT_{}", def.env_prefix);
    let mut vars = vec![
        (format!("{prefix}_URL"), credentials.fill(def.url)),
        (format!("{prefix}_HOST"), def.name.to_owned()),
        (format!("{prefix}_PORT"), def.port.to_string()),
    ];
    if let Some(user) = &credentials.user {
        vars.push((format!("{prefix}_USER"), user.clone()));
    }
    vars.push((format!("{prefix}_PASSWORD"), credentials.password.clone()));
    if let Some(db) = &credentials.db {
        vars.push((format!("{prefix}_DB"), db.clone()));
    }
    vars
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(def: &'static ServiceDef, version: Option<&str>) -> ServiceRequest {
        ServiceRequest {
            version: version.map(str::to_owned),
            ..ServiceRequest::new(def)
        }
    }

    fn var<'a>(vars: &'a [(String, String)], name: &str) -> Option<&'a str> {
        vars.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn postgres_defaults() {
        let PlannedService { sidecar, env } = request(&POSTGRES, Some("16")).plan("pw");
        assert_eq!(sidecar.image, "postgres:16");
        assert_eq!(sidecar.port, 5432);
        assert!(sidecar
            .env
            .contains(&("POSTGRES_PASSWORD".into(), "pw".into())));
        assert_eq!(
            var(&env, "MOAT_POSTGRES_URL"),
            Some("postgresql://postgres:pw@postgres:5432/postgres")
        );
        assert_eq!(var(&env, "MOAT_POSTGRES_HOST"), Some("postgres"));
        assert_eq!(var(&env, "MOAT_POSTGRES_USER"), Some("postgres"));
        assert_eq!(var(&env, "MOAT_POSTGRES_DB"), Some("postgres"));
        assert_eq!(
            sidecar.ready,
            [
                "pg_isready",
                "-h",
                "localhost",
                "-U",
                "postgres",
                "-d",
                "postgres"
            ]
        );
    }

    #[test]
    fn default_version_and_overrides_propagate() {
        let mut service = request(&POSTGRES, None);
        let env = &mut service.options.env;
        env.insert("POSTGRES_DB".into(), "myapp".into());
        env.insert("POSTGRES_PASSWORD".into(), "chosen".into());
        let PlannedService { sidecar, env } = service.plan("random");
        assert_eq!(sidecar.image, "postgres:17");
        assert_eq!(
            var(&env, "MOAT_POSTGRES_URL"),
            Some("postgresql://postgres:chosen@postgres:5432/myapp")
        );
        assert_eq!(sidecar.secrets, ["chosen"]);
    }

    #[test]
    fn redis_password_is_an_argument() {
        let PlannedService { sidecar, env } = request(&REDIS, Some("7")).plan("pw");
        assert_eq!(sidecar.command, ["redis-server", "--requirepass", "pw"]);
        assert_eq!(var(&env, "MOAT_REDIS_URL"), Some("redis://:pw@redis:6379"));
        assert_eq!(var(&env, "MOAT_REDIS_USER"), None);
        assert!(sidecar.env.is_empty());
    }

    #[test]
    fn mysql_gets_its_database() {
        let PlannedService { sidecar, env } = request(&MYSQL, None).plan("pw");
        assert_eq!(sidecar.image, "mysql:8");
        assert!(sidecar
            .env
            .contains(&("MYSQL_DATABASE".into(), "moat".into())));
        assert_eq!(
            var(&env, "MOAT_MYSQL_URL"),
            Some("mysql://root:pw@mysql:3306/moat")
        );
    }

    #[test]
    fn provisioning_runs_in_a_shell_and_an_image_replaces_the_official_one() {
        let mut service = request(&POSTGRES, Some("16"));
        service.options.provision = vec!["psql -c 'select 1'".into()];
        service.options.image = Some("local/pg:16".into());
        let sidecar = service.plan("s3cret").sidecar;
        assert_eq!(sidecar.provision, [["sh", "-c", "psql -c 'select 1'"]]);
        assert_eq!(sidecar.image, "local/pg:16");
    }
}

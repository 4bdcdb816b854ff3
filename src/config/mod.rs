//! The TOML configuration. Every key has a built-in default, so the daemon runs with no
//! file; a bad file is refused with its path, line and key.

mod api;
mod values;

pub use api::{Api, ApiKey, Grant, KeyHash};
use serde::Deserialize;
use std::path::{Path, PathBuf};
pub use values::{AtLeastOne, ByteLimit, Domain, LocalPart, NodeId, SocketSpec};

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Envelope {
    /// The default bounce domain (docs/behaviour.md section 4, step 3).
    pub bounce_domain: Option<Domain>,
    pub bounce_local_part: LocalPart,
    /// Rewrite MAIL FROM to a bounce address at all.
    pub rewrite: bool,
    /// The pool of messages that name none (SparkPost: the account's default dedicated
    /// pool); `options.ip_pool = "sp_shared"` still takes the MTA's default route.
    pub default_ip_pool: Option<String>,
    /// The address the default route sends from (events' `sending_ip`).
    pub sending_ip: Option<std::net::IpAddr>,
}

impl Default for Envelope {
    fn default() -> Self {
        Self {
            bounce_domain: None,
            bounce_local_part: LocalPart::default(),
            rewrite: true,
            default_ip_pool: None,
            sending_ip: None,
        }
    }
}

/// How personalised copies are handed back to the MTA: an SMTP listener of the MTA on
/// loopback that runs no milters, or the MTA's sendmail(1) command.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Reinject {
    /// `HOST:PORT` of the MTA's re-injection listener.
    pub smtp: Option<String>,
    /// Path of the MTA's sendmail(1) command; used instead of `smtp` when set.
    pub sendmail: Option<PathBuf>,
    /// Seconds a hand-over may take before the message is tempfailed.
    pub timeout: u64,
    /// Copies handed over at once (and the size of the SMTP connection pool).
    pub concurrency: usize,
    /// Key of the HMAC on the copies' loop marker. Without it a random key is made at
    /// start, so a copy that loops back after a restart is processed as a new message.
    pub secret: Option<String>,
    /// Mark every copy with `X-MSYS-Reinjected`, so a copy that comes back through the
    /// milter is recognised and passed. Postfix strips the marker on the way out
    /// (`smtp_header_checks`); Sendmail cannot strip a header, and its re-injection port
    /// runs no milter, so Sendmail setups turn the marker off.
    pub loop_marker: bool,
    /// Hours the ledger of copies handed over is kept: a client's retry of the same
    /// message within them hands no copy over twice (0: no ledger).
    pub dedupe_hours: u32,
    /// Copies rendered and not yet handed over take at most this much memory (one copy
    /// is always allowed, however large).
    #[serde(deserialize_with = "values::size")]
    pub inflight_bytes: usize,
    /// A message whose copies together would be larger is refused (552 5.3.4) before
    /// any is handed over.
    #[serde(deserialize_with = "values::size")]
    pub max_copies_bytes: usize,
    /// While copies are handed over, the MTA is told every this many seconds that the
    /// milter is still at work (SMFIR_PROGRESS). Postfix starts its
    /// `milter_content_timeout` (300 s) again at each; Sendmail starts its per-reply
    /// read timeout (`T=R:`, 10 s by default) again, but not its overall `T=E:` limit.
    pub progress_seconds: AtLeastOne,
}

impl Reinject {
    /// The marker and feedback-header key (empty when none is set).
    pub fn secret_bytes(&self) -> &[u8] {
        self.secret.as_deref().unwrap_or_default().as_bytes()
    }
}

impl Default for Reinject {
    fn default() -> Self {
        Self {
            smtp: Some("127.0.0.1:10026".into()),
            sendmail: None,
            timeout: 30,
            concurrency: 16,
            secret: None,
            loop_marker: true,
            dedupe_hours: 24,
            inflight_bytes: 128 * 1024 * 1024,
            max_copies_bytes: 4 * 1024 * 1024 * 1024,
            progress_seconds: AtLeastOne(5),
        }
    }
}

/// Open/click tracking and List-Unsubscribe (docs/behaviour.md section 5).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Tracking {
    /// Default of `options.open_tracking` (SparkPost's SMTP default: off).
    pub open: bool,
    /// Default of `options.click_tracking` (SparkPost's SMTP default: off).
    pub click: bool,
    /// Public URL of the HTTP endpoint, e.g. `https://track.example.com`. Without it no
    /// link is rewritten and no List-Unsubscribe header is added.
    pub base_url: Option<String>,
    /// HMAC keys of the links: the first signs, all are accepted (rotation).
    pub secrets: Vec<String>,
    /// Days a tracking or unsubscribe link stays valid.
    pub link_expiry_days: u32,
}

impl Default for Tracking {
    fn default() -> Self {
        Self {
            open: false,
            click: false,
            base_url: None,
            secrets: Vec::new(),
            link_expiry_days: 365,
        }
    }
}

/// The HTTP endpoint for opens, clicks and one-click unsubscribes.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Http {
    /// `HOST:PORT`; the endpoint runs when `[tracking] base_url` is set.
    pub listen: String,
    /// Connections held at once; one more is answered 503 and closed.
    pub max_connections: AtLeastOne,
    /// Seconds a client has to send a request's headers.
    pub header_timeout: AtLeastOne,
    /// Seconds a connection may stay silent mid-request (between keep-alive requests
    /// `header_timeout` applies too: waiting for the next request's head).
    pub idle_timeout: AtLeastOne,
    /// Largest request head (431 above).
    pub max_header_bytes: ByteLimit,
    /// Largest request body (413 above; a one-click POST is a few dozen bytes).
    pub max_body_bytes: ByteLimit,
    /// Client networks that may read /metrics (others get 404); through a proxy on this
    /// host, the address it forwards is checked too.
    pub metrics_from: crate::netguard::Networks,
}

impl Default for Http {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            max_connections: AtLeastOne(512),
            header_timeout: AtLeastOne(10),
            idle_timeout: AtLeastOne(30),
            max_header_bytes: ByteLimit(16_384),
            max_body_bytes: ByteLimit(16_384),
            metrics_from: crate::netguard::Networks::loopback(),
        }
    }
}

/// Where the durable state lives (events outbox, suppression list, transmissions).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Store {
    /// `false`: no store: no events, no suppression (message shaping only).
    pub enabled: bool,
    /// The SQLite file; default: `$STATE_DIRECTORY/msys-milter.db`, else
    /// `/var/lib/msys-milter/msys-milter.db` when writable, else under the user's data
    /// directory.
    pub path: Option<PathBuf>,
    /// `full` (fsync every commit, survives power loss; the default) or `normal`
    /// (survives a crash or `kill -9` of the daemon, not a power loss).
    pub durability: Durability,
    /// The PostgreSQL database a group of hosts shares (suppression, events,
    /// transmissions): a URL or libpq's key=value form. Unset: this host alone.
    pub postgres: Option<String>,
    /// A PEM file of CA certificates to trust for the PostgreSQL server (besides the
    /// system's), when its certificate comes from a private CA.
    pub postgres_ca: Option<PathBuf>,
    /// Seconds a host holds a webhook batch it sends without renewing (several hosts):
    /// a host that dies mid-batch leaves it to another after this.
    pub webhook_lease_seconds: AtLeastOne,
    /// Keep the deliverability counters the REST API's metrics read (per minute and
    /// hour, as events are committed); `false` saves that work when nobody asks.
    pub counters: bool,
    /// Seconds a write may wait for the store (a stalled disk): then the message gets
    /// 451 and the write is dropped if it has not started.
    pub write_timeout: AtLeastOne,
}

impl Default for Store {
    fn default() -> Self {
        Self {
            counters: true,
            enabled: true,
            path: None,
            durability: Durability::Full,
            postgres: None,
            postgres_ca: None,
            webhook_lease_seconds: AtLeastOne(30),
            write_timeout: AtLeastOne(10),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    #[default]
    Full,
    Normal,
}

/// Event output besides webhooks.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Events {
    /// Append every event as one JSON line (a batch item) to this file.
    pub jsonl: Option<PathBuf>,
    /// Days delivered events stay in the store (`events tail`, `events replay`).
    pub retention_days: u32,
    /// SparkPost's `customer_id` in every event (its account number there).
    pub customer_id: String,
}

impl Default for Events {
    fn default() -> Self {
        Self {
            jsonl: None,
            retention_days: 7,
            customer_id: crate::events::DEFAULT_CUSTOMER_ID.to_owned(),
        }
    }
}

/// A consumer of events in SparkPost's webhook format.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Webhook {
    pub url: String,
    /// Event types to send (SparkPost's names); default: all.
    #[serde(default)]
    pub events: Option<Vec<String>>,
    /// HTTP basic auth, `user:password`.
    #[serde(default)]
    pub basic: Option<String>,
    /// A bearer token.
    #[serde(default)]
    pub bearer: Option<String>,
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    #[serde(default = "default_batch_wait_ms")]
    pub batch_wait_ms: u64,
    /// Hours a failing batch is retried before it is kept as failed.
    #[serde(default = "default_retry_hours")]
    pub retry_hours: u64,
}

fn default_batch_size() -> usize {
    100
}

fn default_batch_wait_ms() -> u64 {
    1000
}

fn default_retry_hours() -> u64 {
    72
}

impl Webhook {
    /// The sink's name in the store and in `webhooks status`: its URL without
    /// credentials.
    pub fn sink_name(&self) -> String {
        format!("webhook:{}", strip_userinfo(&self.url))
    }
}

/// `https://user:pw@host/x` -> `https://host/x`.
fn strip_userinfo(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://{}", &rest[at + 1..]),
        None => url.to_owned(),
    }
}

/// The bounce domains' mail: DSNs, bounces and auto-replies come back through LMTP.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Feedback {
    /// Where the LMTP listener runs: `127.0.0.1:2424`, `inet:HOST:PORT` or
    /// `unix:/path`. Unset: no listener.
    pub lmtp: Option<LmtpSocket>,
    /// Host names our MTA writes as `Reporting-MTA` in its DSNs (its `myhostname`):
    /// their bounces are in-band `bounce` events, others' `out_of_band`. Default: this
    /// machine's host name.
    pub reporting_mta: Vec<String>,
    /// Messages that could not be read are kept here for inspection (default: the
    /// `feedback-unread` directory beside the store).
    pub keep_dir: Option<PathBuf>,
    /// How many such messages are kept (the oldest go first).
    pub keep_max: usize,
    /// The MTA's log to follow for `delivery` and `delay` events (Postfix's
    /// `maillog_file`, or the syslog file such as `/var/log/mail.log`). Unset: off.
    pub mta_log: Option<PathBuf>,
    /// LMTP connections held at once; one more is answered 421 and closed.
    pub max_connections: AtLeastOne,
}

impl Default for Feedback {
    fn default() -> Self {
        Self {
            lmtp: None,
            reporting_mta: Vec::new(),
            keep_dir: None,
            keep_max: 1000,
            mta_log: None,
            max_connections: AtLeastOne(64),
        }
    }
}

/// The LMTP listener's socket: `HOST:PORT` is read as `inet:HOST:PORT`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct LmtpSocket(pub SocketSpec);

impl TryFrom<String> for LmtpSocket {
    type Error = String;
    fn try_from(spec: String) -> Result<Self, String> {
        let full = if spec.contains(':') && !spec.starts_with(['i', 'u', 'l']) {
            format!("inet:{spec}")
        } else {
            spec
        };
        full.parse().map(LmtpSocket)
    }
}

/// The JSONL file's sink name.
pub const JSONL_SINK: &str = "jsonl";

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendingDomain {
    pub name: Domain,
    #[serde(default)]
    pub bounce_domain: Option<Domain>,
    /// Subaccounts this domain is assigned to.
    #[serde(default)]
    pub subaccounts: Vec<u64>,
    /// The `[[dkim_key]]` that signs this domain's mail when the message names none.
    #[serde(default)]
    pub dkim_key: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpPool {
    pub name: String,
    /// The MTA transport the pool's mail leaves through, as Postfix's FILTER action takes
    /// it: `smtp_pool_a:` (the recipient's domain as next hop) or
    /// `smtp_pool_a:[relay.example]:25`. A pool without one takes the default route.
    #[serde(default)]
    pub transport: Option<String>,
    /// The address this pool's transport sends from (events' `sending_ip`).
    #[serde(default)]
    pub sending_ip: Option<std::net::IpAddr>,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DkimKey {
    pub name: String,
    /// The signing domain (`d=`).
    pub domain: Domain,
    /// The selector (`s=`): the key is published at `<selector>._domainkey.<domain>`.
    pub selector: String,
    /// A PEM private key: RSA (2048 bits or more) or Ed25519.
    pub private_key: PathBuf,
    /// Header names to sign instead of the default set.
    #[serde(default)]
    pub headers: Option<Vec<String>>,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub socket: SocketSpec,
    pub node_id: NodeId,
    /// Most milter connections served at once (Postfix opens one per smtpd process).
    pub max_connections: usize,
    /// Largest message body buffered for copies; larger ones are refused (552 5.3.4).
    #[serde(deserialize_with = "values::size")]
    pub max_message_size: usize,
    /// Async worker threads. One by default: a message's milter dialogue is short, and
    /// a second worker costs more in cross-thread wake-ups than it saves; heavy work
    /// (rewriting, signing, copies, API queries) moves off the worker while it runs.
    pub worker_threads: AtLeastOne,
    pub envelope: Envelope,
    pub reinject: Reinject,
    pub tracking: Tracking,
    pub http: Http,
    pub store: Store,
    pub events: Events,
    pub feedback: Feedback,
    pub api: Api,
    #[serde(rename = "api_key")]
    pub api_keys: Vec<ApiKey>,
    #[serde(rename = "webhook")]
    pub webhooks: Vec<Webhook>,
    #[serde(rename = "sending_domain")]
    pub sending_domains: Vec<SendingDomain>,
    #[serde(rename = "ip_pool")]
    pub ip_pools: Vec<IpPool>,
    #[serde(rename = "dkim_key")]
    pub dkim_keys: Vec<DkimKey>,
    /// The `[[dkim_key]]` files, read with the configuration.
    #[serde(skip)]
    pub loaded_dkim_keys: crate::dkim::Keys,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            socket: SocketSpec::Inet("127.0.0.1:8895".into()),
            node_id: NodeId(0),
            max_connections: 1024,
            max_message_size: 50 * 1024 * 1024,
            worker_threads: AtLeastOne(1),
            envelope: Envelope::default(),
            reinject: Reinject::default(),
            tracking: Tracking::default(),
            http: Http::default(),
            store: Store::default(),
            events: Events::default(),
            feedback: Feedback::default(),
            api: Api::default(),
            api_keys: Vec::new(),
            webhooks: Vec::new(),
            sending_domains: Vec::new(),
            ip_pools: Vec::new(),
            dkim_keys: Vec::new(),
            loaded_dkim_keys: crate::dkim::Keys::default(),
        }
    }
}

/// A configuration problem, with where it is.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    // Not a `source`: the message already says it, and error chains would repeat it.
    #[error("{}: cannot read the configuration file: {io}", file.display())]
    Read { file: PathBuf, io: std::io::Error },
    #[error("{}:{line}: key `{key}`: {message}", file.display())]
    Invalid {
        file: PathBuf,
        line: usize,
        key: String,
        message: String,
    },
}

impl Config {
    /// Read and validate a configuration file.
    pub fn read(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|io| ConfigError::Read {
            file: path.to_owned(),
            io,
        })?;
        Config::parse(&text, path)
    }

    /// Parse configuration text; `file` names it in errors.
    pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| {
            let offset = e.span().map_or(0, |s| s.start);
            let (line, key) = locate(text, offset);
            ConfigError::Invalid {
                file: file.to_owned(),
                line,
                key,
                message: e.message().trim().to_owned(),
            }
        })?;
        let mut config = config;
        config.check_cross_references(text, file)?;
        config.loaded_dkim_keys = config.load_dkim_keys(text, file)?;
        Ok(config)
    }

    /// Read every `[[dkim_key]]` file; an unreadable or weak key names the line of its
    /// `private_key`.
    fn load_dkim_keys(&self, text: &str, file: &Path) -> Result<crate::dkim::Keys, ConfigError> {
        let mut loaded = Vec::new();
        for key in &self.dkim_keys {
            let read = crate::dkim::read_key(&key.private_key).map_err(|e| {
                let needle = key.private_key.display().to_string();
                let offset = text.find(&needle).unwrap_or(0);
                let (line, _) = locate(text, offset);
                ConfigError::Invalid {
                    file: file.to_owned(),
                    line,
                    key: "dkim_key.private_key".into(),
                    message: e.to_string(),
                }
            })?;
            loaded.push(crate::dkim::LoadedKey::new(
                &key.name,
                &key.domain.0,
                &key.selector,
                key.headers.clone(),
                read,
            ));
        }
        Ok(crate::dkim::Keys::new(loaded))
    }

    fn check_cross_references(&self, text: &str, file: &Path) -> Result<(), ConfigError> {
        // The line where `key = ...` is written (the first such line).
        let invalid = |key: &str, message: String| {
            let mut offset = 0;
            for line in text.split_inclusive('\n') {
                if line.split_once('=').is_some_and(|(k, _)| k.trim() == key) {
                    break;
                }
                offset += line.len();
            }
            let (line, key) = locate(text, offset);
            ConfigError::Invalid {
                file: file.to_owned(),
                line,
                key,
                message,
            }
        };
        for pool in &self.ip_pools {
            if let Some(t) = &pool.transport {
                let (name, _) = t.split_once(':').unwrap_or(("", ""));
                let valid = !name.is_empty()
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
                    && !t.contains(char::is_whitespace);
                if !valid {
                    return Err(invalid(
                        "transport",
                        format!(
                            "`{t}` is not a transport: use `name:` or `name:nexthop` (a master.cf service)"
                        ),
                    ));
                }
            }
        }
        for domain in &self.sending_domains {
            if let Some(k) = &domain.dkim_key
                && !self.dkim_keys.iter().any(|d| &d.name == k)
            {
                return Err(invalid(
                    "dkim_key",
                    format!("`{k}` is not a configured [[dkim_key]]"),
                ));
            }
        }
        if let Some(text) = &self.store.postgres
            && let Err(e) = crate::store::postgres::parse_config(text)
        {
            return Err(invalid(
                "postgres",
                format!(
                    "not a PostgreSQL connection string ({e}): use postgres://user:password@host/db or host=... dbname=..."
                ),
            ));
        }
        self.check_api(&invalid)?;
        if let Some(pool) = &self.envelope.default_ip_pool
            && pool != "sp_shared"
            && !self.ip_pools.iter().any(|p| &p.name == pool)
        {
            return Err(invalid(
                "default_ip_pool",
                format!("`{pool}` is not a configured [[ip_pool]]"),
            ));
        }
        let written: Option<toml::Table> = toml::from_str(text).ok();
        let reinject_smtp_written = written
            .as_ref()
            .and_then(|t| t.get("reinject"))
            .and_then(|r| r.get("smtp"))
            .is_some();
        if reinject_smtp_written && self.reinject.sendmail.is_some() {
            return Err(invalid(
                "sendmail",
                "set either `smtp` or `sendmail` in [reinject], not both".into(),
            ));
        }
        let reinject = &self.reinject;
        if let Some(smtp) = &reinject.smtp
            && smtp
                .rsplit_once(':')
                .is_none_or(|(host, port)| host.is_empty() || port.parse::<u16>().is_err())
        {
            return Err(invalid(
                "smtp",
                format!("`{smtp}` is not HOST:PORT (e.g. `127.0.0.1:10026`)"),
            ));
        }
        if reinject.timeout == 0 {
            return Err(invalid(
                "timeout",
                "timeout must be at least 1 second".into(),
            ));
        }
        if reinject.concurrency == 0 {
            return Err(invalid(
                "concurrency",
                "concurrency must be at least 1".into(),
            ));
        }
        let tracking = &self.tracking;
        if let Some(url) = &tracking.base_url {
            let rest = url
                .strip_prefix("https://")
                .or_else(|| url.strip_prefix("http://"));
            if rest.is_none_or(|r| r.is_empty() || r.contains(['?', '#', ' '])) {
                return Err(invalid(
                    "base_url",
                    format!(
                        "`{url}` is not an http(s) URL without query (e.g. `https://track.example.com`)"
                    ),
                ));
            }
            if tracking.secrets.is_empty() {
                return Err(invalid(
                    "base_url",
                    "set `secrets` too (e.g. `secrets = [\"<openssl rand -hex 32>\"]`), so links stay valid across restarts".into(),
                ));
            }
        }
        if tracking.secrets.iter().any(|s| s.len() < 16) {
            return Err(invalid(
                "secrets",
                "each secret must be at least 16 characters (e.g. `openssl rand -hex 32`)".into(),
            ));
        }
        if tracking.link_expiry_days == 0 {
            return Err(invalid(
                "link_expiry_days",
                "link_expiry_days must be at least 1".into(),
            ));
        }
        if self
            .http
            .listen
            .rsplit_once(':')
            .is_none_or(|(host, port)| host.is_empty() || port.parse::<u16>().is_err())
        {
            return Err(invalid(
                "listen",
                format!(
                    "`{}` is not HOST:PORT (e.g. `127.0.0.1:8080`)",
                    self.http.listen
                ),
            ));
        }
        if reinject.secret.as_ref().is_some_and(|s| s.len() < 16) {
            return Err(invalid(
                "secret",
                "secret must be at least 16 characters (e.g. `openssl rand -hex 32`)".into(),
            ));
        }
        for hook in &self.webhooks {
            if !(hook.url.starts_with("https://") || hook.url.starts_with("http://")) {
                return Err(invalid(
                    "url",
                    format!("`{}` is not an http(s) URL", hook.url),
                ));
            }
            if let Some(unknown) = hook
                .events
                .iter()
                .flatten()
                .find(|e| crate::events::EventType::parse(e).is_none())
            {
                let names: Vec<_> = crate::events::EventType::ALL
                    .iter()
                    .map(|t| t.as_str())
                    .collect();
                return Err(invalid(
                    "events",
                    format!(
                        "unknown event type `{unknown}`; known: {}",
                        names.join(", ")
                    ),
                ));
            }
            if hook.basic.is_some() && hook.bearer.is_some() {
                return Err(invalid(
                    "bearer",
                    "set either `basic` or `bearer`, not both".into(),
                ));
            }
            if hook.basic.as_ref().is_some_and(|b| !b.contains(':')) {
                return Err(invalid("basic", "basic auth is `user:password`".into()));
            }
            if hook.batch_size == 0 || hook.batch_size > 10_000 {
                return Err(invalid(
                    "batch_size",
                    "batch_size must be 1 to 10000".into(),
                ));
            }
            if hook.retry_hours == 0 {
                return Err(invalid(
                    "retry_hours",
                    "retry_hours must be at least 1".into(),
                ));
            }
        }
        let mut urls = std::collections::HashSet::new();
        if let Some(hook) = self.webhooks.iter().find(|h| !urls.insert(h.sink_name())) {
            return Err(invalid(
                "url",
                format!("webhook `{}` is configured twice", hook.url),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for domain in &self.sending_domains {
            if !seen.insert(&domain.name) {
                let needle = format!("\"{}\"", domain.name.0);
                let offset = text.rmatch_indices(&needle).next().map_or(0, |(i, _)| i);
                let (line, key) = locate(text, offset);
                return Err(ConfigError::Invalid {
                    file: file.to_owned(),
                    line,
                    key,
                    message: format!("sending domain `{}` is configured twice", domain.name.0),
                });
            }
        }
        Ok(())
    }

    /// `[api]` and `[[api_key]]`: HTTPS needs its certificate and key; the API never
    /// shares the tracking listener; key names are unique.
    fn check_api(&self, invalid: &dyn Fn(&str, String) -> ConfigError) -> Result<(), ConfigError> {
        let Some(listen) = &self.api.listen else {
            return Ok(());
        };
        let Ok(address) = listen.parse::<std::net::SocketAddr>() else {
            return Err(invalid(
                "listen",
                format!("`{listen}` is not an address and port: use e.g. \"127.0.0.1:8443\""),
            ));
        };
        // Keys travel in every request: in plain HTTP only over loopback, to a proxy on
        // this host that speaks TLS to the world.
        if !self.api.tls && !address.ip().is_loopback() {
            return Err(invalid(
                "tls",
                format!(
                    "`tls = false` sends API keys in the clear: allowed only when [api] listen is a loopback address (it is `{listen}`); set tls_cert and tls_key, or listen on 127.0.0.1 behind a TLS proxy"
                ),
            ));
        }
        if *listen == self.http.listen {
            return Err(invalid(
                "listen",
                format!("`{listen}` is [http] listen too: the API needs a port of its own"),
            ));
        }
        if self.api.tls {
            for (key, value) in [
                ("tls_cert", &self.api.tls_cert),
                ("tls_key", &self.api.tls_key),
            ] {
                if value.is_none() {
                    return Err(invalid(
                        "listen",
                        format!(
                            "[api] serves HTTPS: set `{key}` (a PEM file), or `tls = false` for plain HTTP behind a proxy on this host"
                        ),
                    ));
                }
            }
        }
        let mut names = std::collections::HashSet::new();
        for key in &self.api_keys {
            if !names.insert(key.name.as_str()) {
                return Err(invalid(
                    "name",
                    format!("api_key `{}` is configured twice", key.name),
                ));
            }
            if key.grants.is_empty() {
                return Err(invalid(
                    "grants",
                    format!(
                        "api_key `{}` has no grants: it could call nothing",
                        key.name
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Every bounce domain configured (the default and the sending domains' own).
    pub fn bounce_domains(&self) -> impl Iterator<Item = &Domain> {
        self.envelope.bounce_domain.iter().chain(
            self.sending_domains
                .iter()
                .filter_map(|d| d.bounce_domain.as_ref()),
        )
    }

    pub fn ip_pool_names(&self) -> Vec<String> {
        self.ip_pools.iter().map(|p| p.name.clone()).collect()
    }

    /// The address mail of `pool` leaves from: the pool's `sending_ip`, else the default
    /// route's (`[envelope] sending_ip`); `None` when not configured.
    pub fn sending_ip(&self, pool: Option<&str>) -> Option<std::net::IpAddr> {
        pool.filter(|p| *p != "sp_shared")
            .and_then(|p| self.ip_pools.iter().find(|c| c.name == p))
            .and_then(|c| c.sending_ip)
            .or(self.envelope.sending_ip)
    }

    pub fn dkim_key_names(&self) -> Vec<String> {
        self.dkim_keys.iter().map(|k| k.name.clone()).collect()
    }
}

/// The 1-based line of `offset` and the dotted key written there (`envelope.rewrite`).
fn locate(text: &str, offset: usize) -> (usize, String) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line_no = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or("");
    let table = before[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_owned());
    let key = match line.split_once('=') {
        Some((key, _)) => key.trim().to_owned(),
        None => line
            .trim()
            .trim_matches(|c| c == '[' || c == ']')
            .to_owned(),
    };
    let key = match table {
        Some(table) if line.contains('=') => format!("{table}.{key}"),
        _ => key,
    };
    (line_no, key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(text, Path::new("/etc/msys-milter.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn pools_name_transports_and_the_default_a_configured_pool() {
        let c = parse(
            "[envelope]\ndefault_ip_pool = \"a\"\n[[ip_pool]]\nname = \"a\"\ntransport = \"smtp_a:[relay.example]:25\"\n",
        )
        .unwrap();
        assert_eq!(
            c.ip_pools[0].transport.as_deref(),
            Some("smtp_a:[relay.example]:25")
        );
        assert_eq!(
            parse("[envelope]\ndefault_ip_pool = \"nope\"\n").unwrap_err(),
            "/etc/msys-milter.toml:2: key `envelope.default_ip_pool`: `nope` is not a configured [[ip_pool]]"
        );
        assert!(parse("[envelope]\ndefault_ip_pool = \"sp_shared\"\n").is_ok());
        let bad = parse("[[ip_pool]]\nname = \"a\"\ntransport = \"smtp a\"\n").unwrap_err();
        assert!(
            bad.starts_with("/etc/msys-milter.toml:3: key `ip_pool.transport`"),
            "{bad}"
        );
    }

    #[test]
    fn empty_file_is_the_defaults() {
        assert_eq!(parse("").unwrap(), Config::default());
    }

    #[test]
    fn full_file() {
        let c = parse(
            r#"
socket = "unix:/run/msys-milter/milter.sock"
node_id = 7
[envelope]
bounce_domain = "Bounces.Example.net"
bounce_local_part = "bnc"
rewrite = false
[[sending_domain]]
name = "example.com"
bounce_domain = "bounce.example.com"
subaccounts = [123, 456]
[[sending_domain]]
name = "other.example"
"#,
        )
        .unwrap();
        assert_eq!(
            c.socket,
            SocketSpec::Unix("/run/msys-milter/milter.sock".into())
        );
        assert_eq!(c.node_id, NodeId(7));
        assert_eq!(
            c.envelope.bounce_domain,
            Some(Domain("bounces.example.net".into()))
        );
        assert!(!c.envelope.rewrite);
        assert_eq!(c.sending_domains[0].subaccounts, [123, 456]);
        assert_eq!(c.bounce_domains().count(), 2);
    }

    #[test]
    fn errors_name_file_line_and_key() {
        assert_eq!(
            parse("node_id = 1\n[envelope]\nbounce_domain = \"not a domain\"\n").unwrap_err(),
            "/etc/msys-milter.toml:3: key `envelope.bounce_domain`: `not a domain` is not a domain name"
        );
        let e = parse("\n\n[envelope]\nrewrte = true\n").unwrap_err();
        assert!(
            e.starts_with("/etc/msys-milter.toml:4: key `envelope.rewrte`: unknown field `rewrte`"),
            "{e}"
        );
        let e = parse("socket = \"tcp:1\"\n").unwrap_err();
        assert!(
            e.starts_with("/etc/msys-milter.toml:1: key `socket`: invalid socket"),
            "{e}"
        );
        let e = parse("node_id = 5000\n").unwrap_err();
        assert!(
            e.starts_with("/etc/msys-milter.toml:1: key `node_id`: node_id 5000 is out of range"),
            "{e}"
        );
        let e = parse("[envelope]\nrewrite = \"yes\"\n").unwrap_err();
        assert!(
            e.starts_with("/etc/msys-milter.toml:2: key `envelope.rewrite`: invalid type"),
            "{e}"
        );
        let e =
            parse("[[sending_domain]]\nname = \"a.com\"\n[[sending_domain]]\nname = \"a.com\"\n")
                .unwrap_err();
        assert!(e.starts_with("/etc/msys-milter.toml:4: key `sending_domain.name`: sending domain `a.com` is configured twice"), "{e}");
        let e = parse("socket = \n").unwrap_err();
        assert!(e.starts_with("/etc/msys-milter.toml:1:"), "{e}");
    }

    #[test]
    fn reinject_and_tracking_checks() {
        let e = parse("[tracking]\nsecrets = [\"short\"]\n").unwrap_err();
        assert!(
            e.starts_with("/etc/msys-milter.toml:2: key `tracking.secrets`: each secret"),
            "{e}"
        );
        let e = parse("[reinject]\nsecret = \"0123456789abcdef\"\n[tracking]\nbase_url = \"https://t.example.com\"\n").unwrap_err();
        assert!(
            e.starts_with("/etc/msys-milter.toml:4: key `tracking.base_url`: set `secrets` too"),
            "{e}"
        );
        let e = parse("[reinject]\nsmtp = \"localhost\"\n").unwrap_err();
        assert!(
            e.starts_with(
                "/etc/msys-milter.toml:2: key `reinject.smtp`: `localhost` is not HOST:PORT"
            ),
            "{e}"
        );
        let e = parse("[http]\nlisten = \"8080\"\n").unwrap_err();
        assert!(
            e.starts_with("/etc/msys-milter.toml:2: key `http.listen`"),
            "{e}"
        );
        // A guessable loop-marker and X-MSFBL key is refused.
        let e = parse("[reinject]\nsecret = \"short\"\n").unwrap_err();
        assert!(
            e.starts_with(
                "/etc/msys-milter.toml:2: key `reinject.secret`: secret must be at least 16"
            ),
            "{e}"
        );
        // The REST API serves HTTPS unless told otherwise: without a certificate, no start.
        let e = parse("[api]\nlisten = \"127.0.0.1:8443\"\n").unwrap_err();
        assert!(e.contains("tls_cert"), "{e}");
        // Plain HTTP only on loopback: keys would cross the network in the clear.
        let e = parse("[api]\nlisten = \"0.0.0.0:8443\"\ntls = false\n").unwrap_err();
        assert!(
            e.starts_with("/etc/msys-milter.toml:3: key `api.tls`: `tls = false` sends API keys"),
            "{e}"
        );
        assert!(parse("[api]\nlisten = \"[::1]:8443\"\ntls = false\n").is_ok());
        let c = parse("[tracking]\nbase_url = \"https://t.example.com\"\nsecrets = [\"0123456789abcdef\"]\nopen = true\n").unwrap();
        assert!(c.tracking.open && !c.tracking.click);
        assert_eq!(c.reinject.smtp.as_deref(), Some("127.0.0.1:10026"));
    }

    #[test]
    fn socket_specs() {
        assert_eq!(
            "inet:8895@127.0.0.1".parse(),
            Ok(SocketSpec::Inet("127.0.0.1:8895".into()))
        );
        assert_eq!(
            "inet:[::1]:8895".parse(),
            Ok(SocketSpec::Inet("[::1]:8895".into()))
        );
        assert_eq!(
            "inet:8895@::1".parse(),
            Ok(SocketSpec::Inet("[::1]:8895".into()))
        );
        assert!("inet:127.0.0.1".parse::<SocketSpec>().is_err());
        assert!("unix:".parse::<SocketSpec>().is_err());
    }
}

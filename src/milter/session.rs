//! Per-connection state of one milter session: what the MTA told us about the current
//! message, reset at every new MAIL FROM and at abort so nothing leaks between messages.

use crate::api::copies::HeaderField;
use crate::api::plan::{ParsedApi, needs_body, parse_api, plan_parsed};
use crate::api::recipients::strip_brackets;
use crate::api::{MessageFacts, Plan, Rejection};
use crate::config::Config;
use crate::ids::IdGenerator;
use crate::reinject::Reinjector;
use crate::render::{Rendered, render};
use crate::store::Store;
use indymilter::ProtoOpts;
use std::io::Read as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

/// State shared by all sessions.
pub struct Shared {
    pub ids: Arc<IdGenerator>,
    pub store: Arc<dyn Store>,
    settings: RwLock<Arc<Settings>>,
    /// The marker secret made at start when none is configured; kept across reloads so
    /// copies in flight stay recognisable.
    generated_secret: String,
    /// The MTA's version was looked at (once per process).
    mta_noted: AtomicBool,
    /// The MTA's own names (`j`) known to be in the store.
    mta_names: std::sync::Mutex<Vec<String>>,
    /// One name noted at a time: each adds to what the one before stored.
    noting: tokio::sync::Mutex<()>,
}

/// What a configuration reload replaces; a message uses one snapshot from start to end.
pub struct Settings {
    pub config: Config,
    pub reinjector: Arc<Reinjector>,
}

impl Shared {
    pub fn new(
        config: Config,
        store: Arc<dyn Store>,
        ids: Arc<IdGenerator>,
    ) -> std::io::Result<Self> {
        let mut key = [0u8; 32];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut key)?;
        let generated_secret: String = key.iter().map(|b| format!("{b:02x}")).collect();
        let shared = Self {
            ids,
            store,
            settings: RwLock::new(Arc::new(Settings::new(config, &generated_secret))),
            generated_secret,
            mta_noted: AtomicBool::new(false),
            mta_names: std::sync::Mutex::new(Vec::new()),
            noting: tokio::sync::Mutex::new(()),
        };
        Ok(shared)
    }

    /// The settings in force now.
    pub fn settings(&self) -> Arc<Settings> {
        match self.settings.read() {
            Ok(guard) => Arc::clone(&guard),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Look at the MTA's version (the `v` macro) once and name what Sendmail cannot do
    /// with this configuration: strip the copies' loop marker on delivery (with it on,
    /// every copy shows the marker), or route by pool (a pool's `X-MSYS-Route` header
    /// would reach recipients).
    pub fn note_mta(&self, version: &str) {
        // A load first: after the first message this is all it costs.
        if self.mta_noted.load(Ordering::Relaxed) || self.mta_noted.swap(true, Ordering::Relaxed) {
            return;
        }
        // Sendmail's `v` is its bare version number; Postfix's starts with its name.
        let sendmail = version.starts_with(|c: char| c.is_ascii_digit());
        tracing::info!(mta_version = version, "MTA version");
        if !sendmail {
            return;
        }
        let settings = self.settings();
        if settings.config.reinject.loop_marker {
            tracing::warn!(
                mta_version = version,
                "the MTA is Sendmail, which cannot strip the X-MSYS-Reinjected loop marker from \
                 personalised copies: set `loop_marker = false` in [reinject] (README, section Sendmail)"
            );
        }
        for pool in settings
            .config
            .ip_pools
            .iter()
            .filter(|p| p.transport.is_some())
        {
            tracing::warn!(
                mta_version = version,
                ip_pool = pool.name,
                "the MTA is Sendmail, which does not route by pool and cannot strip the \
                 X-MSYS-Route header: remove `transport` from this [[ip_pool]] (README, section Sendmail)"
            );
        }
    }

    /// Is `name` among the MTA's names known to be in the store?
    pub fn knows_mta_name(&self, name: &str) -> bool {
        let name = name.trim();
        self.mta_names
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|n| n.eq_ignore_ascii_case(name))
    }

    /// Remember the MTA's own name (the `j` macro) in the store, so the LMTP listener
    /// knows its DSNs as in-band bounces, also right after a restart. After the first
    /// message this is one lock and a comparison.
    pub async fn note_mta_name(&self, name: &str) {
        use crate::feedback::MTA_NAMES_CURSOR;
        let name = name.trim();
        if name.is_empty() || name.contains(char::is_whitespace) {
            return;
        }
        let _one_at_a_time = self.noting.lock().await;
        if self.knows_mta_name(name) {
            return;
        }
        let mut names = match crate::feedback::stored_mta_names(self.store.as_ref()).await {
            Ok(names) => names,
            Err(e) => {
                tracing::warn!("cannot read the MTA's names from the store: {e}");
                return;
            }
        };
        if !names.iter().any(|n| n.eq_ignore_ascii_case(name)) {
            names.push(name.to_owned());
            let commit = crate::store::Commit {
                cursor: Some((MTA_NAMES_CURSOR.to_owned(), names.join(" "))),
                ..crate::store::Commit::default()
            };
            if let Err(e) = self.store.commit(commit).await {
                // Tried again at the next message.
                tracing::warn!(mta_name = name, "cannot remember the MTA's name: {e}");
                return;
            }
            tracing::info!(
                mta_name = name,
                "the MTA's own name: its DSNs (Reporting-MTA) are in-band bounces"
            );
        }
        *self.mta_names.lock().unwrap_or_else(|p| p.into_inner()) = names;
    }

    /// Use a new configuration for messages that start from now on. The socket and the
    /// node id stay as they were at start (a restart changes them).
    pub fn reload(&self, config: Config) {
        let old = self.settings();
        if config.socket != old.config.socket || config.node_id != old.config.node_id {
            tracing::warn!("`socket` and `node_id` changes take effect only at restart");
        }
        let settings = Arc::new(Settings::new(config, &self.generated_secret));
        match self.settings.write() {
            Ok(mut guard) => *guard = settings,
            Err(poisoned) => *poisoned.into_inner() = settings,
        }
    }
}

impl Settings {
    fn new(mut config: Config, generated_secret: &str) -> Self {
        if config.reinject.secret.is_none() {
            config.reinject.secret = Some(generated_secret.to_owned());
        }
        Self {
            reinjector: Arc::new(Reinjector::new(&config.reinject)),
            config,
        }
    }
}

/// What happens to body chunks of the current message.
#[derive(Debug, Default, PartialEq, Eq)]
enum Body {
    /// No chunk seen yet.
    #[default]
    Undecided,
    /// Copies need the body: keep it.
    Buffering,
    /// Not needed: the MTA is told to skip the rest.
    Skipped,
    /// Needed but over `max_message_size`.
    TooLarge,
}

/// The message being received on one connection.
#[derive(Debug, Default)]
pub struct Session {
    facts: MessageFacts,
    /// The header, parsed at the first body chunk to decide about the body.
    parsed: Option<ParsedApi>,
    body_state: Body,
    body: Vec<u8>,
    /// The protocol options negotiated for this connection.
    opts: ProtoOpts,
}

/// What to answer to a body chunk.
#[derive(Debug, PartialEq, Eq)]
pub enum BodyReply {
    Continue,
    /// The rest of the body is not needed.
    Skip,
}

/// A message that passed the checks of the header: its plan, before suppression and
/// rendering.
pub struct Planned {
    pub plan: Plan,
    pub facts: MessageFacts,
    body: Vec<u8>,
    body_too_large: bool,
}

/// An accepted message: the plan, its new body and what its copies are made from.
pub struct Accepted {
    pub plan: Plan,
    pub facts: MessageFacts,
    /// The body as received (empty when it was not needed).
    pub body: Vec<u8>,
    pub rendered: Rendered,
    /// Size of the original as it leaves (headers and body), when the body was read.
    pub original_size: Option<usize>,
}

impl Planned {
    /// The exactly-once ledger's key for this message.
    pub fn digest(&self) -> String {
        crate::ledger::message_digest(&self.facts, &self.body)
    }

    /// Plan the message again under `transmission_id`: the id an earlier attempt of the
    /// same message gave it, so its links and bounce address stay the same.
    pub fn replan(&mut self, transmission_id: u64, config: &Config) -> Result<(), Rejection> {
        let parsed = parse_api(&self.facts, config);
        self.plan = plan_parsed(&self.facts, parsed, config, || Ok(transmission_id))?;
        Ok(())
    }

    /// Whether rendering reads the body: copies, a rewrite or a signature.
    pub fn body_work(&self) -> bool {
        !self.plan.copies.is_empty()
            || self.plan.engagement.rewrites_body()
            || self.plan.dkim_key.is_some()
    }

    /// Whether rendering is worth moving off the async worker (`blocking::is_heavy`).
    pub fn heavy(&self) -> bool {
        self.body_work() && crate::blocking::is_heavy(self.body.len(), self.plan.dkim_key.is_some())
    }

    /// Render the original's changes and what its copies are made from.
    pub fn render(self, config: &Config) -> Result<Accepted, Rejection> {
        let body_work = self.body_work();
        let Planned {
            plan,
            facts,
            body,
            body_too_large,
        } = self;
        if body_too_large && body_work {
            return Err(Rejection::TooLarge);
        }
        let headers_size: usize = facts
            .headers
            .iter()
            .map(|h| h.name.len() + h.value.len() + 4)
            .sum();
        let copies_size = plan.copies.len().saturating_mul(headers_size + body.len());
        if copies_size > config.reinject.max_copies_bytes {
            return Err(Rejection::CopiesTooLarge {
                limit: config.reinject.max_copies_bytes as u64,
            });
        }
        // A body kept only for the AMPHTML check but too large for it passes unchecked.
        let rendered = render(&plan, &facts, &body, config, facts.received_at)?;
        let original_size = (!body_too_large && !body.is_empty())
            .then(|| headers_size + rendered.original_body.as_ref().map_or(body.len(), Vec::len));
        Ok(Accepted {
            plan,
            facts,
            body,
            rendered,
            original_size,
        })
    }
}

impl Session {
    pub fn new(opts: ProtoOpts) -> Self {
        Session {
            opts,
            ..Session::default()
        }
    }

    /// Forget the current message, keep what was negotiated.
    fn reset(&mut self) -> Session {
        std::mem::replace(self, Session::new(self.opts))
    }

    /// The MTA accepts "skip the rest of the body".
    fn can_skip(&self) -> bool {
        self.opts.contains(ProtoOpts::SKIP)
    }

    /// Was "no reply" negotiated for this stage? Then the answer must be `Noreply`.
    pub fn no_reply(&self, stage: ProtoOpts) -> bool {
        self.opts.contains(stage)
    }

    /// MAIL FROM starts a new message.
    pub fn mail(&mut self, sender: &str, auth_authen: Option<&str>) {
        self.reset();
        self.facts.mail_from = strip_brackets(sender).to_owned();
        self.facts.auth_authen = auth_authen.filter(|a| !a.is_empty()).map(str::to_owned);
    }

    /// The envelope recipients so far.
    pub fn rcpts(&self) -> &[String] {
        &self.facts.rcpts
    }

    pub fn rcpt(&mut self, rcpt: &str) {
        self.facts.rcpts.push(strip_brackets(rcpt).to_owned());
    }

    pub fn header(&mut self, name: &[u8], value: &[u8]) {
        self.facts.headers.push(HeaderField::new(
            String::from_utf8_lossy(name).into_owned(),
            value,
        ));
    }

    pub fn body(&mut self, chunk: &[u8], config: &Config) -> BodyReply {
        if self.body_state == Body::Undecided {
            let parsed = parse_api(&self.facts, config);
            self.body_state = if needs_body(&self.facts, &parsed, config) {
                Body::Buffering
            } else {
                Body::Skipped
            };
            self.parsed = Some(parsed);
        }
        match self.body_state {
            Body::Buffering if self.body.len() + chunk.len() > config.max_message_size => {
                self.body_state = Body::TooLarge;
                self.body = Vec::new();
                if self.can_skip() {
                    BodyReply::Skip
                } else {
                    BodyReply::Continue
                }
            }
            Body::Buffering => {
                self.body.extend_from_slice(chunk);
                BodyReply::Continue
            }
            _ if self.can_skip() => BodyReply::Skip,
            _ => BodyReply::Continue,
        }
    }

    /// The message's plan, or the rejection whose reply the MTA gives. The session is
    /// reset for the next message.
    pub fn end_of_message(
        &mut self,
        shared: &Shared,
        settings: &Settings,
    ) -> Result<Planned, Rejection> {
        let this = self.reset();
        let config = &settings.config;
        let parsed = this
            .parsed
            .unwrap_or_else(|| parse_api(&this.facts, config));
        let mut facts = this.facts;
        facts.received_at = crate::ids::unix_secs();
        let plan = plan_parsed(&facts, parsed, config, || shared.ids.next())?;
        Ok(Planned {
            plan,
            facts,
            body: this.body,
            body_too_large: this.body_state == Body::TooLarge,
        })
    }

    pub fn abort(&mut self) {
        self.reset();
    }
}

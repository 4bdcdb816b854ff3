//! Per-connection state of one milter session: what the MTA told us about the current
//! message, reset at every new MAIL FROM and at abort so nothing leaks between messages.

use crate::api::header::HEADER_NAME;
use crate::api::recipients::strip_brackets;
use crate::api::{self, HeaderEdit, MessageFacts, Plan, Rejection};
use crate::config::Config;
use crate::ids::IdGenerator;
use indymilter::{ActionError, ContextActions, EomActions};

/// State shared by all sessions.
#[derive(Debug)]
pub struct Shared {
    pub config: Config,
    pub ids: IdGenerator,
}

impl Shared {
    pub fn new(config: Config) -> Self {
        let ids = IdGenerator::new(config.node_id.0);
        Self { config, ids }
    }
}

/// The message being received on one connection.
#[derive(Debug, Default)]
pub struct Session {
    facts: MessageFacts,
    /// `X-MSYS-API` headers seen; only the first two values are kept (two already mean
    /// a rejection), so a flood of them costs no memory.
    api_headers: usize,
}

impl Session {
    /// MAIL FROM starts a new message.
    pub fn mail(&mut self, sender: &str, auth_authen: Option<&str>) {
        *self = Session::default();
        self.facts.mail_from = strip_brackets(sender).to_owned();
        self.facts.auth_authen = auth_authen.filter(|a| !a.is_empty()).map(str::to_owned);
    }

    pub fn rcpt(&mut self, rcpt: &str) {
        self.facts.rcpts.push(strip_brackets(rcpt).to_owned());
    }

    pub fn header(&mut self, name: &[u8], value: &[u8]) {
        if name.eq_ignore_ascii_case(HEADER_NAME.as_bytes()) {
            self.api_headers += 1;
            if self.facts.api_values.len() < 2 {
                self.facts.api_values.push(value.to_vec());
            }
        } else if name.eq_ignore_ascii_case(b"From") {
            if self.facts.from_header.is_none() {
                self.facts.from_header = Some(String::from_utf8_lossy(value).into_owned());
            }
        } else if name.eq_ignore_ascii_case(b"Cc") {
            self.facts.cc_headers += 1;
        }
    }

    /// Decide the message's fate: the plan, or the rejection whose reply the MTA gives.
    /// The session is reset for the next message.
    pub fn end_of_message(&mut self, shared: &Shared) -> Result<Plan, Rejection> {
        let facts = std::mem::take(&mut self.facts);
        *self = Session::default();
        api::plan(&facts, &shared.config, || shared.ids.next())
    }

    pub fn abort(&mut self) {
        *self = Session::default();
    }
}

/// Carry out a plan with milter actions. The MTA applies them only if we then accept,
/// so an error part-way leaves nothing half-done once we answer tempfail.
pub async fn apply(plan: &Plan, actions: &EomActions) -> Result<(), ActionError> {
    for edit in &plan.header_edits {
        match edit {
            HeaderEdit::Delete { name, index } => {
                actions
                    .change_header(name.as_str(), *index, None::<&str>)
                    .await?
            }
            HeaderEdit::Change { name, index, value } => {
                actions
                    .change_header(name.as_str(), *index, Some(value.as_str()))
                    .await?
            }
            HeaderEdit::Add { name, value } => {
                actions.add_header(name.as_str(), value.as_str()).await?
            }
        }
    }
    for rcpt in plan.added_recipients() {
        actions.add_recipient(format!("<{}>", rcpt.address)).await?;
    }
    if let Some(sender) = &plan.mail_from {
        actions
            .change_sender(format!("<{sender}>"), None::<&str>)
            .await?;
    }
    Ok(())
}

//! The end-of-message pipeline, the hot path of every message: the inbound check, the
//! plan, the exactly-once ledger, the suppression lookup, rendering, the copies'
//! hand-over, the MTA's actions and the commit. The milter adapter (milter/mod.rs) calls
//! it with the session and the MTA's actions; a test can drive it with its own
//! [`MtaActions`], without the milter protocol.

use crate::api::reply::{Reply, copies_failed, internal_error, store_failed};
use crate::api::{HeaderEdit, Plan};
use crate::milter::session::{Accepted, Session, Settings, Shared};
use crate::record::{self, Handed, queue_id_of_reply};
use crate::reinject::HandOverError;
use crate::render::Rendered;
use crate::store::{Commit, LEDGER_COMMITTED, LEDGER_TRANSMISSION, Ledger, LedgerRow};
use crate::suppression;
use std::future::Future;
use std::time::Duration;

/// What becomes of a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The MTA goes on with it (and applies the actions asked for).
    Accept,
    /// Every recipient got a copy of its own: the original goes to nobody.
    Discard,
    /// This reply: 5xx rejects, 4xx tempfails.
    Refuse(Reply),
}

/// One change to the message at hand, as the milter protocol's end-of-message actions
/// make them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action<'a> {
    AddHeader {
        name: &'a str,
        value: &'a str,
    },
    /// Insert at `index` (0: above every other header).
    InsertHeader {
        index: i32,
        name: &'a str,
        value: &'a str,
    },
    /// The `index`th (from 1) header named `name` gets `value`; `None` deletes it.
    ChangeHeader {
        name: &'a str,
        index: i32,
        value: Option<&'a str>,
    },
    /// `<address>`.
    AddRecipient(&'a str),
    DeleteRecipient(&'a str),
    ChangeSender(&'a str),
    /// The next part of the new body (at most 64 KiB).
    ReplaceBody(&'a [u8]),
    Quarantine(&'a str),
    /// Still at work: the MTA starts its end-of-message timeout again.
    Progress,
}

/// Asks the MTA for the changes to the message at hand; it applies them only if the
/// message is then accepted.
pub trait MtaActions: Sync {
    fn act(&self, action: Action<'_>) -> impl Future<Output = Result<(), String>> + Send;
}

/// The message's fate, and the outcome's name for the metrics: the inbound check, the
/// plan, the ledger, suppression, rendering, the copies' hand-over, the actions and the
/// commit, in that order. Any failure refuses (451 for what a retry may cure).
pub async fn end_of_message(
    shared: &Shared,
    session: &mut Session,
    queue_id: &str,
    actions: &impl MtaActions,
) -> (Verdict, &'static str) {
    let settings = shared.settings();
    let refused = |reply: &Reply| {
        let outcome = if reply.is_temporary() {
            "tempfail"
        } else {
            "reject"
        };
        tracing::info!(queue_id = %queue_id, outcome, reply = %reply, "{queue_id}: refused");
        (Verdict::Refuse(reply.clone()), outcome)
    };
    if crate::feedback::is_inbound(session.rcpts(), &settings.config) {
        // DSNs and complaints on their way to the LMTP listener: not ours to shape.
        tracing::info!(queue_id = %queue_id, outcome = "inbound", "{queue_id}: feedback for the bounce domains, passed untouched");
        return (Verdict::Accept, "inbound");
    }
    let mut planned = match session.end_of_message(shared, &settings) {
        Ok(planned) => planned,
        Err(rejection) => return refused(&rejection.reply()),
    };
    // The exactly-once ledger, for messages with copies: what earlier attempts of the
    // same message handed over.
    let mut ledger = None;
    if settings.config.reinject.dedupe_hours > 0
        && !planned.plan.copies.is_empty()
        && !planned.plan.returning_copy
    {
        let digest = planned.digest();
        let known = match shared.store.ledger(&digest).await {
            Ok(known) => known,
            Err(e) => {
                tracing::error!(queue_id = %queue_id, "{queue_id}: ledger lookup: {e}");
                return refused(&store_failed());
            }
        };
        if let Some(tid) = known
            .transmission_id
            .as_deref()
            .and_then(|t| t.parse().ok())
        {
            tracing::info!(queue_id = %queue_id, transmission_id = tid, copies_handed = known.copies.len(), events_committed = known.committed, "{queue_id}: a retry of a message seen before");
            if let Err(rejection) = planned.replan(tid, &settings.config) {
                return refused(&rejection.reply());
            }
        }
        ledger = Some((digest, known));
    }
    let tid = planned.plan.transmission_id.clone();
    if let Some((account, kind)) = suppression::scope(&planned.plan) {
        let addresses = suppression::addresses(&planned.plan);
        let hits = match shared.store.suppressed(account, kind, &addresses).await {
            Ok(hits) => hits,
            Err(e) => {
                tracing::error!(queue_id = %queue_id, transmission_id = %tid, "{queue_id}: suppression lookup: {e}");
                return refused(&store_failed());
            }
        };
        crate::metrics::global().suppressed(hits.len());
        if let Err(rejection) = suppression::apply(&mut planned.plan, &hits) {
            // Nobody left: the suppressed recipients' events still tell why.
            let handed = Handed {
                queue_id: Some(queue_id.to_owned()),
                ..Handed::default()
            };
            let commit = Committing::new(&planned.plan, &planned.facts, &handed, queue_id);
            if let Err(reply) = commit.run(shared, &settings.config).await {
                return refused(&reply);
            }
            return refused(&rejection.reply());
        }
    }
    let heavy = planned.heavy();
    let render = || planned.render(&settings.config);
    let rendered = if heavy {
        crate::blocking::heavy(render)
    } else {
        render()
    };
    let accepted = match rendered {
        Ok(accepted) => accepted,
        Err(rejection) => return refused(&rejection.reply()),
    };
    let mut handed = Handed {
        queue_id: Some(queue_id.to_owned()),
        original_size: accepted.original_size,
        copies: Vec::new(),
        amp_enabled: accepted.rendered.amp_enabled,
    };
    if !accepted.plan.copies.is_empty() {
        let every = Duration::from_secs(settings.config.reinject.progress_seconds.0 as u64);
        let handing = hand_over(shared, &settings, &accepted, ledger.as_ref(), queue_id);
        match with_progress(handing, actions, every).await {
            Ok(copies) => handed.copies = copies,
            Err(reply) => return refused(&reply),
        }
    }
    crate::failpoint::hit("after_copies");
    let Accepted {
        plan,
        facts,
        rendered,
        ..
    } = accepted;
    if let Err(e) = apply(&plan, &rendered, actions).await {
        tracing::error!(queue_id = %queue_id, transmission_id = %tid, "{queue_id}: milter action failed: {e}");
        return refused(&internal_error());
    }
    // The MTA applies the actions only once we accept: events first, then the answer.
    if !plan.returning_copy {
        let mut commit = Committing::new(&plan, &facts, &handed, queue_id);
        if let Some((digest, known)) = &ledger {
            // Events of an earlier attempt stand: this one only indexes its queue id.
            commit.index_only = known.committed;
            commit.ledger = vec![ledger_row(digest, LEDGER_COMMITTED, "")];
        }
        if let Err(reply) = commit.run(shared, &settings.config).await {
            return refused(&reply);
        }
    }
    crate::failpoint::hit("after_commit");
    let (verdict, outcome) = if plan.original_delivered() || plan.returning_copy {
        (Verdict::Accept, "accept")
    } else {
        // Every recipient got a copy of its own: the original goes to nobody.
        (Verdict::Discard, "discard")
    };
    tracing::info!(
        queue_id = %queue_id,
        transmission_id = %tid,
        outcome = if plan.returning_copy { "returning copy passed" } else { outcome },
        added_rcpts = plan.added_recipients().count(),
        copies = plan.copies.len(),
        suppressed = plan.suppressed.len(),
        mail_from = plan.mail_from.as_deref().unwrap_or("(unchanged)"),
        "{queue_id}: accepted"
    );
    (verdict, outcome)
}

/// `work`'s output; meanwhile the MTA hears every `every` that the milter is still at
/// work, so a long hand-over is not cut by its end-of-message timeout. A progress reply
/// that cannot be sent is left to the hand-over's own outcome: the answer will fail too.
async fn with_progress<T>(
    work: impl Future<Output = T>,
    actions: &impl MtaActions,
    every: Duration,
) -> T {
    let mut work = std::pin::pin!(work);
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            done = &mut work => return done,
            _ = ticks.tick() => {
                if let Err(e) = actions.act(Action::Progress).await {
                    tracing::debug!("progress reply not sent: {e}");
                }
            }
        }
    }
}

/// Hand over the message's copies, made one at a time, but those an earlier attempt
/// handed over (`ledger`); each one taken is in the ledger before more are made. The
/// queue id and size of every copy, in the plan's order.
async fn hand_over(
    shared: &Shared,
    settings: &Settings,
    accepted: &Accepted,
    ledger: Option<&(String, Ledger)>,
    queue_id: &str,
) -> Result<Vec<(Option<String>, usize)>, Reply> {
    let Accepted {
        plan,
        facts,
        body,
        rendered,
        ..
    } = accepted;
    let tid = &plan.transmission_id;
    let from = plan.mail_from.as_deref().unwrap_or(&facts.mail_from);
    let keys: Vec<String> = plan
        .copies
        .iter()
        .map(|c| crate::ledger::copy_key(from, &c.address, c.rcpt_type))
        .collect();
    let found = taken_before_a_crash(shared, settings, accepted, ledger, &keys, queue_id).await?;
    let earlier = |i: usize| {
        ledger
            .and_then(|(_, known)| known.copies.get(&keys[i]))
            .or_else(|| found.get(&i))
    };
    // The message's transmission id is in the ledger before any copy leaves: a retry
    // keeps it, so the copies' own senders (and links) are the same at every attempt.
    if let Some((digest, known)) = ledger
        && known.transmission_id.is_none()
    {
        let row = ledger_row(digest, LEDGER_TRANSMISSION, tid);
        commit_ledger(shared, vec![row], queue_id).await?;
    }
    crate::failpoint::hit("before_copies");
    let make = |i: usize| {
        if earlier(i).is_some() {
            return Ok(None);
        }
        let make_one = || {
            rendered
                .copies
                .make(&plan.copies[i], plan, facts, body, &settings.config)
        };
        let made = if crate::blocking::is_heavy(body.len(), plan.dkim_key.is_some()) {
            crate::blocking::heavy(make_one)
        } else {
            make_one()
        };
        made.map(Some).map_err(|r| r.reply())
    };
    let record = |taken: Vec<(usize, String, usize)>| {
        crate::failpoint::hit("copy_taken");
        let mut rows = Vec::new();
        if let Some((digest, _)) = ledger {
            for (i, reply, size) in &taken {
                let value = crate::ledger::copy_value(*size, reply);
                rows.push(ledger_row(digest, &keys[*i], &value));
            }
        }
        async move {
            commit_ledger(shared, rows, queue_id).await?;
            // Logged once in the ledger: a retry will not hand these over again.
            for (i, reply, _) in &taken {
                let copy = &plan.copies[*i];
                tracing::info!(queue_id = %queue_id, transmission_id = %tid, rcpt_type = copy.rcpt_type.as_str(), rcpt = %copy.address, mta_reply = %reply, "{queue_id}: copy handed over");
            }
            crate::failpoint::hit("between_copies");
            Ok(())
        }
    };
    let results = settings
        .reinjector
        .hand_over_each(plan.copies.len(), make, record)
        .await
        .map_err(|e| match e {
            HandOverError::Caller(reply) => reply,
            HandOverError::Reinject(e) => {
                tracing::error!(queue_id = %queue_id, transmission_id = %tid, "{queue_id}: {e}");
                copies_failed()
            }
        })?;
    crate::metrics::global().copies(results.iter().flatten().count());
    Ok(results
        .into_iter()
        .enumerate()
        .map(|(i, now)| match (now, earlier(i)) {
            (Some((reply, size)), _) => (queue_id_of_reply(&reply), size),
            (None, Some(value)) => {
                let (size, reply) = crate::ledger::parse_copy_value(value);
                (queue_id_of_reply(reply), size)
            }
            (None, None) => (None, 0),
        })
        .collect())
}

/// On a retry: the copies that are not in the ledger but that the MTA's log shows it
/// queued (each copy has a sender of its own, `ledger::copy_sender`), by their index in
/// the plan, as ledger values; written to the ledger too. These are the copies the MTA
/// took as the daemon was killed, before it could read the MTA's `250`. Needs the
/// MTA's log (`[feedback] mta_log`); without it such a copy is handed over again.
async fn taken_before_a_crash(
    shared: &Shared,
    settings: &Settings,
    accepted: &Accepted,
    ledger: Option<&(String, Ledger)>,
    keys: &[String],
    queue_id: &str,
) -> Result<std::collections::HashMap<usize, String>, Reply> {
    let mut found = std::collections::HashMap::new();
    let plan = &accepted.plan;
    let (Some((digest, known)), Some(bounce), Some(log)) = (
        ledger,
        plan.mail_from.as_deref(),
        settings.config.feedback.mta_log.as_deref(),
    ) else {
        return Ok(found);
    };
    let missing: Vec<usize> = (0..plan.copies.len())
        .filter(|i| !known.copies.contains_key(&keys[*i]))
        .collect();
    if known.transmission_id.is_none() || missing.is_empty() {
        return Ok(found);
    }
    // What the MTA logged before now must be in the store first.
    let wait = std::time::Duration::from_secs(3);
    if !crate::feedback::follow::caught_up(shared.store.as_ref(), log, wait).await {
        tracing::warn!(queue_id = %queue_id, "{queue_id}: the MTA log follower is behind: a copy the MTA took before a crash may be handed over again");
    }
    let senders: Vec<String> = missing
        .iter()
        .map(|i| crate::ledger::copy_sender(bounce, &plan.copies[*i].address).to_lowercase())
        .collect();
    let queued = shared.store.mta_queued(&senders).await.map_err(|e| {
        tracing::error!(queue_id = %queue_id, "{queue_id}: the MTA's queued copies: {e}");
        store_failed()
    })?;
    let mut rows = Vec::new();
    for (sender, mta_queue_id) in queued {
        let Some(n) = senders.iter().position(|s| *s == sender) else {
            continue;
        };
        let i = missing[n];
        let reply = format!("250 2.0.0 Ok: queued as {mta_queue_id} (seen in the MTA's log)");
        let value = crate::ledger::copy_value(accepted.original_size.unwrap_or(0), &reply);
        tracing::info!(queue_id = %queue_id, transmission_id = %plan.transmission_id, rcpt = %plan.copies[i].address, mta_queue_id = %mta_queue_id, "{queue_id}: copy taken by the MTA before a crash: not handed over again");
        rows.push(ledger_row(digest, &keys[i], &value));
        found.insert(i, value);
    }
    commit_ledger(shared, rows, queue_id).await?;
    Ok(found)
}

/// Write `rows` to the ledger (nothing to do when empty); a store failure is a 451.
async fn commit_ledger(shared: &Shared, rows: Vec<LedgerRow>, queue_id: &str) -> Result<(), Reply> {
    if rows.is_empty() {
        return Ok(());
    }
    let commit = Commit {
        ledger: rows,
        ..Commit::default()
    };
    shared.store.commit(commit).await.map_err(|e| {
        tracing::error!(queue_id = %queue_id, "{queue_id}: the ledger of copies: {e}");
        store_failed()
    })
}

fn ledger_row(digest: &str, key: &str, value: &str) -> LedgerRow {
    LedgerRow {
        message: digest.to_owned(),
        key: key.to_owned(),
        value: value.to_owned(),
        created: crate::ids::unix_secs(),
    }
}

/// What the milter tells about the message, to commit; a store failure is a tempfail.
struct Committing<'a> {
    plan: &'a crate::api::Plan,
    facts: &'a crate::api::MessageFacts,
    handed: &'a Handed,
    queue_id: &'a str,
    ledger: Vec<LedgerRow>,
    index_only: bool,
}

impl<'a> Committing<'a> {
    fn new(
        plan: &'a crate::api::Plan,
        facts: &'a crate::api::MessageFacts,
        handed: &'a Handed,
        queue_id: &'a str,
    ) -> Self {
        Self {
            plan,
            facts,
            handed,
            queue_id,
            ledger: Vec::new(),
            index_only: false,
        }
    }

    async fn run(self, shared: &Shared, config: &crate::config::Config) -> Result<(), Reply> {
        let (queue_id, tid) = (self.queue_id, &self.plan.transmission_id);
        let now_ms = crate::ids::unix_millis();
        let mut commit =
            record::accepted(self.plan, self.facts, self.handed, config, now_ms, || {
                shared.ids.next()
            })
            .map_err(|e| {
                tracing::error!(queue_id = %queue_id, transmission_id = %tid, "{queue_id}: no event id: {e}");
                internal_error()
            })?;
        commit.ledger = self.ledger;
        commit.index_only = self.index_only;
        let kinds: Vec<&'static str> = if self.index_only {
            Vec::new()
        } else {
            commit.events.iter().map(|e| e.kind.as_str()).collect()
        };
        match shared.store.commit(commit).await {
            Ok(()) => {
                crate::metrics::global().events(kinds);
                Ok(())
            }
            Err(e) => {
                tracing::error!(queue_id = %queue_id, transmission_id = %tid, "{queue_id}: events not committed: {e}");
                Err(store_failed())
            }
        }
    }
}

/// Carry out a plan with the MTA's actions. The MTA applies them only if we then
/// accept, so an error part-way leaves nothing half-done once we answer tempfail.
async fn apply(plan: &Plan, rendered: &Rendered, actions: &impl MtaActions) -> Result<(), String> {
    for edit in plan.header_edits.iter().chain(&rendered.original_edits) {
        match edit {
            HeaderEdit::Delete { name, index } => {
                actions
                    .act(Action::ChangeHeader {
                        name,
                        index: *index,
                        value: None,
                    })
                    .await?
            }
            HeaderEdit::Change { name, index, value } => {
                actions
                    .act(Action::ChangeHeader {
                        name,
                        index: *index,
                        value: Some(value),
                    })
                    .await?
            }
            HeaderEdit::Add { name, value } => {
                actions.act(Action::AddHeader { name, value }).await?
            }
        }
    }
    for rcpt in plan.added_recipients() {
        actions
            .act(Action::AddRecipient(&format!("<{}>", rcpt.address)))
            .await?;
    }
    for rcpt in plan.deleted_recipients() {
        actions
            .act(Action::DeleteRecipient(&format!("<{}>", rcpt.address)))
            .await?;
    }
    if let Some(sender) = &plan.mail_from {
        actions
            .act(Action::ChangeSender(&format!("<{sender}>")))
            .await?;
    }
    if let Some(body) = &rendered.original_body {
        // The protocol carries at most 64 KiB a packet.
        for chunk in body.chunks(65_535) {
            actions.act(Action::ReplaceBody(chunk)).await?;
        }
    }
    if let Some(signature) = &rendered.signature {
        // First, above every other header.
        actions
            .act(Action::InsertHeader {
                index: 0,
                name: "DKIM-Signature",
                value: signature,
            })
            .await?;
    }
    if plan.sandbox {
        // Postfix: the hold queue (`postqueue -j`, `postsuper -H` releases).
        actions
            .act(Action::Quarantine(&format!(
                "msys-milter sandbox {}",
                plan.transmission_id
            )))
            .await?;
    }
    Ok(())
}

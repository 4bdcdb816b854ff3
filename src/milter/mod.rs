//! The milter adapter: negotiation and one thin callback per stage. Each callback hands
//! its input to the [`Session`]; any failure answers tempfail, never accept.

pub mod listener;
pub mod session;

use crate::api::reply::{Reply, copies_failed, internal_error, store_failed};
use crate::record::{self, Handed, queue_id_of_reply};
use crate::reinject::HandOverError;
use crate::store::{Commit, LEDGER_COMMITTED, LEDGER_TRANSMISSION, Ledger, LedgerRow};
use crate::suppression;
use bytes::Bytes;
use indymilter::{
    Actions, Callbacks, Context, EomContext, MacroStage, NegotiateContext, ProtoOpts,
    SetErrorReply, Status,
};
pub use listener::{BoundSocket, MilterListener};
use session::{Accepted, BodyReply, Session, Settings, Shared, apply};
use std::ffi::{CStr, CString};
use std::future::Future;
use std::sync::Arc;

/// Actions the milter uses; an MTA that does not offer them all is refused at negotiation
/// (the MTA then applies its default action, tempfail in our examples).
const ACTIONS: Actions = Actions::ADD_HEADER
    .union(Actions::CHANGE_HEADER)
    .union(Actions::ADD_RCPT)
    .union(Actions::DELETE_RCPT)
    .union(Actions::CHANGE_SENDER)
    .union(Actions::REPLACE_BODY)
    .union(Actions::QUARANTINE);

/// Stages whose reply we never change: the MTA need not wait for us there.
const NOREPLY: ProtoOpts = ProtoOpts::NOREPLY_MAIL
    .union(ProtoOpts::NOREPLY_RCPT)
    .union(ProtoOpts::NOREPLY_HEADER);

/// Macros we read, each at the stage the MTA knows it. Asking for any macro empties the
/// MTA's default lists, so every one we need is named here.
const MACROS: [(MacroStage, &CStr); 3] = [
    // `v`, the MTA's version: Postfix's is "Postfix 3.7.11", Sendmail's "8.17.1.9".
    // `j`, its own name (Postfix's `$myhostname`): what its DSNs give as Reporting-MTA.
    (MacroStage::Mail, c"{auth_authen} {mail_addr} v j"),
    (MacroStage::Rcpt, c"i {rcpt_addr}"),
    (MacroStage::Eom, c"i"),
];

/// Serve the milter protocol on `listener` until `shutdown` completes; sessions busy
/// with a message finish it first.
pub async fn run(
    listener: MilterListener,
    shared: Arc<Shared>,
    shutdown: impl Future,
) -> std::io::Result<()> {
    let config = indymilter::Config {
        max_connections: shared.settings().config.max_connections,
        actions: ACTIONS,
        ..Default::default()
    };
    indymilter::run(listener, callbacks(shared), config, shutdown).await
}

fn callbacks(shared: Arc<Shared>) -> Callbacks<Session> {
    let body_shared = Arc::clone(&shared);
    Callbacks::new()
        .on_negotiate(|cx, actions, opts| Box::pin(handle_negotiate(cx, actions, opts)))
        .on_mail(|cx, args| Box::pin(handle_mail(cx, args)))
        .on_rcpt(|cx, args| Box::pin(handle_rcpt(cx, args)))
        .on_header(|cx, name, value| Box::pin(handle_header(cx, name, value)))
        .on_body(move |cx, chunk| Box::pin(handle_body(cx, chunk, Arc::clone(&body_shared))))
        .on_eom(move |cx| Box::pin(handle_eom(cx, Arc::clone(&shared))))
        .on_abort(|cx| Box::pin(handle_abort(cx)))
}

async fn handle_negotiate(
    cx: &mut NegotiateContext<Session>,
    actions: Actions,
    opts: ProtoOpts,
) -> Status {
    if !actions.contains(ACTIONS) {
        tracing::error!(
            offered = ?actions,
            "the MTA does not offer the milter actions msys-milter needs (add/change header, \
             add/delete recipient, change sender, replace body); use milter protocol 6"
        );
        return Status::Reject;
    }
    cx.requested_actions = ACTIONS;
    cx.requested_opts |= opts & (NOREPLY | ProtoOpts::SKIP);
    for (stage, macros) in MACROS {
        cx.requested_macros.insert(stage, macros.to_owned());
    }
    cx.data = Some(Session::new(cx.requested_opts));
    Status::Continue
}

fn session(data: &mut Option<Session>) -> &mut Session {
    data.get_or_insert_with(Session::default)
}

/// Where the MTA expects no reply, the answer is `Noreply`.
fn continue_or_noreply(session: &Session, stage: ProtoOpts) -> Status {
    if session.no_reply(stage) {
        Status::Noreply
    } else {
        Status::Continue
    }
}

fn queue_id(macros: &indymilter::Macros) -> String {
    macros.get(c"i").map_or_else(
        || "NOQUEUE".to_owned(),
        |v| v.to_string_lossy().into_owned(),
    )
}

async fn handle_mail(cx: &mut Context<Session>, args: Vec<CString>) -> Status {
    let auth = cx
        .macros
        .get(c"{auth_authen}")
        .map(|v| v.to_string_lossy().into_owned());
    let sender = args
        .first()
        .map(|a| a.to_string_lossy())
        .unwrap_or_default();
    let session = session(&mut cx.data);
    session.mail(&sender, auth.as_deref());
    continue_or_noreply(session, ProtoOpts::NOREPLY_MAIL)
}

async fn handle_rcpt(cx: &mut Context<Session>, args: Vec<CString>) -> Status {
    let session = session(&mut cx.data);
    if let Some(rcpt) = args.first() {
        session.rcpt(&rcpt.to_string_lossy());
    }
    continue_or_noreply(session, ProtoOpts::NOREPLY_RCPT)
}

async fn handle_header(cx: &mut Context<Session>, name: CString, value: CString) -> Status {
    let session = session(&mut cx.data);
    session.header(name.as_bytes(), value.as_bytes());
    continue_or_noreply(session, ProtoOpts::NOREPLY_HEADER)
}

async fn handle_body(cx: &mut Context<Session>, chunk: Bytes, shared: Arc<Shared>) -> Status {
    match session(&mut cx.data).body(&chunk, &shared.settings().config) {
        BodyReply::Continue => Status::Continue,
        BodyReply::Skip => Status::Skip,
    }
}

async fn handle_eom(cx: &mut EomContext<Session>, shared: Arc<Shared>) -> Status {
    let started = std::time::Instant::now();
    let queue_id = queue_id(&cx.macros);
    if let Some(version) = cx.macros.get(c"v") {
        shared.note_mta(&version.to_string_lossy());
    }
    if let Some(name) = cx.macros.get(c"j") {
        // Off the message's path: a slow store must not hold the answer up for it.
        let name = name.to_string_lossy().into_owned();
        if !shared.knows_mta_name(&name) {
            let shared = Arc::clone(&shared);
            tokio::spawn(async move { shared.note_mta_name(&name).await });
        }
    }
    let (status, outcome) = end_of_message(cx, &shared, &queue_id).await;
    crate::metrics::global().message(outcome, started.elapsed().as_secs_f64());
    status
}

/// The message's fate, and the outcome's name for the metrics.
async fn end_of_message(
    cx: &mut EomContext<Session>,
    shared: &Shared,
    queue_id: &str,
) -> (Status, &'static str) {
    let settings = shared.settings();
    let refused = |cx: &mut EomContext<Session>, reply: &Reply| {
        let outcome = if reply.is_temporary() {
            "tempfail"
        } else {
            "reject"
        };
        tracing::info!(queue_id = %queue_id, outcome, reply = %reply, "{queue_id}: refused");
        (refuse(cx, queue_id, reply), outcome)
    };
    if crate::feedback::is_inbound(session(&mut cx.data).rcpts(), &settings.config) {
        // DSNs and complaints on their way to the LMTP listener: not ours to shape.
        tracing::info!(queue_id = %queue_id, outcome = "inbound", "{queue_id}: feedback for the bounce domains, passed untouched");
        return (Status::Continue, "inbound");
    }
    let mut planned = match session(&mut cx.data).end_of_message(shared, &settings) {
        Ok(planned) => planned,
        Err(rejection) => return refused(cx, &rejection.reply()),
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
                return refused(cx, &store_failed());
            }
        };
        if let Some(tid) = known
            .transmission_id
            .as_deref()
            .and_then(|t| t.parse().ok())
        {
            tracing::info!(queue_id = %queue_id, transmission_id = tid, copies_handed = known.copies.len(), events_committed = known.committed, "{queue_id}: a retry of a message seen before");
            if let Err(rejection) = planned.replan(tid, &settings.config) {
                return refused(cx, &rejection.reply());
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
                return refused(cx, &store_failed());
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
                return refused(cx, &reply);
            }
            return refused(cx, &rejection.reply());
        }
    }
    let accepted = match planned.render(&settings.config) {
        Ok(accepted) => accepted,
        Err(rejection) => return refused(cx, &rejection.reply()),
    };
    let mut handed = Handed {
        queue_id: Some(queue_id.to_owned()),
        original_size: accepted.original_size,
        copies: Vec::new(),
        amp_enabled: accepted.rendered.amp_enabled,
    };
    if !accepted.plan.copies.is_empty() {
        match hand_over(shared, &settings, &accepted, ledger.as_ref(), queue_id).await {
            Ok(copies) => handed.copies = copies,
            Err(reply) => return refused(cx, &reply),
        }
    }
    crate::failpoint::hit("after_copies");
    let Accepted {
        plan,
        facts,
        rendered,
        ..
    } = accepted;
    if let Err(e) = apply(&plan, &rendered, &cx.actions).await {
        tracing::error!(queue_id = %queue_id, transmission_id = %tid, "{queue_id}: milter action failed: {e}");
        return refused(cx, &internal_error());
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
            return refused(cx, &reply);
        }
    }
    crate::failpoint::hit("after_commit");
    let (status, outcome) = if plan.original_delivered() || plan.returning_copy {
        (Status::Continue, "accept")
    } else {
        // Every recipient got a copy of its own: the original goes to nobody.
        (Status::Discard, "discard")
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
    (status, outcome)
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
    let earlier = |i: usize| ledger.and_then(|(_, known)| known.copies.get(&keys[i]));
    crate::failpoint::hit("before_copies");
    let mut first_record = ledger.is_some_and(|(_, known)| known.transmission_id.is_none());
    let make = |i: usize| {
        if earlier(i).is_some() {
            return Ok(None);
        }
        rendered
            .copies
            .make(&plan.copies[i], plan, facts, body, &settings.config)
            .map(Some)
            .map_err(|r| r.reply())
    };
    let record = |taken: Vec<(usize, String, usize)>| {
        let mut rows = Vec::new();
        if let Some((digest, _)) = ledger {
            if std::mem::take(&mut first_record) {
                rows.push(ledger_row(digest, LEDGER_TRANSMISSION, tid));
            }
            for (i, reply, size) in &taken {
                let value = crate::ledger::copy_value(*size, reply);
                rows.push(ledger_row(digest, &keys[*i], &value));
            }
        }
        async move {
            if !rows.is_empty() {
                let commit = Commit {
                    ledger: rows,
                    ..Commit::default()
                };
                shared.store.commit(commit).await.map_err(|e| {
                    tracing::error!(queue_id = %queue_id, transmission_id = %tid, "{queue_id}: the ledger of copies: {e}");
                    store_failed()
                })?;
            }
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

/// Answer with `reply`; its class decides reject (5xx) or tempfail (4xx).
fn refuse(cx: &mut EomContext<Session>, queue_id: &str, reply: &Reply) -> Status {
    if let Err(e) =
        cx.reply
            .set_error_reply(reply.code, Some(reply.enhanced), [reply.text.as_str()])
    {
        // Cannot happen with our sanitized texts; still never accept the message.
        tracing::error!("{queue_id}: cannot set reply {reply}: {e}");
        return Status::Tempfail;
    }
    if reply.is_temporary() {
        Status::Tempfail
    } else {
        Status::Reject
    }
}

async fn handle_abort(cx: &mut Context<Session>) -> Status {
    session(&mut cx.data).abort();
    Status::Continue
}

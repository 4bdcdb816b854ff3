//! The milter adapter: negotiation and one thin callback per stage. Each callback hands
//! its input to the [`Session`]; any failure answers tempfail, never accept.

pub mod listener;
pub mod session;

use crate::api::reply::{Reply, copies_failed, internal_error, store_failed};
use crate::record::{self, Handed, queue_id_of_reply};
use crate::suppression;
use bytes::Bytes;
use indymilter::{
    Actions, Callbacks, Context, EomContext, MacroStage, NegotiateContext, ProtoOpts,
    SetErrorReply, Status,
};
pub use listener::{BoundSocket, MilterListener};
use session::{Accepted, BodyReply, Session, Shared, apply};
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
        shared.note_mta_name(&name.to_string_lossy()).await;
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
            if let Err(reply) = commit_events(
                shared,
                &settings.config,
                &planned.plan,
                &planned.facts,
                &handed,
                queue_id,
            )
            .await
            {
                return refused(cx, &reply);
            }
            return refused(cx, &rejection.reply());
        }
    }
    let Accepted {
        plan,
        facts,
        mut rendered,
        original_size,
    } = match planned.render(&settings.config) {
        Ok(accepted) => accepted,
        Err(rejection) => return refused(cx, &rejection.reply()),
    };
    let copies = std::mem::take(&mut rendered.copies);
    let mut handed = Handed {
        queue_id: Some(queue_id.to_owned()),
        original_size,
        copies: Vec::new(),
        amp_enabled: rendered.amp_enabled,
    };
    if !copies.is_empty() {
        let kinds: Vec<_> = copies
            .iter()
            .map(|c| (c.to.clone(), c.rcpt_type, c.bytes.len()))
            .collect();
        match settings.reinjector.hand_over_all(copies).await {
            Ok(replies) => {
                crate::metrics::global().copies(replies.len());
                for ((to, kind, size), reply) in kinds.iter().zip(&replies) {
                    tracing::info!(queue_id = %queue_id, transmission_id = %tid, rcpt_type = kind.as_str(), rcpt = %to, mta_reply = %reply, "{queue_id}: copy handed over");
                    handed.copies.push((queue_id_of_reply(reply), *size));
                }
            }
            Err(e) => {
                tracing::error!(queue_id = %queue_id, transmission_id = %tid, "{queue_id}: {e}");
                return refused(cx, &copies_failed());
            }
        }
    }
    if let Err(e) = apply(&plan, &rendered, &cx.actions).await {
        tracing::error!(queue_id = %queue_id, transmission_id = %tid, "{queue_id}: milter action failed: {e}");
        return refused(cx, &internal_error());
    }
    // The MTA applies the actions only once we accept: events first, then the answer.
    if !plan.returning_copy
        && let Err(reply) =
            commit_events(shared, &settings.config, &plan, &facts, &handed, queue_id).await
    {
        return refused(cx, &reply);
    }
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

/// Commit what the milter tells about the message; a store failure is a tempfail.
async fn commit_events(
    shared: &Shared,
    config: &crate::config::Config,
    plan: &crate::api::Plan,
    facts: &crate::api::MessageFacts,
    handed: &Handed,
    queue_id: &str,
) -> Result<(), Reply> {
    let now_ms = crate::ids::unix_millis();
    let tid = &plan.transmission_id;
    let commit = record::accepted(plan, facts, handed, config, now_ms, || shared.ids.next())
        .map_err(|e| {
            tracing::error!(queue_id = %queue_id, transmission_id = %tid, "{queue_id}: no event id: {e}");
            internal_error()
        })?;
    let kinds: Vec<&'static str> = commit.events.iter().map(|e| e.kind.as_str()).collect();
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

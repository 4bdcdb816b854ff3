//! The milter adapter: negotiation and one thin callback per stage. Each callback hands
//! its input to the [`Session`]; any failure answers tempfail, never accept.

pub mod listener;
pub mod session;

use crate::api::reply::Reply;
use crate::pipeline::{self, Action, MtaActions, Verdict};
use bytes::Bytes;
use indymilter::{
    Actions, Callbacks, Context, EomContext, MacroStage, NegotiateContext, ProtoOpts,
    SetErrorReply, Status,
};
pub use listener::{BoundSocket, MilterListener};
use session::{BodyReply, Session, Shared};
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
    let (verdict, outcome) =
        pipeline::end_of_message(&shared, session(&mut cx.data), &queue_id, &cx.actions).await;
    crate::metrics::global().message(outcome, started.elapsed().as_secs_f64());
    match verdict {
        Verdict::Accept => Status::Continue,
        Verdict::Discard => Status::Discard,
        Verdict::Refuse(reply) => refuse(cx, &queue_id, &reply),
    }
}

/// The pipeline's changes, as milter actions.
impl MtaActions for indymilter::EomActions {
    async fn act(&self, action: Action<'_>) -> Result<(), String> {
        use indymilter::ContextActions as _;
        let done = match action {
            Action::AddHeader { name, value } => self.add_header(name, value).await,
            Action::InsertHeader { index, name, value } => {
                self.insert_header(index, name, value).await
            }
            Action::ChangeHeader { name, index, value } => {
                self.change_header(name, index, value).await
            }
            Action::AddRecipient(rcpt) => self.add_recipient(rcpt).await,
            Action::DeleteRecipient(rcpt) => self.delete_recipient(rcpt).await,
            Action::ChangeSender(sender) => self.change_sender(sender, None::<&str>).await,
            Action::ReplaceBody(chunk) => self.replace_body(chunk).await,
            Action::Quarantine(reason) => self.quarantine(reason).await,
            Action::Progress => self.progress().await,
        };
        done.map_err(|e| e.to_string())
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

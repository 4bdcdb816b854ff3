//! The LMTP listener's delivery: read what came back, commit its events and suppression
//! entries, answer per recipient. A message that cannot be stored answers 451 (the MTA
//! keeps it); one that cannot be understood is accepted and kept in a bounded directory
//! for inspection, never bounced (no backscatter loops).

use super::lmtp::{Deliver, Reply};
use super::{FeedbackAddress, dsn, feedback_address, transmission_of};
use crate::config::Config;
use crate::ids::IdGenerator;
use crate::store::Store;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

/// Where messages nobody could read are kept, and how many.
#[derive(Clone, Debug)]
pub struct Keep {
    pub dir: PathBuf,
    pub max: usize,
}

impl Keep {
    /// Write `raw` as a new file and drop the oldest beyond `max`.
    pub fn keep(&self, raw: &[u8]) -> std::io::Result<PathBuf> {
        std::fs::create_dir_all(&self.dir)?;
        let name = format!(
            "{}-{:08x}.eml",
            crate::ids::unix_millis(),
            std::hash::BuildHasher::hash_one(&std::hash::RandomState::new(), raw) as u32
        );
        let path = self.dir.join(name);
        std::fs::write(&path, raw)?;
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "eml"))
            .collect();
        if files.len() > self.max {
            // Names start with the time: the oldest sort first.
            files.sort();
            for old in &files[..files.len() - self.max] {
                let _ = std::fs::remove_file(old);
            }
        }
        Ok(path)
    }
}

/// The bounce domains' mail, turned into events.
pub struct Inbound {
    pub config: Arc<Config>,
    pub store: Arc<dyn Store>,
    pub ids: Arc<IdGenerator>,
    /// Host names our MTA writes as `Reporting-MTA` (its DSNs are in-band `bounce`s).
    pub our_mtas: Vec<String>,
    pub keep: Keep,
    /// The MTA's log is followed: it reports every deferral, so our own MTA's delay
    /// warnings (DSNs) would count them twice.
    pub log_reports_delays: bool,
}

const STORE_FAILED: &str = "451 4.3.0 feedback store unavailable, try again later";

fn no_event_id(tid: &str, e: &crate::ids::IdError) -> Reply {
    tracing::error!(transmission_id = %tid, "feedback: {e}");
    "451 4.3.0 no event id, try again later".into()
}

impl Inbound {
    fn kept(&self, raw: &[u8], why: &str) -> Reply {
        match self.keep.keep(raw) {
            Ok(path) => {
                tracing::warn!(file = %path.display(), "feedback message kept for inspection: {why}");
                format!("250 2.0.0 Ok: kept for inspection ({why})")
            }
            Err(e) => {
                tracing::error!(dir = %self.keep.dir.display(), "cannot keep a feedback message ({why}): {e}");
                "451 4.3.0 cannot keep the message, try again later".into()
            }
        }
    }

    /// A `mailto:` List-Unsubscribe: the signed token in the subject names the
    /// recipient; a `list_unsubscribe` event and a non-transactional entry.
    async fn unsubscribe(&self, tid: &str, raw: &[u8]) -> Reply {
        let subject = mail_parser::MessageParser::default()
            .parse_headers(raw)
            .and_then(|m| m.subject().map(str::to_owned))
            .unwrap_or_default();
        let keys = crate::tracking::Keys::new(&self.config.tracking.secrets);
        let verified =
            super::mailto_token(&subject)
                .zip(keys.as_ref())
                .and_then(|(token, keys)| {
                    crate::tracking::token::verify(keys, token, crate::ids::unix_secs()).ok()
                });
        let Some(data) = verified.filter(|d| {
            d.kind == crate::tracking::token::Kind::Unsubscribe
                && d.transmission_id.to_string() == tid
        }) else {
            return self.kept(raw, "unsubscribe without a valid token");
        };
        let sink = crate::http::StoreSink {
            store: Arc::clone(&self.store),
            ids: Arc::clone(&self.ids),
        };
        let event = crate::http::TrackingEvent {
            kind: crate::events::EventType::ListUnsubscribe,
            transmission_id: data.transmission_id,
            recipient: data.recipient,
            link_index: 0,
            url: String::new(),
            link_name: String::new(),
            visitor: crate::events::Visitor::default(),
        };
        match crate::http::EventSink::record(&sink, event).await {
            Ok(()) => "250 2.0.0 Ok: unsubscribed".into(),
            Err(e) => {
                tracing::error!(transmission_id = %tid, "mailto unsubscribe: {e}");
                STORE_FAILED.into()
            }
        }
    }

    /// The stored facts of `tid`; otherwise the reply to give (kept, or tempfail).
    async fn transmission(
        &self,
        tid: &str,
        raw: &[u8],
        unknown: &str,
    ) -> Result<crate::events::Transmission, Reply> {
        match self.store.transmission(tid).await {
            Ok(Some(t)) => Ok(t),
            Ok(None) => Err(self.kept(raw, unknown)),
            Err(e) => {
                tracing::error!(transmission_id = %tid, "feedback: {e}");
                Err(STORE_FAILED.into())
            }
        }
    }

    /// The configured names of our MTA and those the milter learnt (`j`).
    async fn our_mtas(&self) -> Vec<String> {
        let mut names = self.our_mtas.clone();
        match super::stored_mta_names(self.store.as_ref()).await {
            Ok(learnt) => names.extend(learnt),
            // The configured names still hold; the DSN is then judged by them alone.
            Err(e) => tracing::warn!("feedback: cannot read the MTA's names: {e}"),
        }
        names
    }

    /// Deferrals so far of the report's recipients, from what the log follower counted.
    async fn retries(
        &self,
        t: &crate::events::Transmission,
        report: &dsn::Report,
    ) -> Result<super::Retries, Reply> {
        let mut queue_ids: Vec<String> = report
            .recipients
            .iter()
            .filter_map(|r| t.recipient(&r.recipient).queue_id)
            .collect();
        queue_ids.sort();
        queue_ids.dedup();
        if queue_ids.is_empty() {
            return Ok(super::Retries::new());
        }
        let rows = self.store.queued(&queue_ids).await.map_err(|e| {
            tracing::error!(transmission_id = %t.transmission_id, "feedback: {e}");
            Reply::from(STORE_FAILED)
        })?;
        Ok(rows
            .into_iter()
            .filter(|q| q.transmission_id == t.transmission_id)
            .map(|q| (q.rcpt, q.retries))
            .collect())
    }

    /// Commit what a message yields; a store failure is the MTA's cue to retry.
    async fn commit(&self, tid: &str, commit: crate::store::Commit) -> Result<(), Reply> {
        self.store.commit(commit).await.map_err(|e| {
            tracing::error!(transmission_id = %tid, "feedback: {e}");
            Reply::from(STORE_FAILED)
        })
    }

    async fn complaint(
        &self,
        rcpt: &str,
        address: &FeedbackAddress,
        complaint: &super::arf::Complaint,
        raw: &[u8],
    ) -> Result<Reply, Reply> {
        let Some((tid, complainer)) = super::complaint_target(complaint, address, &self.config)
        else {
            return Err(self.kept(raw, "complaint names no transmission or recipient"));
        };
        let transmission = self
            .transmission(&tid, raw, "complaint for an unknown transmission")
            .await?;
        if !transmission.went_to(&complainer) {
            return Err(self.kept(
                raw,
                "complaint names an address the transmission did not go to",
            ));
        }
        let commit = super::complaint_commit(
            complaint,
            &transmission,
            &complainer,
            rcpt,
            crate::ids::unix_secs(),
            || self.ids.next(),
        )
        .map_err(|e| no_event_id(&tid, &e))?;
        self.commit(&tid, commit).await?;
        crate::metrics::global().events(["spam_complaint"]);
        tracing::info!(transmission_id = %tid, fbtype = %complaint.fbtype, "feedback: spam_complaint, recipient suppressed for non-transactional mail");
        Ok("250 2.0.0 Ok: spam_complaint, 1 suppressed".into())
    }

    /// One recipient's reply to a message read once (`report`, and `complaint` when it
    /// is an ARF report).
    async fn one(
        &self,
        rcpt: &str,
        report: &dsn::Report,
        complaint: Option<&super::arf::Complaint>,
        raw: &[u8],
    ) -> Result<Reply, Reply> {
        let Some(address) = feedback_address(rcpt, &self.config) else {
            return Err(format!("550 5.1.1 <{rcpt}>: not a feedback address here"));
        };
        if let FeedbackAddress::Unsubscribe { transmission_id } = &address {
            return Ok(self.unsubscribe(transmission_id, raw).await);
        }
        if let Some(complaint) = complaint {
            return self.complaint(rcpt, &address, complaint, raw).await;
        }
        if report.kind == dsn::ReportKind::Unknown {
            return Err(self.kept(raw, "not a delivery report"));
        }
        let Some(tid) = transmission_of(&address, report, &self.config) else {
            return Err(self.kept(raw, "no transmission id"));
        };
        let transmission = self.transmission(&tid, raw, "unknown transmission").await?;
        let our_mtas = self.our_mtas().await;
        // With the log followed, our own MTA's delay warnings would count deferrals twice.
        let own_delays = self.log_reports_delays && super::in_band(report, &our_mtas);
        let filtered;
        let report = if own_delays {
            let mut r = report.clone();
            r.recipients.retain(|r| r.action != dsn::Action::Delayed);
            filtered = r;
            &filtered
        } else {
            report
        };
        let now = crate::ids::unix_secs();
        let retries = self.retries(&transmission, report).await?;
        let (commit, found) =
            super::commit(report, &transmission, &our_mtas, &retries, now, || {
                self.ids.next()
            })
            .map_err(|e| no_event_id(&tid, &e))?;
        if found.is_empty() {
            return Err(self.kept(raw, "no failed or delayed recipient of the transmission"));
        }
        let suppressed = commit.suppress.len();
        self.commit(&tid, commit).await?;
        crate::metrics::global().events(found.iter().map(|f| f.kind.as_str()));
        for f in &found {
            tracing::info!(
                transmission_id = %tid,
                event = f.kind.as_str(),
                bounce_class = f.class.code(),
                suppressed = f.class.is_hard(),
                "feedback: {} for a recipient",
                f.kind.as_str()
            );
        }
        let via = match address {
            FeedbackAddress::Verp { .. } => "",
            _ => " (matched by the returned message)",
        };
        Ok(format!(
            "250 2.0.0 Ok: {} event(s), {suppressed} suppressed{via}",
            found.len()
        ))
    }
}

impl Deliver for Inbound {
    fn rcpt(&self, rcpt: &str) -> Result<(), Reply> {
        match feedback_address(rcpt, &self.config) {
            Some(_) => Ok(()),
            None => Err(format!("550 5.1.1 <{rcpt}>: not a feedback address here")),
        }
    }

    fn data<'a>(
        &'a self,
        _mail_from: &'a str,
        rcpts: &'a [String],
        message: Vec<u8>,
    ) -> Pin<Box<dyn Future<Output = Vec<Reply>> + Send + 'a>> {
        Box::pin(async move {
            // Read once, whatever the number of recipients.
            let report = dsn::parse(&message);
            let complaint = super::arf::parse(&message);
            let mut replies = Vec::with_capacity(rcpts.len());
            for rcpt in rcpts {
                let reply = self.one(rcpt, &report, complaint.as_ref(), &message).await;
                replies.push(reply.unwrap_or_else(|reply| reply));
            }
            replies
        })
    }
}

/// The reply to a connection over the listener's cap (RFC 5321 4.3.2: 421 closes).
const TOO_MANY: &[u8] = b"421 4.3.2 too many connections, try again later\r\n";

/// Accept LMTP connections until `stop` resolves, at most `max_connections` at once:
/// one more is answered 421 and closed at once, never left in the backlog.
pub async fn serve(
    socket: crate::milter::listener::BoundSocket,
    inbound: Arc<Inbound>,
    hostname: String,
    max_size: usize,
    max_connections: usize,
    stop: impl Future<Output = ()>,
) {
    use indymilter::Listener as _;
    use tokio::io::AsyncWriteExt as _;
    let (mut listener, _guard) = socket.into_parts();
    let slots = crate::connlimit::Slots::new("lmtp", max_connections);
    tokio::pin!(stop);
    loop {
        let accepted = tokio::select! {
            () = &mut stop => return,
            a = std::future::poll_fn(|cx| listener.poll_accept(cx)) => a,
        };
        // The listener pauses on a failed accept itself and never returns an error.
        let Ok(mut stream) = accepted else {
            continue;
        };
        let Some(slot) = slots.try_take() else {
            tokio::spawn(async move {
                // A client that does not read gets no more than a second.
                let _ = tokio::time::timeout(std::time::Duration::from_secs(1), async {
                    stream.write_all(TOO_MANY).await?;
                    stream.shutdown().await
                })
                .await;
            });
            continue;
        };
        let inbound = Arc::clone(&inbound);
        let hostname = hostname.clone();
        tokio::spawn(async move {
            let _slot = slot;
            super::lmtp::serve(stream, &hostname, max_size, inbound).await;
        });
    }
}

//! Following the MTA's log (Postfix's or Sendmail's): sent lines become `delivery`
//! events, deferred ones `delay`, and bounced/expired ones `bounce` when no DSN will
//! come back to a bounce address of ours. Lines are matched by queue id against the
//! injections the store indexed. The position is committed with the events it produced (exactly once
//! across restarts); rotation (a new file at the path) and truncation are followed.

use super::classify::{self, BounceClass};
use super::maillog::{self, LineTime, Status};
use super::{FeedbackAddress, feedback_address};
use crate::config::Config;
use crate::events::{self, Bounce, EventType, Recipient, Stamp, Transmission};
use crate::ids::IdGenerator;
use crate::store::{
    Commit, PendingAttempt, Queued, Store, StoreError, SuppressionEntry, SuppressionType,
};
use std::collections::HashMap;
use std::os::unix::fs::MetadataExt as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _};

/// The store cursor holding the position: `<device>:<inode>:<offset>`.
pub const CURSOR: &str = "mta_log";
const POLL: Duration = Duration::from_millis(200);
const CHUNK: usize = 1 << 20;
/// A line longer than this (syslog daemons cut theirs at 8 KiB by default) is skipped
/// whole: a writer that never ends its line cannot make the follower hold it all.
pub const MAX_LINE: usize = 64 * 1024;

/// Attempts whose queue id is not indexed within this long are not ours: forgotten.
/// A message's commit comes within Postfix's `milter_content_timeout` (300 s) of its
/// copies' hand-over.
const PENDING_SECS: u64 = 600;

/// Follows one log file.
pub struct Follower {
    pub path: PathBuf,
    pub store: Arc<dyn Store>,
    pub ids: Arc<IdGenerator>,
    pub config: Arc<Config>,
    /// When kept attempts were last matched against new queue ids (Unix seconds).
    pending_checked: Option<u64>,
    /// When kept attempts were last pruned.
    pending_pruned: Option<u64>,
}

/// Where in which file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Position {
    dev: u64,
    ino: u64,
    offset: u64,
}

impl Position {
    fn parse(text: &str) -> Option<Position> {
        let mut parts = text.split(':').map(|p| p.parse::<u64>().ok());
        Some(Position {
            dev: parts.next()??,
            ino: parts.next()??,
            offset: parts.next()??,
        })
    }

    fn render(self) -> String {
        format!("{}:{}:{}", self.dev, self.ino, self.offset)
    }
}

impl Follower {
    pub fn new(
        path: PathBuf,
        store: Arc<dyn Store>,
        ids: Arc<IdGenerator>,
        config: Arc<Config>,
    ) -> Follower {
        Follower {
            path,
            store,
            ids,
            config,
            pending_checked: None,
            pending_pruned: None,
        }
    }

    /// Follow until `stop` resolves. A missing file is waited for.
    pub async fn run(mut self, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        tokio::select! {
            () = &mut stop => {}
            () = self.follow() => {}
        }
    }

    async fn open(&self, saved: Option<Position>) -> (tokio::fs::File, Position) {
        // A file that appears while we wait is read from its start.
        let mut waited = false;
        loop {
            match tokio::fs::File::open(&self.path).await {
                Ok(mut file) => {
                    let meta = match file.metadata().await {
                        Ok(m) => m,
                        Err(e) => {
                            tracing::warn!(mta_log = %self.path.display(), "cannot stat: {e}");
                            tokio::time::sleep(POLL * 5).await;
                            continue;
                        }
                    };
                    let here = Position {
                        dev: meta.dev(),
                        ino: meta.ino(),
                        offset: 0,
                    };
                    // The same file as before: carry on where we were. A file never seen
                    // (first start): from its end, not its history. A rotated file: from
                    // its start.
                    let offset = match saved {
                        Some(p)
                            if p.dev == here.dev && p.ino == here.ino && p.offset <= meta.len() =>
                        {
                            p.offset
                        }
                        Some(p) if p.dev == here.dev && p.ino == here.ino => 0,
                        Some(_) => 0,
                        None if waited => 0,
                        None => meta.len(),
                    };
                    if file.seek(std::io::SeekFrom::Start(offset)).await.is_ok() {
                        tracing::info!(mta_log = %self.path.display(), offset, "following the MTA log");
                        return (file, Position { offset, ..here });
                    }
                }
                Err(e) => {
                    if !waited {
                        tracing::warn!(mta_log = %self.path.display(), "cannot open the MTA log (retrying): {e}");
                    }
                }
            }
            waited = true;
            tokio::time::sleep(POLL * 5).await;
        }
    }

    async fn follow(&mut self) {
        let saved = loop {
            match self.store.cursor(CURSOR).await {
                Ok(v) => break v.as_deref().and_then(Position::parse),
                Err(e) => {
                    tracing::error!("cannot read the MTA log position: {e}");
                    tokio::time::sleep(POLL * 5).await;
                }
            }
        };
        let (mut file, mut pos) = self.open(saved).await;
        if saved.is_none() {
            // The first start reads from the end: say where, so that a crash before the
            // first line is read still leaves every later line to read.
            let commit = Commit {
                cursor: Some((CURSOR.to_owned(), pos.render())),
                ..Commit::default()
            };
            if let Err(e) = self.store.commit(commit).await {
                tracing::warn!(mta_log = %self.path.display(), "cannot save the MTA log position: {e}");
            }
        }
        let mut pending: Vec<u8> = Vec::new();
        // Inside a line over MAX_LINE: its bytes are dropped up to its end.
        let mut skipping = false;
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = match file.read(&mut buf).await {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(mta_log = %self.path.display(), "read failed: {e}");
                    0
                }
            };
            if n == 0 {
                // At the end: has the file been rotated or truncated meanwhile?
                if let Ok(meta) = std::fs::metadata(&self.path) {
                    let rotated = meta.dev() != pos.dev || meta.ino() != pos.ino;
                    let truncated = !rotated && meta.len() < pos.offset + pending.len() as u64;
                    if rotated || truncated {
                        tracing::info!(mta_log = %self.path.display(), rotated, truncated, "the MTA log was rotated");
                        pending.clear();
                        skipping = false;
                        // A new file, or this one cut short: either way from its start.
                        (file, pos) = self.open(Some(Position { offset: 0, ..pos })).await;
                        continue;
                    }
                }
                self.try_pending().await;
                tokio::time::sleep(POLL).await;
                continue;
            }
            let mut data = &buf[..n];
            if skipping {
                let Some(end) = data.iter().position(|&b| b == b'\n') else {
                    pos.offset += n as u64;
                    continue;
                };
                pos.offset += end as u64 + 1;
                data = &data[end + 1..];
                skipping = false;
            }
            pending.extend_from_slice(data);
            let Some(last) = pending.iter().rposition(|&b| b == b'\n') else {
                if pending.len() > MAX_LINE {
                    tracing::warn!(mta_log = %self.path.display(), "a line over {MAX_LINE} bytes: skipped");
                    pos.offset += pending.len() as u64;
                    pending.clear();
                    skipping = true;
                }
                continue;
            };
            let chunk: Vec<u8> = pending.drain(..=last).collect();
            let next = Position {
                offset: pos.offset + chunk.len() as u64,
                ..pos
            };
            // The position only moves once the chunk's events are committed.
            loop {
                match self.process(&chunk, next).await {
                    Ok(()) => break,
                    Err(e) => {
                        tracing::error!(mta_log = %self.path.display(), "cannot record delivery events (retrying): {e}");
                        tokio::time::sleep(POLL * 5).await;
                    }
                }
            }
            pos = next;
            if self
                .pending_checked
                .is_none_or(|t| crate::ids::unix_secs() > t)
            {
                self.try_pending().await;
            }
        }
    }

    /// [`Self::match_pending`], a failure logged (tried again at the next poll).
    async fn try_pending(&mut self) {
        if let Err(e) = self.match_pending().await {
            tracing::error!(mta_log = %self.path.display(), "cannot match kept log lines: {e}");
        }
    }

    /// Turn a chunk of whole lines into events; commit them with the new position.
    /// Attempts whose queue id is not indexed yet are kept in the store, to match later.
    async fn process(&mut self, chunk: &[u8], next: Position) -> Result<(), StoreError> {
        let text = String::from_utf8_lossy(chunk);
        let attempts: Vec<(maillog::Attempt, &str)> = text
            .lines()
            .flat_map(|line| maillog::attempts(line).into_iter().map(move |a| (a, line)))
            .collect();
        let mut commit = Commit {
            cursor: Some((CURSOR.to_owned(), next.render())),
            ..Commit::default()
        };
        // Copies' own senders the MTA queued (see ledger::copy_sender): a retry after a
        // kill looks them up.
        commit.mta_queued = text
            .lines()
            .filter_map(maillog::queued_sender)
            .filter(|(_, sender)| is_copy_sender(sender, &self.config))
            .map(|(queue_id, sender)| (sender.to_lowercase(), queue_id.to_owned()))
            .collect();
        let matched = self.match_attempts(&attempts, &mut commit).await?;
        let now = crate::ids::unix_secs();
        for ((a, line), _) in attempts.iter().zip(&matched).filter(|(_, m)| !**m) {
            commit.log_pending.push(PendingAttempt {
                seq: 0,
                queue_id: a.queue_id.to_owned(),
                rcpt: a.to.to_lowercase(),
                line: (*line).to_owned(),
                created: now,
            });
        }
        let written: Vec<&'static str> = commit.events.iter().map(|e| e.kind.as_str()).collect();
        self.store.commit(commit).await?;
        crate::metrics::global().events(written);
        Ok(())
    }

    /// Match kept attempts whose queue id was indexed since the last look; forget those
    /// older than [`PENDING_SECS`] (mail that is not ours) once a minute.
    async fn match_pending(&mut self) -> Result<(), StoreError> {
        let now = crate::ids::unix_secs();
        // Queue ids are indexed with their injection's time, stamped a moment before
        // the commit: look a little further back than the last look.
        let since = self
            .pending_checked
            .map_or(now.saturating_sub(PENDING_SECS), |t| t.saturating_sub(10));
        let kept = self.store.log_pending_matched(since).await?;
        self.pending_checked = Some(now);
        if !kept.is_empty() {
            let attempts: Vec<(maillog::Attempt, &str)> = kept
                .iter()
                .filter_map(|p| {
                    maillog::attempts(&p.line)
                        .into_iter()
                        .find(|a| a.queue_id == p.queue_id && a.to.eq_ignore_ascii_case(&p.rcpt))
                        .map(|a| (a, p.line.as_str()))
                })
                .collect();
            let mut commit = Commit::default();
            let matched = self.match_attempts(&attempts, &mut commit).await?;
            commit.log_resolved = kept
                .iter()
                .filter(|p| {
                    attempts.iter().zip(&matched).any(|((a, _), m)| {
                        *m && a.queue_id == p.queue_id && a.to.eq_ignore_ascii_case(&p.rcpt)
                    })
                })
                .map(|p| p.seq)
                .collect();
            let written: Vec<&'static str> =
                commit.events.iter().map(|e| e.kind.as_str()).collect();
            self.store.commit(commit).await?;
            crate::metrics::global().events(written);
        }
        if self.pending_pruned.is_none_or(|t| now >= t + 60) {
            self.store
                .prune_log_pending(now.saturating_sub(PENDING_SECS))
                .await?;
            self.pending_pruned = Some(now);
        }
        Ok(())
    }

    /// Add the events of every attempt whose queue id and recipient are indexed to
    /// `commit`; whether each one was.
    async fn match_attempts(
        &mut self,
        attempts: &[(maillog::Attempt<'_>, &str)],
        commit: &mut Commit,
    ) -> Result<Vec<bool>, StoreError> {
        let mut matched = vec![false; attempts.len()];
        if attempts.is_empty() {
            return Ok(matched);
        }
        let mut ids: Vec<String> = attempts
            .iter()
            .map(|(a, _)| a.queue_id.to_owned())
            .collect();
        ids.sort();
        ids.dedup();
        let mut queued: HashMap<(String, String), Queued> = self
            .store
            .queued(&ids)
            .await?
            .into_iter()
            .map(|q| ((q.queue_id.clone(), q.rcpt.clone()), q))
            .collect();
        let mut transmissions: HashMap<String, Option<Transmission>> = HashMap::new();
        let now = crate::ids::unix_secs();
        for ((a, _), matched) in attempts.iter().zip(matched.iter_mut()) {
            let Some(q) = queued.get_mut(&(a.queue_id.to_owned(), a.to.to_lowercase())) else {
                continue;
            };
            *matched = true;
            if !transmissions.contains_key(&q.transmission_id) {
                let t = self.store.transmission(&q.transmission_id).await?;
                transmissions.insert(q.transmission_id.clone(), t);
            }
            let Some(Some(t)) = transmissions.get(&q.transmission_id) else {
                continue;
            };
            let Ok(event_id) = self.ids.next() else {
                return Err(StoreError::Stopped);
            };
            let stamp = Stamp {
                event_id,
                timestamp: attempt_time(a.time, now),
            };
            self.attempt(a, q, t, stamp, commit);
        }
        Ok(matched)
    }

    /// The events (and suppression) of one attempt. `q.retries` counts the deferrals so
    /// far, those of this chunk included; the store adds the new ones with the commit.
    fn attempt(
        &self,
        a: &maillog::Attempt,
        q: &mut Queued,
        t: &Transmission,
        stamp: Stamp,
        commit: &mut Commit,
    ) {
        let recipient = Recipient {
            raw: q.raw_rcpt.clone(),
            rcpt_type: events::static_rcpt_type(q.rcpt_type.as_deref()),
            message_id: q.message_id.clone().unwrap_or_default(),
            queue_id: Some(q.queue_id.clone()),
            msg_size: q.msg_size.and_then(|s| usize::try_from(s).ok()),
        };
        let reply = a.reply();
        let bounce = |class: BounceClass| Bounce {
            bounce_class: class.code(),
            error_code: classify::reply_code(reply),
            raw_reason: reply.to_owned(),
        };
        let facts = events::Attempt {
            ip_address: a.ip.map(str::to_owned),
            queue_time_ms: a.delay.map(|d| (d * 1000.0).round() as u64),
            num_retries: q.retries,
        };
        match a.status {
            Status::Sent => {
                commit
                    .events
                    .push(events::delivery(stamp, t, &recipient, &facts));
            }
            Status::Deferred => {
                q.retries += 1;
                commit.retried.push((q.queue_id.clone(), q.rcpt.clone()));
                let class = match classify::classify(a.dsn, reply) {
                    c if c.is_hard() => BounceClass::SoftBounce,
                    c => c,
                };
                commit.events.push(events::bounce(
                    EventType::Delay,
                    stamp,
                    t,
                    &recipient,
                    &bounce(class),
                    &facts,
                ));
            }
            Status::Bounced | Status::Expired => {
                // Mail with our bounce address gets a DSN through the LMTP listener,
                // which reports it; only mail without one is reported from the log.
                if matches!(
                    feedback_address(&t.msg_from, &self.config),
                    Some(FeedbackAddress::Verp { .. })
                ) {
                    return;
                }
                let class = classify::classify(a.dsn, reply);
                commit.events.push(events::bounce(
                    EventType::Bounce,
                    stamp,
                    t,
                    &recipient,
                    &bounce(class),
                    &facts,
                ));
                if class.is_hard() {
                    commit.suppress.push(SuppressionEntry::new(
                        &q.raw_rcpt,
                        t.subaccount_id,
                        if t.transactional {
                            SuppressionType::Transactional
                        } else {
                            SuppressionType::NonTransactional
                        },
                        "Bounce Rule",
                        reply,
                        stamp.timestamp,
                    ));
                }
            }
        }
    }
}

/// A copy's own sender: our bounce address with a recipient's tag (`bounces+TID-tag@`).
fn is_copy_sender(sender: &str, config: &Config) -> bool {
    sender
        .rsplit_once('@')
        .is_some_and(|(local, _)| local.contains('+') && local.contains('-'))
        && matches!(
            feedback_address(sender, config),
            Some(FeedbackAddress::Verp { .. })
        )
}

/// Wait until the follower has read `path` up to where it ends now, at most `timeout`:
/// whatever the MTA logged before this call is then in the store. `false` when it did
/// not catch up in time (or the file cannot be read).
pub async fn caught_up(store: &dyn Store, path: &std::path::Path, timeout: Duration) -> bool {
    let Ok(meta) = std::fs::metadata(path) else {
        return false;
    };
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Ok(Some(pos)) = store.cursor(CURSOR).await
            && let Some(pos) = Position::parse(&pos)
            && (pos.dev != meta.dev() || pos.ino != meta.ino() || pos.offset >= meta.len())
        {
            // Rotated meanwhile: the follower has moved past the file we measured.
            let rotated = pos.dev != meta.dev() || pos.ino != meta.ino();
            if !rotated || pos.offset > 0 {
                return true;
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Unix seconds of an attempt from its line's time stamp (a traditional one is local
/// time of the last year that does not put it in the future); `now` when the line has
/// none or it lies ahead of the clock.
pub fn attempt_time(time: Option<LineTime>, now: u64) -> u64 {
    let at = match time {
        Some(LineTime::Exact(ms)) => Some(ms / 1000),
        Some(LineTime::Local {
            month,
            day,
            hour,
            minute,
            second,
        }) => {
            let this_year = local_year(now);
            let at = |year| local_time(year, month, day, hour, minute, second);
            match at(this_year) {
                // A December line read in January is last year's.
                Some(t) if t > now + 86_400 => at(this_year - 1),
                t => t,
            }
        }
        None => None,
    };
    at.filter(|t| *t <= now + 60).unwrap_or(now)
}

fn local_year(now: u64) -> i32 {
    let t = libc::time_t::try_from(now).unwrap_or(0);
    // SAFETY: `localtime_r` writes only into `tm`, which lives for the call.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    if unsafe { libc::localtime_r(&t, &mut tm) }.is_null() {
        return 1970;
    }
    tm.tm_year + 1900
}

/// The Unix time of a local wall-clock time (the system's time zone, DST decided by
/// the date).
fn local_time(year: i32, month: u32, day: u32, hour: u32, minute: u32, second: u32) -> Option<u64> {
    let int = |v: u32| libc::c_int::try_from(v).ok();
    // SAFETY: a zeroed `tm` is a valid value; `mktime` reads and normalises it in place.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    tm.tm_year = year - 1900;
    tm.tm_mon = int(month)? - 1;
    tm.tm_mday = int(day)?;
    tm.tm_hour = int(hour)?;
    tm.tm_min = int(minute)?;
    tm.tm_sec = int(second)?;
    tm.tm_isdst = -1;
    let t = unsafe { libc::mktime(&mut tm) };
    u64::try_from(t).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempt_times() {
        let now = 1_798_761_600; // 2027-01-01T00:00:00Z
        assert_eq!(
            attempt_time(Some(LineTime::Exact(1_796_220_002_123)), now),
            1_796_220_002
        );
        // Ahead of the clock (skew, a forged line): now.
        assert_eq!(
            attempt_time(Some(LineTime::Exact((now + 3600) * 1000)), now),
            now
        );
        assert_eq!(attempt_time(None, now), now);
        // A December line read on New Year's Day is last year's, in local time.
        let december = LineTime::Local {
            month: 12,
            day: 31,
            hour: 23,
            minute: 59,
            second: 0,
        };
        let year = local_year(now);
        let expected = local_time(year, 12, 31, 23, 59, 0)
            .filter(|t| *t <= now + 86_400)
            .or_else(|| local_time(year - 1, 12, 31, 23, 59, 0))
            .unwrap();
        let got = attempt_time(Some(december), now);
        assert_eq!(got, expected);
        assert!(got <= now + 60 && now - got < 2 * 86_400, "{got}");
    }
}

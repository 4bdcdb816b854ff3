//! From a plan to bytes: the original's new body and extra headers, and every copy's
//! message, with each recipient's own tracking links and unsubscribe address. Pure: the
//! message, the plan, the configuration and the time in; bytes out.
//!
//! Copies are made one at a time, when the hand-over is ready for them ([`Copies`]):
//! memory holds the copies in flight, never all of a message's copies at once.

use crate::api::copies::{CopyPlan, render_copy};
use crate::api::plan::{Engagement, MessageFacts, Plan};
use crate::api::{HeaderEdit, Rejection};
use crate::config::Config;
use crate::mime::{self, BodyOptions};
use crate::reinject::Copy;
use crate::tracking::{Keys, Links};

/// What the milter does to the original and hands over as copies.
#[derive(Debug, Default)]
pub struct Rendered {
    /// The original's new body (its first primary recipient's links), if it changes.
    pub original_body: Option<Vec<u8>>,
    /// Headers only the original gets (its List-Unsubscribe).
    pub original_edits: Vec<HeaderEdit>,
    /// What each copy is made from.
    pub copies: Copies,
    /// The original's `DKIM-Signature` value, inserted first (index 0).
    pub signature: Option<String>,
    /// The message has an AMPHTML part.
    pub amp_enabled: bool,
}

/// What the copies are made from: the message parsed once, the links' settings and the
/// header edits every copy shares.
#[derive(Default)]
pub struct Copies {
    prepared: Option<mime::Prepared>,
    settings: Option<LinkSettings>,
    shared_edits: Vec<HeaderEdit>,
}

impl std::fmt::Debug for Copies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Copies").finish_non_exhaustive()
    }
}

impl Copies {
    /// `copy` (one of `plan.copies`) as its recipient gets it, signed when the plan
    /// names a key. The other arguments are those [`render`] was given.
    pub fn make(
        &self,
        copy: &CopyPlan,
        plan: &Plan,
        facts: &MessageFacts,
        body: &[u8],
        config: &Config,
    ) -> Result<Copy, Rejection> {
        let own = self
            .settings
            .as_ref()
            .map(|s| s.for_recipient(&copy.address));
        let mut copy_plan = CopyPlan {
            extra_headers: copy.extra_headers.clone(),
            ..copy.clone()
        };
        if plan.engagement.list_unsubscribe
            && let Some(l) = &own
        {
            copy_plan
                .extra_headers
                .extend(unsubscribe_headers(l, bounce_domain(plan)));
        }
        let own_body = body_for(self.prepared.as_ref(), plan, own.as_ref());
        let body = own_body.as_deref().unwrap_or(body);
        let bytes = render_copy(&facts.headers, &self.shared_edits, &copy_plan, body);
        drop(own_body);
        Ok(Copy {
            from: match &plan.mail_from {
                Some(bounce) => crate::ledger::copy_sender(bounce, &copy.address),
                None => facts.mail_from.clone(),
            },
            to: copy.address.clone(),
            rcpt_type: copy.rcpt_type,
            bytes: sign_copy(dkim_key(plan, config), bytes)?,
        })
    }
}

/// The domain of the message's bounce address, if it has one.
fn bounce_domain(plan: &Plan) -> Option<&str> {
    plan.mail_from
        .as_deref()
        .and_then(|a| a.rsplit_once('@'))
        .map(|(_, d)| d)
}

fn dkim_key<'a>(plan: &Plan, config: &'a Config) -> Option<&'a crate::dkim::LoadedKey> {
    plan.dkim_key
        .as_deref()
        .and_then(|name| config.loaded_dkim_keys.get(name))
}

/// Links of one recipient's message, when tracking is configured.
struct LinkSettings {
    base_url: String,
    keys: Keys,
    expires: u32,
    transmission_id: u64,
}

impl LinkSettings {
    fn new(plan: &Plan, config: &Config, now: u64) -> Option<LinkSettings> {
        let base_url = config.tracking.base_url.clone()?;
        let keys = Keys::new(&config.tracking.secrets)?;
        let lifetime = u64::from(config.tracking.link_expiry_days) * 86_400;
        Some(LinkSettings {
            base_url,
            keys,
            expires: u32::try_from(now.saturating_add(lifetime)).unwrap_or(u32::MAX),
            transmission_id: plan.transmission_id.parse().unwrap_or_default(),
        })
    }

    fn for_recipient<'a>(&'a self, recipient: &'a str) -> Links<'a> {
        Links {
            base_url: &self.base_url,
            keys: &self.keys,
            transmission_id: self.transmission_id,
            recipient,
            expires: self.expires,
        }
    }
}

fn body_options(e: &Engagement) -> BodyOptions {
    BodyOptions {
        open_tracking: e.open_tracking,
        click_tracking: e.click_tracking,
        inline_css: e.inline_css,
    }
}

/// RFC 8058 headers for `recipient`: the `mailto:` form at the bounce domain (when the
/// message has a bounce address) and the one-click URL.
fn unsubscribe_headers(links: &Links<'_>, bounce_domain: Option<&str>) -> [(String, String); 2] {
    let https = format!("<{}>", links.unsubscribe());
    let value = match bounce_domain {
        Some(domain) => format!("<{}>, {https}", links.unsubscribe_mailto(domain)),
        None => https,
    };
    [
        ("List-Unsubscribe".into(), value),
        (
            "List-Unsubscribe-Post".into(),
            "List-Unsubscribe=One-Click".into(),
        ),
    ]
}

/// The body as `recipient` gets it. A body that cannot be parsed or rewritten goes out
/// as it came (logged): tracking is never a reason to hold mail back.
fn body_for(
    prepared: Option<&mime::Prepared>,
    plan: &Plan,
    links: Option<&Links<'_>>,
) -> Option<Vec<u8>> {
    let prepared = prepared?;
    let opts = body_options(&plan.engagement);
    let untracked = BodyOptions {
        open_tracking: false,
        click_tracking: false,
        ..opts
    };
    let result = match links {
        Some(links) => prepared.rewrite(&opts, links),
        None => prepared.rewrite(&untracked, &NoLinks),
    };
    result.unwrap_or_else(|e| {
        tracing::warn!(transmission_id = %plan.transmission_id, "body left unchanged: {e}");
        None
    })
}

/// Stands in when no endpoint is configured (only CSS inlining can apply then).
struct NoLinks;

impl mime::LinkMaker for NoLinks {
    fn click(&self, _: u16, target: &str) -> String {
        target.to_owned()
    }
    fn open(&self) -> String {
        String::new()
    }
}

/// A copy's bytes with its `DKIM-Signature` first.
fn sign_copy(key: Option<&crate::dkim::LoadedKey>, bytes: Vec<u8>) -> Result<Vec<u8>, Rejection> {
    let Some(key) = key else {
        return Ok(bytes);
    };
    let value = key.sign(&bytes).map_err(|e| {
        tracing::error!(key = %key.name, "DKIM signing of a copy failed: {e}");
        Rejection::Signing
    })?;
    let mut out = format!("DKIM-Signature: {value}\r\n").into_bytes();
    out.extend_from_slice(&bytes);
    Ok(out)
}

/// Render the original's changes, and what its copies are made from. `body` is the
/// message body as received (empty when the milter did not need it).
pub fn render(
    plan: &Plan,
    facts: &MessageFacts,
    body: &[u8],
    config: &Config,
    now: u64,
) -> Result<Rendered, Rejection> {
    // The body is read for every multipart message, so an AMP part is always seen.
    let amp_enabled = !body.is_empty()
        && mime::check_amp(&facts.headers, body).map_err(|_| Rejection::AmpPlacement)?;
    let settings = LinkSettings::new(plan, config, now);
    fn links<'a>(settings: &'a Option<LinkSettings>, rcpt: &'a str) -> Option<Links<'a>> {
        settings.as_ref().map(|s| s.for_recipient(rcpt))
    }
    let engagement = &plan.engagement;
    let mut rendered = Rendered {
        amp_enabled,
        ..Rendered::default()
    };

    // Parsed once; each recipient's body is rewritten from it.
    let prepared = if engagement.rewrites_body() {
        mime::Prepared::new(&facts.headers, body)
            .map_err(|e| {
                tracing::warn!(transmission_id = %plan.transmission_id, "body left unchanged: {e}");
            })
            .ok()
    } else {
        None
    };
    let bounce_domain = bounce_domain(plan);
    let first = facts.rcpts.first().map(String::as_str).unwrap_or_default();
    let first_links = links(&settings, first);
    rendered.original_body = body_for(prepared.as_ref(), plan, first_links.as_ref());
    if engagement.list_unsubscribe
        && let Some(l) = &first_links
    {
        rendered.original_edits = unsubscribe_headers(l, bounce_domain)
            .into_iter()
            .map(|(name, value)| HeaderEdit::Add { name, value })
            .collect();
    }

    // Signed last, over the message as it leaves; the MTA must add nothing signed
    // after us, so Date and Message-ID are ours when missing.
    let key = dkim_key(plan, config);
    let mut shared_edits = plan.header_edits.clone();
    if key.is_some() {
        let adds = |name: &str| {
            shared_edits.iter().any(
                |e| matches!(e, HeaderEdit::Add { name: n, .. } if n.eq_ignore_ascii_case(name)),
            )
        };
        let mut more = Vec::new();
        if facts.count("Date") == 0 && !adds("Date") {
            let date = mail_parser::DateTime::from_timestamp(i64::try_from(now).unwrap_or(0));
            more.push(HeaderEdit::Add {
                name: "Date".into(),
                value: date.to_rfc822(),
            });
        }
        if facts.count("Message-ID") == 0 && !adds("Message-ID") {
            let domain =
                crate::api::plan::sending_domain(facts).unwrap_or_else(|| "localhost".into());
            more.push(HeaderEdit::Add {
                name: "Message-ID".into(),
                value: format!("<msys.{}@{domain}>", plan.transmission_id),
            });
        }
        shared_edits.extend(more.iter().cloned());
        rendered.original_edits.extend(more);
    }
    if let Some(key) = key {
        let mut headers = facts.headers.clone();
        let edits: Vec<HeaderEdit> = plan
            .header_edits
            .iter()
            .chain(&rendered.original_edits)
            .cloned()
            .collect();
        crate::api::copies::apply_edits(&mut headers, &edits);
        let body = rendered.original_body.as_deref().unwrap_or(body);
        let message = crate::api::copies::serialize(&headers, body);
        rendered.signature = Some(key.sign(&message).map_err(|e| {
            tracing::error!(transmission_id = %plan.transmission_id, key = %key.name, "DKIM signing failed: {e}");
            Rejection::Signing
        })?);
    }
    rendered.copies = Copies {
        prepared,
        settings,
        shared_edits,
    };
    Ok(rendered)
}

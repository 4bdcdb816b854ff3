//! Open and click tracking and one-click unsubscribe: signed tokens, the list of
//! machine openers, and the URLs the messages carry.

pub mod machine;
pub mod token;

pub use token::{Keys, Kind, TokenData};

/// An absolute `http:` or `https:` URL (the scheme in any case): the only links tracked,
/// and the only targets the endpoint redirects to.
pub fn is_web_url(url: &str) -> bool {
    let head = url.trim_start().as_bytes();
    let head = &head[..head.len().min(8)];
    head.len() >= 7 && head[..7].eq_ignore_ascii_case(b"http://")
        || head.len() == 8 && head.eq_ignore_ascii_case(b"https://")
}

/// The local part of `mailto:` unsubscribe addresses (`unsub+<transmission id>@...`).
pub const MAILTO_LOCAL_PART: &str = "unsub";
/// The subject a `mailto:` unsubscribe carries its token in.
pub const MAILTO_SUBJECT_PREFIX: &str = "unsubscribe:";

/// Makes the tracking and unsubscribe URLs of one recipient's message.
#[derive(Clone, Debug)]
pub struct Links<'a> {
    pub base_url: &'a str,
    pub keys: &'a Keys,
    pub transmission_id: u64,
    pub recipient: &'a str,
    pub expires: u32,
}

impl Links<'_> {
    fn token(&self, kind: Kind, link_index: u16, target: &str, link_name: &str) -> String {
        token::sign(
            self.keys,
            &TokenData {
                kind,
                transmission_id: self.transmission_id,
                recipient: self.recipient.to_owned(),
                link_index,
                url: target.to_owned(),
                link_name: link_name.to_owned(),
                expires: self.expires,
            },
        )
    }

    fn url(&self, kind: Kind, link_index: u16, target: &str, link_name: &str) -> String {
        let token = self.token(kind, link_index, target, link_name);
        let path = match kind {
            Kind::Open | Kind::InitialOpen => "o",
            Kind::Click | Kind::UnsubscribeClick => "c",
            Kind::Unsubscribe => "u",
        };
        format!("{}/{path}/{token}", self.base_url.trim_end_matches('/'))
    }

    /// The open pixel's URL.
    pub fn open(&self) -> String {
        self.url(Kind::Open, 0, "", "")
    }

    /// The tracked URL of the `index`th link, redirecting to `target`.
    pub fn click(&self, index: u16, target: &str) -> String {
        self.url(Kind::Click, index, target, "")
    }

    /// [`Links::click`] (or [`Links::unsubscribe_click`]) for a link with a
    /// `data-msys-linkname` (`name`, empty for none).
    pub fn named_click(&self, index: u16, target: &str, name: &str, unsubscribe: bool) -> String {
        let kind = if unsubscribe {
            Kind::UnsubscribeClick
        } else {
            Kind::Click
        };
        self.url(kind, index, target, name)
    }

    /// The URL of the pixel at the top of the body.
    pub fn initial_open(&self) -> String {
        self.url(Kind::InitialOpen, 0, "", "")
    }

    /// The tracked URL of an unsubscribe link, redirecting to `target`.
    pub fn unsubscribe_click(&self, index: u16, target: &str) -> String {
        self.url(Kind::UnsubscribeClick, index, target, "")
    }

    /// The one-click unsubscribe URL (RFC 8058).
    pub fn unsubscribe(&self) -> String {
        self.url(Kind::Unsubscribe, 0, "", "")
    }

    /// The `mailto:` unsubscribe address at `domain` (a bounce domain, whose mail comes
    /// back through the LMTP listener): the signed token rides in the subject, since a
    /// local part is limited to 64 characters (RFC 5321) and the token is longer.
    pub fn unsubscribe_mailto(&self, domain: &str) -> String {
        let token = self.token(Kind::Unsubscribe, 0, "", "");
        format!(
            "mailto:{MAILTO_LOCAL_PART}+{}@{domain}?subject={MAILTO_SUBJECT_PREFIX}{token}",
            self.transmission_id
        )
    }
}

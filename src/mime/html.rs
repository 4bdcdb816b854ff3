//! HTML rewriting with lol_html: tracked links, the open pixel, inlined CSS.

use crate::tracking::is_web_url;
use lol_html::html_content::ContentType;
use lol_html::{RewriteStrSettings, element, rewrite_str};
use std::cell::{Cell, RefCell};
use std::rc::Rc;

/// The URLs a message carries for one recipient.
pub trait LinkMaker {
    /// The tracked URL of the `index`th tracked link, leading to `target`.
    fn click(&self, index: u16, target: &str) -> String;
    /// The open pixel's URL (placed before `</body>`).
    fn open(&self) -> String;
    /// The URL of the pixel at the top of the body (`initial_open`, which fires even
    /// when a client clips a long message); empty: no such pixel.
    fn initial_open(&self) -> String {
        String::new()
    }
    /// The tracked URL of a link marked `data-msys-unsubscribe="1"`: it redirects like
    /// any tracked link and also unsubscribes the recipient.
    fn unsubscribe_click(&self, index: u16, target: &str) -> String {
        self.click(index, target)
    }
    /// A link with a `data-msys-linkname` (`name`; empty for none), a plain or an
    /// unsubscribe one; makers that do not record names make the unnamed URL.
    fn named_click(&self, index: u16, target: &str, name: &str, unsubscribe: bool) -> String {
        let _ = name;
        if unsubscribe {
            self.unsubscribe_click(index, target)
        } else {
            self.click(index, target)
        }
    }
}

impl LinkMaker for crate::tracking::Links<'_> {
    fn click(&self, index: u16, target: &str) -> String {
        crate::tracking::Links::click(self, index, target)
    }
    fn open(&self) -> String {
        crate::tracking::Links::open(self)
    }
    fn initial_open(&self) -> String {
        crate::tracking::Links::initial_open(self)
    }
    fn unsubscribe_click(&self, index: u16, target: &str) -> String {
        crate::tracking::Links::unsubscribe_click(self, index, target)
    }
    fn named_click(&self, index: u16, target: &str, name: &str, unsubscribe: bool) -> String {
        crate::tracking::Links::named_click(self, index, target, name, unsubscribe)
    }
}

/// A 1x1 tracking image.
fn pixel_img(url: &str) -> String {
    format!(
        "<img src=\"{url}\" width=\"1\" height=\"1\" alt=\"\" border=\"0\" style=\"height:1px !important;width:1px !important;border-width:0 !important;margin:0 !important;padding:0 !important\" />"
    )
}

/// What to do to an HTML part.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BodyOptions {
    pub open_tracking: bool,
    pub click_tracking: bool,
    pub inline_css: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum HtmlError {
    #[error("HTML rewriting failed: {0}")]
    Rewrite(String),
    #[error("CSS inlining failed: {0}")]
    InlineCss(String),
}

/// Decode the few character references that appear in URLs (`&amp;` above all), so the
/// target recorded in the token is the URL the browser would have followed.
fn decode_entities(value: &str) -> String {
    if !value.contains('&') {
        return value.to_owned();
    }
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(pos) = rest.find('&') {
        out.push_str(&rest[..pos]);
        rest = &rest[pos..];
        let decoded = rest.find(';').filter(|&end| end <= 10).and_then(|end| {
            let entity = &rest[1..end];
            let ch = match entity {
                "amp" => Some('&'),
                "quot" => Some('"'),
                "apos" => Some('\''),
                "lt" => Some('<'),
                "gt" => Some('>'),
                _ => entity
                    .strip_prefix("#x")
                    .or_else(|| entity.strip_prefix("#X"))
                    .and_then(|h| u32::from_str_radix(h, 16).ok())
                    .or_else(|| entity.strip_prefix('#').and_then(|d| d.parse().ok()))
                    .and_then(char::from_u32),
            }?;
            Some((ch, end + 1))
        });
        match decoded {
            Some((ch, len)) => {
                out.push(ch);
                rest = &rest[len..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The target a browser follows for an `href` value: entities decoded, and tabs and line
/// breaks removed (the URL standard strips them anywhere in the input).
fn link_target(href: &str) -> String {
    let mut target = decode_entities(href.trim());
    target.retain(|c| !matches!(c, '\t' | '\r' | '\n'));
    target
}

/// Rewrite one HTML document. Only absolute http(s) links of `<a>` and `<area>` are
/// tracked; relative links (a `<base href>` is not applied), `mailto:`, `tel:` and
/// anchors stay, and so does a link marked `data-msys-clicktrack="0"` (the marker
/// attribute is removed). Comments and scripts are text to lol_html, never touched.
pub fn rewrite_html(
    html: &str,
    opts: &BodyOptions,
    links: &dyn LinkMaker,
) -> Result<String, HtmlError> {
    let html = if opts.inline_css {
        inline_css(html)?
    } else {
        html.to_owned()
    };
    if !opts.click_tracking && !opts.open_tracking {
        return Ok(html);
    }
    let index = Cell::new(0u16);
    let pixel_placed = Rc::new(Cell::new(false));
    let pixel = RefCell::new(String::new());
    let initial_pixel = RefCell::new(String::new());
    let initial_placed = Cell::new(false);
    if opts.open_tracking {
        *pixel.borrow_mut() = pixel_img(&links.open());
        let initial = links.initial_open();
        if !initial.is_empty() {
            *initial_pixel.borrow_mut() = pixel_img(&initial);
        }
    }
    let mut settings = RewriteStrSettings::new();
    if opts.click_tracking {
        settings = settings.append_element_content_handler(element!("a[href], area[href]", |el| {
            // SparkPost's attribute: the name clicks report as `target_link_name`;
            // ours to read, not the recipient's to see.
            let name = el
                .get_attribute("data-msys-linkname")
                .map(|n| decode_entities(n.trim()))
                .unwrap_or_default();
            el.remove_attribute("data-msys-linkname");
            if el
                .get_attribute("data-msys-clicktrack")
                .is_some_and(|v| v.trim() == "0")
            {
                el.remove_attribute("data-msys-clicktrack");
                return Ok(());
            }
            let Some(href) = el.get_attribute("href") else {
                return Ok(());
            };
            let target = link_target(&href);
            let unsubscribe = el
                .get_attribute("data-msys-unsubscribe")
                .is_some_and(|v| v.trim() == "1");
            // A URL too long for a token stays untracked rather than being cut.
            if is_web_url(&target) && target.len() <= crate::tracking::token::MAX_URL_LEN {
                let tracked = links.named_click(index.get(), &target, &name, unsubscribe);
                index.set(index.get().saturating_add(1));
                el.set_attribute("href", &tracked)?;
            }
            Ok(())
        }));
    }
    if opts.open_tracking {
        settings = settings.append_element_content_handler(element!("body", |el| {
            if !initial_pixel.borrow().is_empty() && !initial_placed.replace(true) {
                el.prepend(&initial_pixel.borrow(), ContentType::Html);
            }
            if let Some(handlers) = el.end_tag_handlers() {
                let pixel = pixel.borrow().clone();
                let placed = Rc::clone(&pixel_placed);
                let on_end = move |end: &mut lol_html::html_content::EndTag<'_>| {
                    // Only the first </body>: a second body element gets no second pixel.
                    if !placed.replace(true) {
                        end.before(&pixel, ContentType::Html);
                    }
                    Ok(())
                };
                handlers.push(Box::new(on_end) as _);
            }
            Ok(())
        }));
    }
    let mut out = rewrite_str(&html, settings).map_err(|e| HtmlError::Rewrite(e.to_string()))?;
    if opts.open_tracking && !pixel_placed.get() {
        out.push_str(&pixel.borrow());
    }
    if opts.open_tracking && !initial_placed.get() {
        // No <body> element: the first pixel goes first.
        out.insert_str(0, &initial_pixel.borrow());
    }
    Ok(out)
}

/// Move `<style>` rules of the document into `style` attributes (css-inline). Remote
/// stylesheets are never fetched. Rules that cannot live in an attribute (`@media`,
/// `:hover`) stay in their `<style>` element, so responsive layouts keep working; the
/// inlined ones are removed from it.
fn inline_css(html: &str) -> Result<String, HtmlError> {
    css_inline::CSSInliner::options()
        .load_remote_stylesheets(false)
        .keep_style_tags(true)
        .remove_inlined_selectors(true)
        .build()
        .inline(html)
        .map_err(|e| HtmlError::InlineCss(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn web_urls_and_targets() {
        for yes in [
            "https://a.example/",
            "HTTP://A.EXAMPLE",
            "  Https://x",
            "http://",
        ] {
            assert!(is_web_url(yes), "{yes}");
        }
        for no in [
            "",
            "http:",
            "https:/x",
            "mailto:a@b",
            "/rel",
            "javascript:x",
            "é",
        ] {
            assert!(!is_web_url(no), "{no}");
        }
        assert_eq!(
            link_target(" https://a.example/x\n?a=1&amp;b=\t2 "),
            "https://a.example/x?a=1&b=2"
        );
    }

    #[test]
    fn entities() {
        assert_eq!(
            decode_entities("a?b=1&amp;c=2&#38;d=&#x26;&unknown;&"),
            "a?b=1&c=2&d=&&unknown;&"
        );
    }
}

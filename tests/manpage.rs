//! msys-milter.toml(5) and the configuration code agree: every key of every table the
//! code reads is in the page, in its table's section, and the page names no key the
//! code does not know.

use std::collections::BTreeSet;

fn page() -> String {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/packaging/man/msys-milter.toml.5"
    ))
    .unwrap()
}

/// (section heading, key) pairs of the page.
fn page_keys() -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    let mut section = String::new();
    let mut after_tp = false;
    for line in page().lines() {
        if let Some(h) = line.strip_prefix(".SS ") {
            section = h.trim().to_owned();
        } else if after_tp
            && let Some((key, _)) = line.strip_prefix("\\fB").and_then(|r| r.split_once("\\fR"))
        {
            // A key is the bold word that starts a tagged paragraph.
            out.insert((section.clone(), key.to_owned()));
        }
        after_tp = line == ".TP";
    }
    out
}

/// (table, key) pairs of the code: the public fields of the configuration structs.
fn code_keys() -> BTreeSet<(String, String)> {
    let source = ["mod.rs", "api.rs"]
        .map(|f| {
            std::fs::read_to_string(format!("{}/src/config/{f}", env!("CARGO_MANIFEST_DIR")))
                .unwrap()
        })
        .join("\n");
    let table = |s: &str| -> Option<&str> {
        Some(match s {
            "Config" => "Top level",
            "Envelope" => "[envelope]",
            "Reinject" => "[reinject]",
            "Tracking" => "[tracking]",
            "Http" => "[http]",
            "Store" => "[store]",
            "Events" => "[events]",
            "Feedback" => "[feedback]",
            "Webhook" => "[[webhook]]",
            "SendingDomain" => "[[sending_domain]]",
            "IpPool" => "[[ip_pool]]",
            "DkimKey" => "[[dkim_key]]",
            "Api" => "[api]",
            "ApiKey" => "[[api_key]]",
            _ => return None,
        })
    };
    let mut out = BTreeSet::new();
    let mut current: Option<&str> = None;
    let mut skip_next = false;
    for line in source.lines() {
        if let Some(name) = line
            .strip_prefix("pub struct ")
            .and_then(|r| r.split_whitespace().next())
        {
            current = table(name);
        } else if line == "}" {
            current = None;
        } else if line.contains("#[serde(skip)]") {
            skip_next = true;
        } else if let (Some(t), Some(field)) = (current, line.strip_prefix("    pub ")) {
            let name = field.split(':').next().unwrap().trim().to_owned();
            // Tables are sections of their own.
            let nested = [
                "envelope",
                "reinject",
                "tracking",
                "http",
                "store",
                "events",
                "feedback",
                "webhooks",
                "sending_domains",
                "ip_pools",
                "dkim_keys",
                "api",
                "api_keys",
            ];
            if !(skip_next || t == "Top level" && nested.contains(&name.as_str())) {
                out.insert((t.to_owned(), name));
            }
            skip_next = false;
        }
    }
    out
}

#[test]
fn the_manual_page_and_the_code_name_the_same_keys() {
    let page = page_keys();
    let code = code_keys();
    assert!(code.len() > 40, "{code:?}");
    let missing: Vec<_> = code.difference(&page).collect();
    let unknown: Vec<_> = page.difference(&code).collect();
    assert!(
        missing.is_empty(),
        "keys the code reads but msys-milter.toml(5) does not document: {missing:?}"
    );
    assert!(
        unknown.is_empty(),
        "keys msys-milter.toml(5) documents but the code does not read: {unknown:?}"
    );
}

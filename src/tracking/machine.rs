//! Requests that are not a person opening or clicking: privacy proxies that fetch every
//! image (Apple Mail Privacy Protection, Gmail's and Yahoo's image proxies) and security
//! scanners that follow every link. Events from them are flagged `machine_open`. The one
//! list to keep up to date.

/// User-agent fragments (compared case-insensitively).
const MACHINE_AGENTS: &[&str] = &[
    "googleimageproxy", // Gmail image proxy
    "yahoomailproxy",   // Yahoo Mail image proxy
    "ymailproxy",
    "barracuda",   // Barracuda link protection
    "proofpoint",  // Proofpoint URL defense
    "mimecast",    // Mimecast URL protect
    "safelinks",   // Microsoft Defender Safe Links
    "bingpreview", // Microsoft link preview
    "msnbot",
    "symantec", // Symantec / Broadcom email security
    "trendmicro",
    "fortiguard",
    "cisco", // Cisco Secure Email (IronPort)
    "ironport",
    "sophos",
    "zscaler",
    "python-requests", // scripted fetches
    "curl/",
    "wget/",
    "go-http-client",
    "headlesschrome",
    "bot",
    "spider",
    "crawler",
];

/// Apple Mail Privacy Protection prefetches with a bare WebKit string (macOS version
/// 10_15 or 10_15_7, no `Version/` or `Safari/` part, nothing after the KHTML comment),
/// so it is matched by its shape, not as a fragment. Apple Mail itself sends the same
/// string, but with MPP on (the default) its images come through the proxy anyway.
fn is_apple_mpp(agent: &str) -> bool {
    agent.starts_with("mozilla/5.0 (macintosh; intel mac os x 10_15")
        && agent.ends_with(") applewebkit/605.1.15 (khtml, like gecko)")
}

/// Is a request with this User-Agent a machine rather than a person?
pub fn is_machine(user_agent: Option<&str>) -> bool {
    match user_agent.map(str::trim) {
        None | Some("") => true,
        Some(agent) => {
            let agent = agent.to_ascii_lowercase();
            is_apple_mpp(&agent) || MACHINE_AGENTS.iter().any(|m| agent.contains(m))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::is_machine;

    #[test]
    fn people_and_machines() {
        for human in [
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36",
            "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148",
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 Safari/605.1.15",
        ] {
            assert!(!is_machine(Some(human)), "{human}");
        }
        for machine in [
            "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)",
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15) AppleWebKit/605.1.15 (KHTML, like Gecko)",
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko)",
            "YahooMailProxy; https://help.yahoo.com/kb/yahoo-mail-proxy-SLN28749.html",
            "Mozilla/5.0 (compatible; Proofpoint URL Defense)",
            "Barracuda Sentinel (EE)",
            "curl/8.5.0",
        ] {
            assert!(is_machine(Some(machine)), "{machine}");
        }
        assert!(is_machine(None));
    }
}

//! Where a batch goes: a webhook (HTTP POST of the JSON array, SparkPost's headers) or
//! the JSONL file (one item a line).

use std::path::PathBuf;
use std::time::Duration;

/// SparkPost's timeout for a webhook POST.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// How a webhook authenticates us.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Auth {
    None,
    /// `user:password`
    Basic(String),
    Bearer(String),
}

/// A batch's destination.
#[derive(Clone, Debug)]
pub enum Target {
    Webhook {
        url: String,
        auth: Auth,
        client: reqwest::Client,
        /// Extra headers on every POST (a webhook's `custom_headers`).
        headers: Vec<(String, String)>,
    },
    Jsonl(PathBuf),
}

impl Target {
    pub fn webhook(url: &str, auth: Auth) -> Result<Target, reqwest::Error> {
        Target::webhook_within(url, auth, None)
    }

    /// A webhook that, with `reach`, posts only to the addresses `reach` permits, checked
    /// as its name resolves at each connection, and follows no redirect (a webhook made
    /// through the API: its target is a caller's say, not the administrator's).
    pub fn webhook_within(
        url: &str,
        auth: Auth,
        reach: Option<std::sync::Arc<crate::netguard::Reach>>,
    ) -> Result<Target, reqwest::Error> {
        let mut builder = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .connect_timeout(TIMEOUT)
            .user_agent(concat!("msys-milter/", env!("CARGO_PKG_VERSION")));
        if let Some(reach) = reach {
            builder = builder
                .dns_resolver(std::sync::Arc::new(crate::netguard::GuardedResolver(reach)))
                .redirect(reqwest::redirect::Policy::none());
        }
        let client = builder.build()?;
        Ok(Target::Webhook {
            url: url.to_owned(),
            auth,
            client,
            headers: Vec::new(),
        })
    }

    /// The same target sending `extra` headers too.
    pub fn with_headers(mut self, extra: Vec<(String, String)>) -> Target {
        if let Target::Webhook { headers, .. } = &mut self {
            *headers = extra;
        }
        self
    }

    /// POST `body` as a batch is posted (headers, auth); the answer unread.
    async fn send(&self, batch_id: &str, body: String) -> Result<reqwest::Response, String> {
        let Target::Webhook {
            url,
            auth,
            client,
            headers,
        } = self
        else {
            return Err("not a webhook".into());
        };
        let mut request = client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("X-MessageSystems-Batch-ID", batch_id)
            .body(body);
        for (name, value) in headers {
            request = request.header(name.as_str(), value.as_str());
        }
        request = match auth {
            Auth::None => request,
            Auth::Basic(pair) => {
                let (user, password) = pair.split_once(':').unwrap_or((pair, ""));
                request.basic_auth(user, Some(password))
            }
            Auth::Bearer(token) => request.bearer_auth(token),
        };
        request.send().await.map_err(describe)
    }

    /// POST `body` as a batch would be (the REST API's `validate` and its test at
    /// creation): the answer's status, headers and (first 4 KB of) body.
    pub async fn post(
        &self,
        batch_id: &str,
        body: String,
    ) -> Result<(u16, Vec<(String, String)>, String), String> {
        let response = self.send(batch_id, body).await?;
        let status = response.status().as_u16();
        let answer_headers = response
            .headers()
            .iter()
            .filter_map(|(n, v)| Some((n.to_string(), v.to_str().ok()?.to_owned())))
            .collect();
        let text = response.text().await.unwrap_or_default();
        Ok((status, answer_headers, text.chars().take(4096).collect()))
    }

    /// Hand over one batch; `Err` carries what to show in `webhooks status`.
    pub async fn deliver(&self, batch_id: &str, items: &[String]) -> Result<(), String> {
        match self {
            Target::Webhook { .. } => {
                let body = super::batch_body(items.iter().map(String::as_str));
                // Only the status matters here; the answer's body is not read.
                let status = self.send(batch_id, body).await?.status();
                if status.is_success() {
                    Ok(())
                } else {
                    Err(format!("HTTP {status}"))
                }
            }
            Target::Jsonl(path) => {
                let file = path.clone();
                let items = items.to_vec();
                // Opened per batch, so a file moved away by logrotate is simply made anew.
                tokio::task::spawn_blocking(move || append_lines(&file, &items))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| format!("{}: {e}", path.display()))
            }
        }
    }
}

fn append_lines(path: &std::path::Path, items: &[String]) -> std::io::Result<()> {
    use std::io::Write as _;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    let mut out = std::io::BufWriter::new(file);
    for item in items {
        out.write_all(item.as_bytes())?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    out.get_ref().sync_data()
}

/// A short error text without the URL's credentials.
fn describe(e: reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    let e = e.without_url();
    let mut text = format!("{kind}: {e}");
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}

//! The REST API's test pieces: a throwaway CA and a server certificate for 127.0.0.1
//! (made with openssl(1)), `[api]` and `[[api_key]]` configuration, and a client.

use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;

/// A CA and a certificate it signed for `127.0.0.1` and `localhost`.
pub struct TestCa {
    pub dir: tempfile::TempDir,
}

impl TestCa {
    pub fn new() -> TestCa {
        let dir = tempfile::tempdir().unwrap();
        make_certificates(dir.path());
        TestCa { dir }
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    pub fn cert(&self) -> PathBuf {
        self.dir.path().join("server.pem")
    }

    pub fn key(&self) -> PathBuf {
        self.dir.path().join("server.key")
    }
}

/// In `dir`: `ca.pem` (a throwaway CA, with `ca.key`), and `server.pem` and
/// `server.key`, a server certificate it signed for `127.0.0.1` and `localhost`.
pub fn make_certificates(dir: &std::path::Path) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl(1) is needed to make the test certificates");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let (days, rsa) = (["-days", "2"], ["-newkey", "rsa:2048", "-nodes"]);
    run(&[
        &["req", "-x509"][..],
        &rsa,
        &["-keyout", "ca.key", "-out", "ca.pem"],
        &days,
        &["-subj", "/CN=msys-milter test CA"],
    ]
    .concat());
    run(&[
        &["req"][..],
        &rsa,
        &[
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    ]
    .concat());
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
         keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(&[
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
        ][..],
        &[
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-extfile",
            "san.ext",
        ],
        &days,
    ]
    .concat());
}

/// `[api]` on `port`: HTTPS with `ca`'s certificate, or plain HTTP.
pub fn api_section(port: u16, tls: Option<&TestCa>, extra: &str) -> String {
    match tls {
        Some(ca) => format!(
            "[api]\nlisten = \"127.0.0.1:{port}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n{extra}\n",
            ca.cert().display(),
            ca.key().display()
        ),
        None => format!("[api]\nlisten = \"127.0.0.1:{port}\"\ntls = false\n{extra}\n"),
    }
}

/// An `[[api_key]]` table for `key`.
pub fn key_table(name: &str, key: &str, grants: &[&str], subaccount: Option<u64>) -> String {
    use sha2::Digest as _;
    let hash: String = sha2::Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let grants: Vec<String> = grants.iter().map(|g| format!("\"{g}\"")).collect();
    let sub = subaccount
        .map(|s| format!("subaccount = {s}\n"))
        .unwrap_or_default();
    format!(
        "[[api_key]]\nname = \"{name}\"\nkey_sha256 = \"{hash}\"\ngrants = [{}]\n{sub}\n",
        grants.join(", ")
    )
}

/// Every grant.
pub const ALL_GRANTS: [&str; 6] = [
    "suppression_lists/manage",
    "suppression_lists/view",
    "message_events/view",
    "metrics/view",
    "webhooks/view",
    "webhooks/modify",
];

/// A client of the API at `base` (`http://127.0.0.1:PORT`).
pub struct Api {
    pub base: String,
    client: reqwest::Client,
    runtime: tokio::runtime::Runtime,
}

/// An answer: status and body (JSON when it is; else the text as a JSON string).
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
}

impl Answer {
    /// The first error's message.
    pub fn message(&self) -> &str {
        self.body["errors"][0]["message"].as_str().unwrap_or("")
    }
}

impl Api {
    pub fn new(base: &str, ca: Option<&TestCa>) -> Api {
        let mut builder = reqwest::Client::builder();
        if let Some(ca) = ca {
            let pem = std::fs::read(ca.ca()).unwrap();
            builder = builder
                .tls_built_in_root_certs(false)
                .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap());
        }
        Api {
            base: base.trim_end_matches('/').to_owned(),
            client: builder.build().unwrap(),
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
        }
    }

    /// Wait until the API answers (any status).
    pub fn wait(&self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while self.try_call("GET", "/api/v1/", None, &[], None).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "the API did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    pub fn call(&self, method: &str, path: &str, key: Option<&str>, body: Option<&str>) -> Answer {
        self.try_call(method, path, key, &[], body.map(|b| b.as_bytes().to_vec()))
            .unwrap()
    }

    pub fn try_call(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> Result<Answer, reqwest::Error> {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        if let Some(key) = key {
            request = request.header("Authorization", key);
        }
        for (n, v) in headers {
            request = request.header(*n, *v);
        }
        if let Some(body) = body {
            request = request
                .header("Content-Type", "application/json")
                .body(body);
        }
        self.runtime.block_on(async {
            let response = request.send().await?;
            let status = response.status().as_u16();
            let text = response.text().await?;
            let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
            Ok(Answer { status, body })
        })
    }
}

/// Where `tests/sparkpost/setup.sh` installed the official clients.
fn clients_dir() -> PathBuf {
    let dir = std::env::var("MSYS_TEST_SPARKPOST_CLIENTS").map_or_else(
        |_| {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/target/sparkpost-clients"
            ))
        },
        PathBuf::from,
    );
    assert!(
        dir.join("venv/bin/python").exists() && dir.join("node/node_modules/sparkpost").exists(),
        "{} lacks the SparkPost clients: run `bash scripts/test.sh`, which installs them \
         (tests/sparkpost/setup.sh target/sparkpost-clients)",
        dir.display()
    );
    dir
}

fn client_output(mut command: Command) -> Value {
    let out = command.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).unwrap_or_else(|_| {
        panic!(
            "the client printed no JSON: {text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// python-sparkpost's `tests/sparkpost/client.py COMMAND ARG` against `127.0.0.1:port`.
pub fn python(port: u16, ca: &TestCa, key: &str, command: &str, arg: Option<&str>) -> Value {
    let dir = clients_dir();
    let mut c = Command::new(dir.join("venv/bin/python"));
    c.arg(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/sparkpost/client.py"
    ))
    .arg(command)
    .args(arg)
    .env("MSYS_API", format!("127.0.0.1:{port}"))
    .env("MSYS_KEY", key)
    .env("REQUESTS_CA_BUNDLE", ca.ca());
    client_output(c)
}

/// node-sparkpost's `tests/sparkpost/client.js COMMAND JSON` against `127.0.0.1:port`.
pub fn node(port: u16, ca: &TestCa, key: &str, command: &str, arg: Option<Value>) -> Value {
    let dir = clients_dir();
    let mut c = Command::new("node");
    c.arg(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/sparkpost/client.js"
    ))
    .arg(command)
    .args(arg.map(|a| a.to_string()))
    .env("MSYS_ORIGIN", format!("https://127.0.0.1:{port}"))
    .env("MSYS_KEY", key)
    .env("NODE_EXTRA_CA_CERTS", ca.ca())
    .env("NODE_PATH", dir.join("node/node_modules"));
    client_output(c)
}

//! Cost of personalising one copy: rewriting a 100 KB HTML message with 100 links for
//! one recipient (click and open tracking, signed tokens), as the milter does for every
//! to/cc/bcc copy. Prints a Markdown table for BENCHMARKS.md.

use msys_milter::api::copies::HeaderField;
use msys_milter::mime::{BodyOptions, Prepared};
use msys_milter::tracking::{Keys, Links};
use std::time::Instant;

fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let f: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / 100.0
}

fn main() {
    let mut html =
        String::from("<html><head><style>td { color: #333 }</style></head><body><table>");
    for i in 0..100 {
        html.push_str(&format!(
            "<tr><td><a href=\"https://shop.example.com/product/{i}?utm_source=mail&amp;utm_campaign=bench\">Product {i}</a></td><td>{}</td></tr>\n",
            "Lorem ipsum dolor sit amet, consectetur adipiscing elit. ".repeat(16)
        ));
    }
    html.push_str("</table></body></html>");
    let qp = html.replace('=', "=3D");
    let body = format!(
        "--b\r\nContent-Type: text/plain\r\n\r\nplain\r\n--b\r\nContent-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n{}\r\n--b--\r\n",
        qp.replace('\n', "\r\n")
    );
    let headers = vec![HeaderField::new(
        "Content-Type",
        "multipart/alternative; boundary=b",
    )];
    let keys = Keys::new(&["bench-secret-0123456789"]).unwrap();
    let opts = BodyOptions {
        open_tracking: true,
        click_tracking: true,
        inline_css: false,
    };
    let n = 300;
    let (cpu0, t0) = (cpu_seconds(), Instant::now());
    // Parsed once per message, as the milter does; rewritten for every copy.
    let prepared = Prepared::new(&headers, body.as_bytes()).unwrap();
    let mut total = 0;
    for i in 0..n {
        let rcpt = format!("rcpt{i}@example.com");
        let links = Links {
            base_url: "https://track.example.com",
            keys: &keys,
            transmission_id: 42,
            recipient: &rcpt,
            expires: u32::MAX,
        };
        total += prepared.rewrite(&opts, &links).unwrap().unwrap().len();
    }
    let wall = t0.elapsed().as_secs_f64() / n as f64 * 1000.0;
    let cpu = (cpu_seconds() - cpu0) / n as f64 * 1000.0;
    println!("### Rewriting one personalised copy\n");
    println!(
        "A {} KB multipart/alternative message whose quoted-printable HTML part has 100 links; click and open tracking for one recipient (lol_html, 101 signed tokens, re-encode; the message is parsed once for all copies). {n} copies, one thread.\n",
        body.len() / 1024
    );
    println!("| per copy | wall ms | CPU ms | output KB |");
    println!("|---|---|---|---|");
    println!("| mean | {wall:.2} | {cpu:.2} | {} |", total / n / 1024);
    let t0 = Instant::now();
    for _ in 0..50 {
        Prepared::new(&headers, body.as_bytes()).unwrap();
    }
    println!(
        "\nParsing and decoding the message, once per message: {:.2} ms.",
        t0.elapsed().as_secs_f64() / 50.0 * 1000.0
    );
}

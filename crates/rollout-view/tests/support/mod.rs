//! Headless Chromium for the viewer's tests (Debian's `chromium` package; `scripts/setup`
//! installs it). Pages are loaded with `--dump-dom` after a virtual-time budget, so what is
//! asserted is the DOM after the app's scripts ran. A missing browser fails the test loudly.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// The browser binary: `$CHROMIUM`, else `chromium`, else `chromium-browser` on PATH.
pub fn chromium() -> PathBuf {
    if let Some(p) = std::env::var_os("CHROMIUM").filter(|p| !p.is_empty()) {
        return p.into();
    }
    for name in ["chromium", "chromium-browser"] {
        if Command::new(name)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
        {
            return name.into();
        }
    }
    panic!(
        "the viewer's browser tests need headless Chromium: install Debian's `chromium` package \
         (scripts/setup does) or set CHROMIUM to the browser binary"
    );
}

fn run(args: &[String]) -> std::process::Output {
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new("timeout")
        .arg("90")
        .arg(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--hide-scrollbars",
            "--virtual-time-budget=20000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .output()
        .expect("starting chromium");
    assert!(
        out.status.success(),
        "chromium {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The DOM of `url` after its scripts ran.
pub fn dump_dom(url: &str) -> String {
    let out = run(&["--dump-dom".into(), url.into()]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Save a PNG screenshot of `url` at `path`.
pub fn screenshot(url: &str, path: &Path, width: u32, height: u32) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    run(&[
        format!("--window-size={width},{height}"),
        format!("--screenshot={}", path.display()),
        url.into(),
    ]);
    let len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    assert!(len > 1000, "screenshot {} is empty", path.display());
}

/// Where tests keep what they produce for people to look at: `target/test-artifacts/<name>`.
pub fn artifacts_dir(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("../test-artifacts")
        .join(name);
    std::fs::create_dir_all(&d).unwrap();
    d
}

struct Node {
    label: String,
    children: Vec<Node>,
}

const VOID: &[&str] = &[
    "area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track",
    "wbr",
];

fn attr(attrs: &str, name: &str) -> Option<String> {
    let mut rest = attrs;
    while let Some(i) = rest.find(name) {
        let before_ok = i == 0 || rest.as_bytes()[i - 1].is_ascii_whitespace();
        let after = &rest[i + name.len()..];
        if before_ok && after.starts_with("=\"") {
            let v = &after[2..];
            return v.find('"').map(|e| v[..e].to_string());
        }
        rest = &rest[i + name.len()..];
    }
    None
}

/// A normalised outline of an HTML document: one line per element (`tag#id.class`), text and
/// other attributes dropped, scripts and styles skipped, runs of identical siblings collapsed
/// into `… ×N`.
pub fn outline(html: &str) -> String {
    let mut stack = vec![Node {
        label: "#document".into(),
        children: vec![],
    }];
    let mut i = 0;
    let b = html.as_bytes();
    while let Some(off) = html[i..].find('<') {
        let s = i + off;
        if html[s..].starts_with("<!--") {
            i = html[s..].find("-->").map_or(html.len(), |e| s + e + 3);
            continue;
        }
        if html[s..].starts_with("<!") {
            i = html[s..].find('>').map_or(html.len(), |e| s + e + 1);
            continue;
        }
        // Find the tag end, honouring quotes.
        let mut j = s + 1;
        let mut quote = None;
        while j < b.len() {
            let c = b[j];
            match quote {
                Some(q) if c == q => quote = None,
                Some(_) => {}
                None if c == b'"' || c == b'\'' => quote = Some(c),
                None if c == b'>' => break,
                None => {}
            }
            j += 1;
        }
        let tag = &html[s + 1..j.min(html.len())];
        i = (j + 1).min(html.len());
        if let Some(name) = tag.strip_prefix('/') {
            let name = name.trim().to_ascii_lowercase();
            if let Some(pos) = stack
                .iter()
                .rposition(|n| n.label.split(['#', '.']).next() == Some(&name))
            {
                while stack.len() > pos {
                    let n = stack.pop().unwrap();
                    stack.last_mut().unwrap().children.push(n);
                }
            }
            continue;
        }
        let name: String = tag
            .chars()
            .take_while(|c| !c.is_whitespace() && *c != '/')
            .collect::<String>()
            .to_ascii_lowercase();
        if name.is_empty() {
            continue;
        }
        let attrs = &tag[name.len()..];
        let mut label = name.clone();
        if let Some(id) = attr(attrs, "id") {
            label.push('#');
            label.push_str(&id);
        }
        if let Some(class) = attr(attrs, "class") {
            let mut cs: Vec<&str> = class.split_whitespace().collect();
            cs.sort();
            for c in cs {
                label.push('.');
                label.push_str(c);
            }
        }
        if name == "script" || name == "style" {
            let close = format!("</{name}");
            i = html[i..].find(&close).map_or(html.len(), |e| i + e);
            stack.last_mut().unwrap().children.push(Node {
                label,
                children: vec![],
            });
            continue;
        }
        let node = Node {
            label,
            children: vec![],
        };
        if VOID.contains(&name.as_str()) || tag.ends_with('/') {
            stack.last_mut().unwrap().children.push(node);
        } else {
            stack.push(node);
        }
    }
    while stack.len() > 1 {
        let n = stack.pop().unwrap();
        stack.last_mut().unwrap().children.push(n);
    }
    let mut out = String::new();
    for c in &stack[0].children {
        render(c, 0, &mut out);
    }
    out
}

fn render(n: &Node, depth: usize, out: &mut String) {
    out.push_str(&"  ".repeat(depth));
    out.push_str(&n.label);
    out.push('\n');
    let rendered: Vec<String> = n
        .children
        .iter()
        .map(|c| {
            let mut s = String::new();
            render(c, depth + 1, &mut s);
            s
        })
        .collect();
    let mut k = 0;
    while k < rendered.len() {
        let mut run = 1;
        while k + run < rendered.len() && rendered[k + run] == rendered[k] {
            run += 1;
        }
        if run > 1 {
            let mut lines = rendered[k].lines();
            let first = lines.next().unwrap_or("");
            out.push_str(&format!("{first} ×{run}\n"));
            for l in lines {
                out.push_str(l);
                out.push('\n');
            }
        } else {
            out.push_str(&rendered[k]);
        }
        k += run;
    }
}

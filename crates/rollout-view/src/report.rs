//! `rollout report`: one self-contained HTML file (inline CSS, JS and data; no network
//! reference) holding the job page and its trials. Trial details (logs, trajectory) are
//! embedded within a size budget, errored trials first; the rest show their table row only.

use crate::detail::{self, Caps};
use crate::index::Job;
use crate::{assets, model};
use std::io::Write;
use std::path::Path;

/// Bytes of embedded trial details at most (the whole report stays well under 10 MB for a
/// 10,000-trial job).
pub const DETAIL_BUDGET: usize = 4 * 1024 * 1024;

/// What was written.
#[derive(Debug, Clone, Copy)]
pub struct Written {
    pub trials: usize,
    pub detailed: usize,
    pub bytes: usize,
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The report's HTML for the job directory `dir`.
pub fn render(dir: &Path) -> (String, Written) {
    let id = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "job".into());
    let view = Job::new(id, dir.to_path_buf()).view();
    let mut order: Vec<&model::TrialRow> = view.trials.iter().collect();
    order.sort_by_key(|t| (t.error_kind.is_none(), t.name.clone()));
    // The data is assembled as JSON text: each part is serialized once (a detail's size is
    // known from its text), never built as a `Value` tree first.
    let mut details = String::from("{");
    let mut n_details = 0usize;
    let mut used = 0usize;
    for t in order {
        if used >= DETAIL_BUDGET {
            break;
        }
        if let Some(d) = detail::trial_detail(dir, &t.name, Caps::REPORT) {
            let Ok(text) = serde_json::to_string(&d) else {
                continue;
            };
            if used + text.len() > DETAIL_BUDGET {
                continue;
            }
            used += text.len();
            if n_details > 0 {
                details.push(',');
            }
            details.push_str(&serde_json::to_string(&t.name).unwrap_or_default());
            details.push(':');
            details.push_str(&text);
            n_details += 1;
        }
    }
    details.push('}');
    let written = Written {
        trials: view.trials.len(),
        detailed: n_details,
        bytes: 0,
    };
    let job = serde_json::to_string(&*view).unwrap_or_else(|_| "null".into());
    let data = format!(
        "{{\"mode\":\"report\",\"generated_at\":{},\"job\":{job},\"details\":{details}}}",
        serde_json::to_string(&chrono::Utc::now().to_rfc3339()).unwrap_or_default()
    );
    // `<` only occurs inside JSON strings, where \u003c means the same; this keeps `</script>`
    // and `<!--` in the data from ending the element.
    let data = data.replace('<', "\\u003c");
    let html = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} · rollout report</title>\n<style>\n{}</style></head>\n\
         <body><div id=\"app\"><p>This report needs JavaScript to show the job.</p></div>\n\
         <script type=\"application/json\" id=\"rollout-data\">{}</script>\n\
         <script>\n{}</script></body></html>\n",
        html_escape(&view.summary.name),
        assets::STYLE_CSS,
        data,
        assets::APP_JS.replace("</", "<\\/"),
    );
    let bytes = html.len();
    (html, Written { bytes, ..written })
}

/// Render and write atomically to `out`.
pub fn write_report(dir: &Path, out: &Path) -> std::io::Result<Written> {
    let (html, w) = render(dir);
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile_in(parent)?;
    tmp.1.write_all(html.as_bytes())?;
    tmp.1.sync_all()?;
    std::fs::rename(&tmp.0, out)?;
    Ok(w)
}

fn tempfile_in(dir: &Path) -> std::io::Result<(std::path::PathBuf, std::fs::File)> {
    let path = dir.join(format!(".rollout-report-{}.tmp", std::process::id()));
    let f = std::fs::File::create(&path)?;
    Ok((path, f))
}

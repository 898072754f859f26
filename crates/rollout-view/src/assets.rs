//! The web assets, embedded in the binary with `include_str!`: the viewer works offline, from
//! any directory, with nothing to install or fetch, and needs no extra crate (the three files
//! are small enough that compressing or hashing them would not pay off).

/// The app: routing, API reads and rendering.
pub const APP_JS: &str = include_str!("../assets/app.js");
/// The styles.
pub const STYLE_CSS: &str = include_str!("../assets/style.css");

/// The page every route of the server answers with; the app renders the route.
pub fn page_shell() -> &'static str {
    concat!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">",
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">",
        "<title>rollout view</title><link rel=\"stylesheet\" href=\"/assets/style.css\"></head>\n",
        "<body><div id=\"app\"><p>Loading…</p></div>",
        "<script src=\"/assets/app.js\"></script></body></html>\n"
    )
}

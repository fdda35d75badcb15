//! The demo's HTML report renders in headless Chromium (installed by scripts/setup.sh): its charts are
//! drawn, no JavaScript error is raised, the screenshot is not blank.
//!
//! The report is rendered from a copy with a probe script at the very top that records `console.error`,
//! uncaught exceptions and failed resource loads into the DOM (and the console log), so the DOM dump tells.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Chromium: `TIDEMARK_CHROMIUM`, else the first of the names distributions use found on PATH (the names
/// scripts/setup.sh checks), else Debian's location.
fn chromium() -> PathBuf {
    if let Some(bin) = std::env::var_os("TIDEMARK_CHROMIUM") {
        return PathBuf::from(bin);
    }
    let paths: Vec<PathBuf> = std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default();
    let found = ["chromium", "chromium-browser", "google-chrome-stable", "google-chrome"]
        .iter()
        .find_map(|name| paths.iter().map(|p| p.join(name)).find(|p| p.exists()));
    let bin = found.unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    assert!(bin.exists(), "chromium not found (run scripts/setup.sh, or set TIDEMARK_CHROMIUM)");
    bin
}

const PROBE: &str = r#"<script>
(function () {
  var errors = [];
  function note(kind, text) {
    errors.push(kind + ": " + text);
    console.log("TIDEMARK-PROBE-ERROR " + kind + ": " + text);
    var el = document.getElementById("tidemark-probe");
    if (el) { el.textContent = errors.join("\n"); }
  }
  var original = console.error;
  console.error = function () { note("console.error", Array.prototype.join.call(arguments, " ")); original.apply(console, arguments); };
  window.addEventListener("error", function (e) {
    if (e.target && e.target !== window && (e.target.src || e.target.href)) { note("resource", e.target.src || e.target.href); }
    else { note("exception", e.message); }
  }, true);
  window.addEventListener("unhandledrejection", function (e) { note("rejection", String(e.reason)); });
  document.addEventListener("DOMContentLoaded", function () {
    var el = document.createElement("pre");
    el.id = "tidemark-probe";
    el.style.display = "none";
    el.textContent = errors.join("\n");
    document.body.appendChild(el);
  });
})();
</script>"#;

/// Runs chromium headless on `page`; returns (stdout, stderr).
fn chromium_run(page: &Path, profile: &Path, extra: &[&str]) -> (String, String) {
    let url = format!("file://{}", page.display());
    let out = Command::new(chromium())
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--enable-logging=stderr", "--v=0"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(["--window-size=1280,2400", "--virtual-time-budget=5000"])
        .args(extra)
        .arg(&url)
        .output()
        .expect("chromium runs");
    assert!(out.status.success(), "chromium failed: {}", String::from_utf8_lossy(&out.stderr));
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Elements `<tag ...>` in `dom` (start tags only), as their full text up to the matching close (or the
/// start tag alone for void / self-closed elements).
fn elements<'a>(dom: &'a str, tag: &str) -> Vec<&'a str> {
    let open = format!("<{tag}");
    let close = format!("</{tag}>");
    let mut out = Vec::new();
    let mut rest = dom;
    while let Some(i) = rest.find(&open) {
        let after = &rest[i + open.len()..];
        if !after.starts_with([' ', '>', '/', '\n']) {
            rest = after;
            continue;
        }
        let end =
            after.find(&close).map_or_else(|| after.find('>').map_or(after.len(), |e| e + 1), |e| e + close.len());
        out.push(&rest[i..i + open.len() + end]);
        rest = &after[end..];
    }
    out
}

fn attr<'a>(element: &'a str, name: &str) -> Option<&'a str> {
    let start_tag = &element[..element.find('>').unwrap_or(element.len())];
    let key = format!(" {name}=\"");
    let i = start_tag.find(&key)? + key.len();
    let j = start_tag[i..].find('"')?;
    Some(&start_tag[i..i + j])
}

#[test]
fn demo_report_renders_its_charts_without_errors() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("demo");
    let demo = Command::new(env!("CARGO_BIN_EXE_tidemark"))
        .args(["demo", "--events", "20000", "--seed", "11", "--json", "--out"])
        .arg(&out_dir)
        .output()
        .expect("the demo runs");
    assert!(demo.status.success(), "demo failed:\n{}", String::from_utf8_lossy(&demo.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&demo.stdout).expect("--json prints JSON");
    let report = PathBuf::from(summary["report_html"].as_str().expect("report_html"));
    let html = std::fs::read_to_string(&report).expect("report.html exists");

    // A probed copy: the probe runs before anything else in the page.
    let probed = dir.path().join("probed.html");
    let at = html.find("<head>").map_or(0, |i| i + "<head>".len());
    std::fs::write(&probed, format!("{}{PROBE}{}", &html[..at], &html[at..])).unwrap();

    let profile = dir.path().join("chromium-profile");
    let png_path = dir.path().join("report.png");
    let (_, shot_log) = chromium_run(&probed, &profile, &[&format!("--screenshot={}", png_path.display())]);
    let (dom, dom_log) = chromium_run(&probed, &profile, &["--dump-dom"]);

    // No JavaScript errors: neither the probe nor Chromium's own log saw one.
    for log in [&shot_log, &dom_log] {
        let bad: Vec<&str> =
            log.lines().filter(|l| l.contains("TIDEMARK-PROBE-ERROR") || l.contains("Uncaught")).collect();
        assert!(bad.is_empty(), "JavaScript errors:\n{}", bad.join("\n"));
    }
    let probe = elements(&dom, "pre").into_iter().find(|e| e.contains("id=\"tidemark-probe\""));
    let probe = probe.expect("the probe ran (the DOM dump is of the rendered page)");
    assert!(probe.ends_with("></pre>"), "the probe recorded errors: {probe}");

    // Charts: svg elements with a size and drawn marks, or canvases with a size.
    let svgs = elements(&dom, "svg");
    let mut drawn = 0;
    for svg in &svgs {
        let paths = elements(svg, "path").into_iter().filter(|p| attr(p, "d").is_some_and(|d| d.len() > 3)).count();
        let rects = elements(svg, "rect")
            .into_iter()
            .filter(|r| attr(r, "width").and_then(|w| w.parse::<f64>().ok()).is_some_and(|w| w > 0.0))
            .count();
        let lines = elements(svg, "polyline").len() + elements(svg, "line").len() + elements(svg, "circle").len();
        if paths + rects + lines >= 3 {
            drawn += 1;
        }
    }
    let canvases = elements(&dom, "canvas")
        .into_iter()
        .filter(|c| attr(c, "width").and_then(|w| w.parse::<u32>().ok()).is_some_and(|w| w > 0))
        .count();
    assert!(
        drawn + canvases >= 2,
        "expected at least two drawn charts; {} svg ({drawn} drawn), {canvases} canvas",
        svgs.len()
    );

    // The screenshot is an image with content, not a blank page.
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&png_path).expect("screenshot")));
    let mut reader = decoder.read_info().expect("a PNG");
    let mut buf = vec![0; reader.output_buffer_size().expect("size")];
    let info = reader.next_frame(&mut buf).expect("a frame");
    assert!(info.width >= 1000 && info.height >= 1000, "{}x{}", info.width, info.height);
    let channels = info.color_type.samples();
    let pixels = &buf[..info.buffer_size()];
    let mut colours = std::collections::HashSet::new();
    let (mut inked, mut total) = (0u64, 0u64);
    let background = &pixels[..channels];
    for px in pixels.chunks_exact(channels) {
        total += 1;
        if px != background {
            inked += 1;
        }
        if colours.len() < 1000 {
            colours.insert(px.to_vec());
        }
    }
    assert!(colours.len() >= 8, "only {} distinct colours: a blank page", colours.len());
    assert!(inked * 100 >= total, "only {inked} of {total} pixels differ from the background");
}

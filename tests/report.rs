//! The memory report: a self-contained page whose figure really renders —
//! checked in headless Chromium — and whose structure is checked without one.

use headroom::alloc::Tag;
use headroom::plan::{plan, PlanReport};
use headroom::report::{self, MAX_POINTS};
use headroom::train::TrainConfig;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CHROMIUM: &str = "/usr/bin/chromium";

fn planned() -> PlanReport {
    plan(&TrainConfig { budget: Some(16 << 20), progress: false, ..Default::default() }).unwrap()
}

/// Tags that hold bytes at some moment of the reported step.
fn tags_with_bytes(p: &PlanReport) -> Vec<&'static str> {
    let (points, _, _) = report::timeline(&p.step);
    Tag::ALL.iter().filter(|&&t| points.iter().any(|q| q.by_tag[t as usize] > 0)).map(|t| t.name()).collect()
}

fn temp(name: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    std::env::temp_dir().join(format!("headroom-report-{}-{nanos}-{name}", std::process::id()))
}

/// `/usr/bin/chromium`, installed from Debian's package when it is missing
/// and the test runs as root. Fails — never skips — when it cannot.
fn chromium() -> PathBuf {
    if Path::new(CHROMIUM).exists() {
        return CHROMIUM.into();
    }
    assert!(
        unsafe { libc::geteuid() } == 0,
        "the report test needs {CHROMIUM}; install it (apt-get install -y --no-install-recommends chromium) or run the test as root so it installs it"
    );
    // One installer at a time, whatever else runs tests now.
    let lock = std::fs::File::create("/tmp/headroom-chromium-install.lock").expect("creating the install lock file");
    let fd = std::os::fd::AsRawFd::as_raw_fd(&lock);
    assert_eq!(unsafe { libc::flock(fd, libc::LOCK_EX) }, 0, "locking /tmp/headroom-chromium-install.lock");
    if !Path::new(CHROMIUM).exists() {
        println!("installing Debian's chromium package for the report test (apt-get install -y --no-install-recommends chromium)");
        let apt = |args: &[&str]| {
            Command::new("apt-get").args(args).env("DEBIAN_FRONTEND", "noninteractive").stdin(Stdio::null()).output()
        };
        let install = ["install", "-y", "--no-install-recommends", "chromium"];
        let mut out = apt(&install);
        if !out.as_ref().is_ok_and(|o| o.status.success()) {
            // Stale package lists are the usual reason: refresh them once.
            let _ = apt(&["update"]);
            out = apt(&install);
        }
        match out {
            Ok(o) if o.status.success() && Path::new(CHROMIUM).exists() => {}
            Ok(o) => panic!(
                "installing chromium failed ({}); install it by hand: apt-get install -y --no-install-recommends chromium\n{}",
                o.status,
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => panic!("could not run apt-get to install chromium ({e}); install {CHROMIUM} by hand"),
        }
    }
    CHROMIUM.into()
}

/// Load `page` in headless Chromium and return the DOM after its scripts ran.
fn dump_dom(page: &Path) -> String {
    let browser = chromium();
    let profile = temp("profile");
    let child = Command::new(&browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("--dump-dom")
        .arg(format!("file://{}", page.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("could not start {}: {e}", browser.display()));
    let pid = child.id() as libc::pid_t;
    // Read the output on another thread so a full pipe cannot stall it; give up after two minutes.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(Duration::from_secs(120)) {
        Ok(out) => out.expect("waiting for chromium"),
        Err(_) => {
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("chromium did not finish loading the page in 120 s");
        }
    };
    let _ = std::fs::remove_dir_all(&profile);
    assert!(out.status.success(), "chromium failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("the DOM is UTF-8")
}

fn render_check(dom: &str) -> serde_json::Value {
    let start = dom.find(r#"<pre id="render-check">"#).expect("the dumped DOM has the render check") + 23;
    let end = start + dom[start..].find("</pre>").expect("the render check is closed");
    let text = dom[start..end].replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&");
    assert!(!text.is_empty(), "the page's script did not run: the render check is empty");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("render check `{text}` is not JSON: {e}"))
}

#[test]
fn the_figure_renders_in_headless_chromium() {
    let p = planned();
    let page = temp("plan.html");
    std::fs::write(&page, report::for_plan(&p, &p.step)).unwrap();
    let t = Instant::now();
    let dom = dump_dom(&page);
    println!("chromium loaded and dumped the page in {:.2} s", t.elapsed().as_secs_f64());
    let _ = std::fs::remove_file(&page);
    let check = render_check(&dom);
    let tags = tags_with_bytes(&p);
    assert!(tags.contains(&"activation") && tags.contains(&"parameter"), "{tags:?}");
    for tag in tags {
        let b = &check["series"][tag];
        let area = b["width"].as_f64().unwrap_or(0.0) * b["height"].as_f64().unwrap_or(0.0);
        assert!(area > 0.0, "series-{tag} has no area on the page: {b}");
    }
    let budget = &check["budget"];
    assert!(budget["width"].as_f64().unwrap_or(0.0) > 800.0, "the budget line is missing or short: {budget}");
    let peak = &check["peak"];
    assert!(peak["width"].as_f64().unwrap_or(0.0) > 0.0 && peak["height"].as_f64().unwrap_or(0.0) > 0.0, "{peak}");
    assert_eq!(check["peak_label"].as_str(), Some(p.peak_op), "the marked peak is not the op plan reports");
}

#[test]
fn the_page_is_self_contained_and_names_every_part() {
    let p = planned();
    let html = report::for_plan(&p, &p.step);
    for id in tags_with_bytes(&p) {
        assert!(html.contains(&format!(r#"<path id="series-{id}" class="series""#)), "no series for {id}");
        assert!(html.contains(&format!(r#"<tr id="row-{id}">"#)), "no table row for {id}");
    }
    assert!(html.contains(r#"id="budget-line""#) && html.contains(r#"id="reserved-line""#));
    assert!(html.contains(&format!(r#"<tspan id="peak-label" font-weight="bold">{}</tspan>"#, p.peak_op)));
    assert!(html.contains(&format!("{} × {}", p.micro_batch, p.accumulation)));
    // Nothing to fetch: no links, sources, imports or URLs but the SVG namespace.
    for bad in ["src=", "href=", "<link", "@import", "url("] {
        assert!(!html.contains(bad), "the page refers to an external asset ({bad})");
    }
    assert_eq!(html.matches("http").count(), 1, "only the SVG namespace is a URL");
    // The table's bytes at the peak add up to the step's peak.
    let (points, peak, op) = report::timeline(&p.step);
    assert_eq!(op, p.peak_op);
    assert_eq!(points[peak].total(), p.predicted_peak_allocated_bytes);
    // No budget, no budget line.
    let no_budget = plan(&TrainConfig { progress: false, ..Default::default() }).unwrap();
    assert!(!report::for_plan(&no_budget, &no_budget.step).contains(r#"id="budget-line""#));
}

#[test]
fn a_long_step_is_downsampled_and_keeps_its_peak() {
    let big = plan(&TrainConfig {
        model: headroom::model::ModelConfig::digits(256, 24, 512),
        batch: 16,
        progress: false,
        ..Default::default()
    })
    .unwrap();
    let (points, peak, _) = report::timeline(&big.step);
    assert!(points.len() > MAX_POINTS, "{} points: not a long step", points.len());
    let html = report::for_plan(&big, &big.step);
    assert!(html.len() < 600_000, "the page is {} bytes", html.len());
    let d = html.split(r#"id="series-activation""#).nth(1).unwrap().split("d=\"").nth(1).unwrap();
    let vertices = d[..d.find('"').unwrap()].matches(['M', 'L']).count();
    assert!(vertices <= 2 * MAX_POINTS, "{vertices} vertices");
    assert!(html.contains(&format!("The peak: <b>{}</b>", headroom::alloc::fmt_bytes(points[peak].total()))));
}

#[test]
fn train_and_plan_write_their_reports() {
    let bin = env!("CARGO_BIN_EXE_headroom");
    let (t, p) = (temp("train.html"), temp("plan.html"));
    let small = ["--steps", "3", "--dim", "16", "--layers", "1", "--batch", "8"];
    let run = |cmd: &str, out: &Path| {
        let o = Command::new(bin).arg(cmd).args(small).arg("--report").arg(out).output().unwrap();
        assert!(o.status.success(), "{cmd}: {}", String::from_utf8_lossy(&o.stderr));
        let html = std::fs::read_to_string(out).unwrap();
        let _ = std::fs::remove_file(out);
        html
    };
    let (trained, planned) = (run("train", &t), run("plan", &p));
    for html in [&trained, &planned] {
        assert!(html.contains(r#"id="series-activation""#) && html.contains(r#"id="peak-marker""#));
    }
    assert!(trained.contains("headroom train") && planned.contains("headroom plan"));
    // The recorded step of the real run is the planned step: the same timeline.
    let svg = |h: &str| h[h.find("<svg").unwrap()..h.find("</svg>").unwrap()].to_string();
    assert_eq!(svg(&trained), svg(&planned));
}

//! The operator reference in `docs/` against the code: every config key the parser accepts
//! is in `docs/config.md` and nothing else is, each default written there is the one the
//! edge takes, and every metric, admin request and command is in its page.

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use nakama_edge_config::Config;
use support::edge_bin;

fn doc(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../docs")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn source(name: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src").join(name)).unwrap()
}

/// The first cell of every table row whose first cell is a `code` span, with the row's cells.
fn rows(page: &str) -> Vec<Vec<String>> {
    page.lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .map(|l| {
            format!("`{l}")
                .split(" | ")
                .map(|c| c.trim().trim_end_matches('|').trim().to_string())
                .collect()
        })
        .collect()
}

fn unquote(cell: &str) -> Option<&str> {
    cell.strip_prefix('`')?.strip_suffix('`')
}

/// The keys the parser accepts in `text`'s table (its "unknown field" error names them all).
fn accepted(text: &str) -> Vec<String> {
    let err = Config::parse(text, "probe").expect_err("an unknown key is an error");
    let message = err.to_string();
    let (_, expected) = message
        .split_once("expected")
        .unwrap_or_else(|| panic!("{message}"));
    expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

const ARRAYS: [&str; 3] = ["nodes", "discover", "shards"];

#[test]
fn config_md_names_every_key_the_parser_accepts_and_no_other() {
    let mut keys = BTreeSet::new();
    for section in accepted("zzz_unknown = 1\n") {
        let header = if ARRAYS.contains(&section.as_str()) {
            format!("[[{section}]]")
        } else {
            format!("[{section}]")
        };
        for key in accepted(&format!("{header}\nzzz_unknown = 1\n")) {
            keys.insert(format!("{section}.{key}"));
        }
    }
    assert!(keys.len() > 60, "{keys:?}");
    let documented: BTreeSet<String> = rows(&doc("config.md"))
        .iter()
        .filter_map(|r| unquote(&r[0]).map(str::to_string))
        .collect();
    let missing: Vec<_> = keys.difference(&documented).collect();
    let unknown: Vec<_> = documented.difference(&keys).collect();
    assert!(
        missing.is_empty(),
        "keys not in docs/config.md: {missing:?}"
    );
    assert!(
        unknown.is_empty(),
        "docs/config.md names keys the parser refuses: {unknown:?}"
    );
}

/// A config with every section that has a required key, as the base the defaults are
/// written into.
fn with(extra: &[(&str, &str)]) -> String {
    let mut sections: Vec<(&str, Vec<String>)> = vec![
        ("server", vec![]),
        ("listeners", vec![]),
        (
            "acme",
            vec![
                "domains = [\"play.example.com\"]".into(),
                "directory = \"https://acme.example.com/directory\"".into(),
                "state_dir = \"/tmp/nakama-edge-reference-acme\"".into(),
            ],
        ),
        ("health_check", vec![]),
        ("routing", vec![]),
        ("firewall", vec![]),
        ("rate_limit", vec![]),
        ("timeouts", vec![]),
        ("log", vec![]),
        (
            "nodes",
            vec!["name = \"a\"".into(), "address = \"127.0.0.1:7350\"".into()],
        ),
        (
            "discover",
            vec![
                "name = \"d\"".into(),
                "dns = \"nakama.example.com\"".into(),
                "port = 7350".into(),
            ],
        ),
    ];
    for (key, value) in extra {
        let (section, key) = key.split_once('.').unwrap();
        let lines = &mut sections
            .iter_mut()
            .find(|(s, _)| *s == section)
            .unwrap_or_else(|| panic!("no base for [{section}]"))
            .1;
        lines.push(format!("{key} = {value}"));
    }
    sections
        .iter()
        .map(|(s, lines)| {
            let header = if ARRAYS.contains(s) {
                format!("[[{s}]]")
            } else {
                format!("[{s}]")
            };
            format!("{header}\n{}\n", lines.join("\n"))
        })
        .collect()
}

#[test]
fn each_default_in_config_md_is_the_one_the_edge_takes() {
    let base = Config::parse(&with(&[]), "base").unwrap();
    let mut checked = 0;
    for row in rows(&doc("config.md")) {
        let (Some(key), Some(default)) = (unquote(&row[0]), unquote(&row[1])) else {
            continue;
        };
        let section = key.split_once('.').unwrap().0;
        if ["tls", "nakama", "cluster"].contains(&section) {
            continue;
        }
        let text = with(&[(key, default)]);
        let written = Config::parse(&text, key)
            .unwrap_or_else(|e| panic!("{key} = {default} is refused: {e}"));
        assert_eq!(written, base, "{key}: the default is not {default}");
        checked += 1;
    }
    assert!(checked > 40, "only {checked} defaults checked");
}

#[test]
fn metrics_md_names_every_metric_the_edge_registers() {
    let registered: BTreeSet<String> = source("ops/metrics.rs")
        .split('"')
        .filter(|s| {
            s.starts_with("nakama_edge_") && s.bytes().all(|b| b == b'_' || b.is_ascii_lowercase())
        })
        .map(str::to_string)
        .collect();
    assert!(registered.len() > 25, "{registered:?}");
    let documented: BTreeSet<String> = rows(&doc("metrics.md"))
        .iter()
        .filter_map(|r| unquote(&r[0]).map(str::to_string))
        .collect();
    assert_eq!(registered, documented);
}

#[test]
fn admin_api_md_names_every_request_the_admin_api_answers() {
    let page = doc("admin-api.md");
    let admin = source("ops/admin.rs");
    let mut paths = 0;
    for part in admin.split("=> ").filter(|p| p.contains("if get")) {
        if let Some(path) = part.rsplit('"').nth(1).filter(|p| p.starts_with('/')) {
            assert!(page.contains(&format!("`GET {path}`")), "GET {path}");
            paths += 1;
        }
    }
    assert!(paths >= 5, "{paths} GET paths found in admin.rs");
    for action in ["drain", "undrain"] {
        assert!(admin.contains(&format!("\"{action}\" =>")));
        assert!(page.contains(&format!("`POST /nodes/{{name}}/{action}`")));
    }
}

#[test]
fn cli_md_names_every_command() {
    let help = Command::new(edge_bin()).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout).to_string();
    let commands: Vec<&str> = help
        .split("Commands:")
        .nth(1)
        .unwrap()
        .split("Options:")
        .next()
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .collect();
    assert!(commands.len() >= 5, "{help}");
    let page = doc("cli.md");
    for c in commands {
        assert!(
            page.contains(&format!("`nakama-edge {c}")),
            "{c} is not in docs/cli.md"
        );
    }
}

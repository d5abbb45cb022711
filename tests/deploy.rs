//! deploy/ artifacts, each checked by the tool its users run:
//!
//! - `deploy/systemd/portcullis.service`: `systemd-analyze verify` and
//!   `systemd-analyze security --offline` (Debian `systemd`);
//! - `deploy/kubernetes/*.yaml`: the Kubernetes JSON schemas, offline, with
//!   `kubernetes-validate --strict` (PyPI `kubernetes-validate`; the
//!   ServiceMonitor is a CRD it has no schema for, so it is checked here
//!   structurally instead), plus the ConfigMap's config loading with
//!   `portcullis check` and its checksum annotation being current;
//! - `deploy/prometheus/`: `promtool check rules`, `promtool test rules`,
//!   `promtool check config` (Debian `prometheus`);
//! - `deploy/prometheus/grafana-dashboard.json`: valid JSON whose every query
//!   names a SPEC metric and no other `portcullis_*` name (pure Rust), and
//!   whose queries parse as PromQL (promtool).
//!
//! A missing tool fails the test when `CI=true` and skips it (with a printed
//! reason) otherwise. The container image is not built: no container engine
//! runs here (deploy/container/README.md).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;
use tools::{find_tool, unavailable, Scratch};

mod tools;

const CMD_TIMEOUT: Duration = Duration::from_secs(120);

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn deploy(rel: &str) -> PathBuf {
    root().join("deploy").join(rel)
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(deploy(rel)).unwrap_or_else(|e| panic!("deploy/{rel}: {e}"))
}

fn tool(name: &str, package: &str) -> Option<PathBuf> {
    let t = find_tool(name);
    if t.is_none() {
        unavailable(&format!("`{name}` is not installed ({package})"));
    }
    t
}

/// Runs a command, killing it after [`CMD_TIMEOUT`].
fn run(cmd: &mut Command) -> Output {
    tools::run(cmd, None, CMD_TIMEOUT)
}

fn assert_ok(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what} failed ({})\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn example_config() -> portcullis::config::Config {
    portcullis::config::Config::load_from(
        Some(&deploy("portcullis.toml")),
        Some(Default::default()),
    )
    .expect("deploy/portcullis.toml loads")
}

/// `Key=value` lines of a unit file (comments dropped), in order.
fn unit_settings(unit: &str) -> Vec<(String, String)> {
    unit.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.starts_with(';'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

// ---------------------------------------------------------------------------
// systemd
// ---------------------------------------------------------------------------

#[test]
fn systemd_unit_is_hardened_and_outlasts_the_drain() {
    let unit = read("systemd/portcullis.service");
    let s = unit_settings(&unit);
    let get = |k: &str| -> Vec<&str> {
        s.iter()
            .filter(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    for (k, v) in [
        ("DynamicUser", "yes"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("AmbientCapabilities", "CAP_NET_BIND_SERVICE"),
        ("CapabilityBoundingSet", "CAP_NET_BIND_SERVICE"),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("SystemCallFilter", "@system-service"),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
    ] {
        assert_eq!(get(k).first().copied(), Some(v), "{k}");
    }
    assert!(
        get("ProcSubset").is_empty(),
        "ProcSubset=pid hides /proc/stat, which process_start_time_seconds needs"
    );
    let pre = get("ExecStartPre");
    assert!(
        pre.iter()
            .any(|c| c.contains("portcullis -c ") && c.ends_with(" check")),
        "ExecStartPre runs `portcullis -c ... check`: {pre:?}"
    );
    let stop: u64 = get("TimeoutStopSec")
        .first()
        .expect("TimeoutStopSec")
        .trim_end_matches('s')
        .parse()
        .expect("TimeoutStopSec in seconds");
    let grace = example_config().shutdown_grace.as_secs();
    assert!(
        stop > grace + 2,
        "TimeoutStopSec={stop} must exceed shutdown_grace_s={grace} plus the final cut"
    );
}

#[test]
fn systemd_unit_passes_systemd_analyze_verify_and_security() {
    let Some(sa) = tool("systemd-analyze", "apt-get install systemd") else {
        return;
    };
    let scratch = Scratch::new("deploy");
    // verify insists that the Exec* binaries exist: point them at the one just built.
    let unit = read("systemd/portcullis.service").replace(
        "/usr/local/bin/portcullis",
        env!("CARGO_BIN_EXE_portcullis"),
    );
    let file = scratch.write("portcullis.service", &unit);
    let out = run(Command::new(&sa).args(["verify", "--man=no"]).arg(&file));
    assert_ok("systemd-analyze verify", &out);
    // verify only warns about unknown keys and bad values: treat any remark
    // about the unit as a failure.
    let stderr = String::from_utf8_lossy(&out.stderr);
    let remarks: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("portcullis"))
        .collect();
    assert!(
        remarks.is_empty(),
        "systemd-analyze verify remarks:\n{stderr}"
    );
    // The exposure score of the hardening (shown as 0.0-10.0, 0 = locked
    // down; --threshold takes it times ten). This unit scores 1.6 with
    // systemd 252; fail if it regresses past 2.5.
    let out = run(Command::new(&sa)
        .args(["security", "--offline=yes", "--threshold=25", "--no-pager"])
        .arg(&file));
    assert_ok("systemd-analyze security --offline --threshold=25", &out);
}

#[test]
fn example_config_passes_portcullis_check() {
    let out = run(Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .arg("-c")
        .arg(deploy("portcullis.toml"))
        .arg("check"));
    assert_ok("portcullis -c deploy/portcullis.toml check", &out);
    let out = run(Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .arg("-c")
        .arg(deploy("container/portcullis.toml"))
        .arg("check"));
    assert_ok("portcullis -c deploy/container/portcullis.toml check", &out);
}

#[test]
fn containerfile_builds_static_onto_distroless_nonroot() {
    let cf = read("container/Containerfile");
    assert!(cf.contains("unknown-linux-musl"), "static musl build");
    assert!(cf.contains("cargo build --release --locked"));
    assert!(cf.contains("FROM gcr.io/distroless/static-debian12:nonroot"));
    assert!(cf.contains("USER 65532:65532"));
    // Every COPY source taken from the build context exists.
    for line in cf
        .lines()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from"))
    {
        let parts: Vec<&str> = line.split_whitespace().collect();
        for src in &parts[1..parts.len() - 1] {
            assert!(root().join(src).exists(), "COPY source {src} missing");
        }
    }
}

// ---------------------------------------------------------------------------
// Kubernetes
// ---------------------------------------------------------------------------

/// `python3` that can import kubernetes_validate (and so yaml), or `None` after skip/fail.
fn python_with_kubernetes_validate() -> Option<PathBuf> {
    let py = tool("python3", "apt-get install python3")?;
    let out = run(Command::new(&py).args(["-c", "import kubernetes_validate, yaml"]));
    if !out.status.success() {
        unavailable(
            "the Python package kubernetes-validate is not installed (pip install kubernetes-validate)",
        );
        return None;
    }
    Some(py)
}

fn manifests() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(deploy("kubernetes"))
        .expect("deploy/kubernetes")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

/// Every YAML document of every manifest, as JSON (through PyYAML).
fn manifest_docs(py: &Path) -> Vec<Value> {
    let script = "import json, sys, yaml\n\
                  docs = [d for f in sys.argv[1:] for d in yaml.safe_load_all(open(f)) if d is not None]\n\
                  print(json.dumps(docs))";
    let out = run(Command::new(py).arg("-c").arg(script).args(manifests()));
    assert_ok("reading the manifests with PyYAML", &out);
    match serde_json::from_slice(&out.stdout).expect("JSON from PyYAML") {
        Value::Array(docs) => docs,
        other => panic!("expected a list, got {other}"),
    }
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

#[test]
fn kubernetes_manifests_validate_against_the_schemas_offline() {
    let Some(py) = python_with_kubernetes_validate() else {
        return;
    };
    // The ServiceMonitor is a CRD: kubernetes-validate has no schema for it
    // (it only warns), so it is left out here and checked structurally below.
    let files: Vec<PathBuf> = manifests()
        .into_iter()
        .filter(|p| !p.ends_with("servicemonitor.yaml"))
        .collect();
    assert!(files.len() >= 5, "{files:?}");
    // 1.30 is the oldest release with the preStop sleep action; the other run
    // uses the newest schemas the package ships.
    for version in [Some("1.30.0"), None] {
        let mut cmd = Command::new(&py);
        cmd.args(["-m", "kubernetes_validate", "--strict"]);
        if let Some(v) = version {
            cmd.args(["--kubernetes-version", v]);
        }
        let out = run(cmd.args(&files));
        assert_ok(
            &format!("kubernetes-validate --strict (version {version:?})"),
            &out,
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            !stdout.contains("WARN") && !stdout.contains("ERROR"),
            "{stdout}"
        );
    }
}

#[test]
fn kubernetes_deployment_is_highly_available_and_locked_down() {
    let Some(py) = python_with_kubernetes_validate() else {
        return;
    };
    let docs = manifest_docs(&py);
    let dep = find(&docs, "Deployment", "portcullis");
    let spec = &dep["spec"];
    let pod = &spec["template"]["spec"];
    let c = &pod["containers"][0];
    assert!(spec["replicas"].as_u64().unwrap() >= 2);
    assert_eq!(spec["strategy"]["rollingUpdate"]["maxUnavailable"], 0);
    assert!(
        pod["affinity"]["podAntiAffinity"].is_object(),
        "pod anti-affinity"
    );
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["readinessProbe"]["httpGet"]["port"], "admin");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["livenessProbe"]["httpGet"]["port"], "admin");
    assert!(pod["securityContext"]["runAsNonRoot"].as_bool().unwrap());
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(c["securityContext"]["capabilities"]["drop"][0], "ALL");
    for k in ["requests", "limits"] {
        assert!(c["resources"][k]["memory"].is_string(), "resources.{k}");
    }

    // The ConfigMap's own config and policy load, and the pods outlive the drain.
    let cm = find(&docs, "ConfigMap", "portcullis-config");
    let scratch = Scratch::new("deploy");
    for (name, text) in cm["data"].as_object().expect("data") {
        scratch.write(name, text.as_str().expect("string data"));
    }
    let config_file = scratch.0.join("portcullis.toml");
    let out = run(Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .arg("-c")
        .arg(&config_file)
        .arg("check"));
    assert_ok("portcullis check on the ConfigMap's config", &out);
    let config =
        portcullis::config::Config::load_from(Some(&config_file), Some(Default::default()))
            .expect("ConfigMap config");
    assert_eq!(
        config.admin_listen.map(|a| a.port()),
        Some(9128),
        "the probes' admin port"
    );
    let pre_stop = c["lifecycle"]["preStop"]["sleep"]["seconds"]
        .as_u64()
        .unwrap_or(0);
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(
        grace > pre_stop + config.shutdown_grace.as_secs(),
        "terminationGracePeriodSeconds {grace} must exceed preStop {pre_stop} + shutdown_grace_s"
    );
    let ports: BTreeSet<u64> = c["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["containerPort"].as_u64().unwrap())
        .collect();
    for l in config
        .proxy_listen
        .iter()
        .chain(config.admin_listen.iter())
        .chain(config.inbound.iter().map(|i| &i.listen))
    {
        assert!(
            ports.contains(&u64::from(l.port())),
            "listener {l} not a containerPort"
        );
    }

    // Support objects.
    let pdb = find(&docs, "PodDisruptionBudget", "portcullis");
    assert_eq!(pdb["spec"]["maxUnavailable"], 1);
    let np = find(&docs, "NetworkPolicy", "portcullis");
    assert_eq!(
        np["spec"]["policyTypes"],
        serde_json::json!(["Ingress", "Egress"])
    );
    // ServiceMonitor (a CRD, not schema-checked): it selects the metrics
    // Service and scrapes a port that Service names.
    let sm = find(&docs, "ServiceMonitor", "portcullis");
    assert_eq!(sm["apiVersion"], "monitoring.coreos.com/v1");
    let selector = sm["spec"]["selector"]["matchLabels"].as_object().unwrap();
    let svc = docs
        .iter()
        .find(|d| {
            d["kind"] == "Service"
                && selector
                    .iter()
                    .all(|(k, v)| &d["metadata"]["labels"][k] == v)
        })
        .expect("a Service matching the ServiceMonitor's selector");
    let port = sm["spec"]["endpoints"][0]["port"].as_str().unwrap();
    assert!(
        svc["spec"]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == port),
        "the metrics Service has no port named {port}"
    );
    assert_eq!(sm["spec"]["endpoints"][0]["path"], "/metrics");
    let job_label = sm["spec"]["jobLabel"].as_str().unwrap();
    assert_eq!(
        svc["metadata"]["labels"][job_label], "portcullis",
        "alerts.yml expects job=\"portcullis\""
    );
}

#[test]
fn kubernetes_checksum_annotation_rolls_the_pods_on_a_config_change() {
    // Only the config rolls the pods; policy changes are reloaded in place
    // (policy_watch_s), so the checksum covers portcullis.toml alone.
    let Some(sha) = tool("sha256sum", "coreutils") else {
        return;
    };
    let Some(sh) = tool("sh", "dash") else { return };
    let out = run(Command::new(&sh)
        .arg(deploy("kubernetes/sync-config.sh"))
        .arg("--check"));
    assert_ok("deploy/kubernetes/sync-config.sh --check", &out);
    let out = run(Command::new(&sha).arg(deploy("kubernetes/portcullis.toml")));
    assert_ok("sha256sum", &out);
    let sum = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    assert!(
        read("kubernetes/deployment.yaml").contains(&format!("checksum/config: \"{sum}\"")),
        "the Deployment's checksum/config annotation is not the sha256 of portcullis.toml"
    );
}

// ---------------------------------------------------------------------------
// Prometheus and Grafana
// ---------------------------------------------------------------------------

#[test]
fn prometheus_rules_pass_promtool_and_their_unit_tests() {
    let Some(promtool) = tool("promtool", "apt-get install prometheus") else {
        return;
    };
    let dir = deploy("prometheus");
    for args in [
        &["check", "rules", "alerts.yml"][..],
        &["test", "rules", "tests.yml"],
        &["check", "config", "prometheus.yml"],
    ] {
        let out = run(Command::new(&promtool).current_dir(&dir).args(args));
        assert_ok(&format!("promtool {}", args.join(" ")), &out);
    }
    // Every alert has at least one unit test.
    let alerts = read("prometheus/alerts.yml");
    let tests = read("prometheus/tests.yml");
    let names: Vec<&str> = alerts
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert!(names.len() >= 7, "{names:?}");
    for n in names {
        assert!(
            tests.contains(&format!("alertname: {n}\n")),
            "alert {n} has no promtool test"
        );
    }
}

/// SPEC's metric table: name and whether it is a histogram.
const SPEC_METRICS: &[(&str, bool)] = &[
    ("portcullis_connections_total", false),
    ("portcullis_active_tunnels", false),
    ("portcullis_tunnel_bytes_total", false),
    ("portcullis_tunnel_duration_seconds", true),
    ("portcullis_dns_lookup_duration_seconds", true),
    ("portcullis_upstream_connect_duration_seconds", true),
    ("portcullis_policy_reloads_total", false),
    ("portcullis_policy_rules", false),
    ("portcullis_build_info", false),
];

/// When the shared SPEC is beside the repository, the table above must match it.
#[test]
fn spec_metric_list_matches_spec_md() {
    let spec = root().join("../shared/SPEC.md");
    let Ok(text) = std::fs::read_to_string(&spec) else {
        eprintln!(
            "note: {} not found; using the built-in copy of its metric table",
            spec.display()
        );
        return;
    };
    let table: BTreeSet<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("| `portcullis_"))
        .filter_map(|l| l.split('`').next())
        .map(|n| format!("portcullis_{n}"))
        .collect();
    let ours: BTreeSet<String> = SPEC_METRICS.iter().map(|(n, _)| n.to_string()).collect();
    assert_eq!(table, ours, "SPEC.md's metric table changed");
    for (name, histogram) in SPEC_METRICS {
        let row = text
            .lines()
            .find(|l| l.starts_with(&format!("| `{name}`")))
            .unwrap();
        assert_eq!(row.contains("| histogram |"), *histogram, "{row}");
    }
}

/// Metric-name tokens (`portcullis_*`, `process_*`) in a PromQL expression.
fn metric_tokens(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_string = false;
    let mut prev = ' ';
    for ch in expr.chars().chain(std::iter::once(' ')) {
        if ch == '"' && prev != '\\' {
            in_string = !in_string;
        }
        if !in_string && (ch.is_ascii_alphanumeric() || ch == '_' || ch == ':') {
            cur.push(ch);
        } else {
            if cur.starts_with("portcullis_") || cur.starts_with("process_") {
                out.push(cur.clone());
            }
            cur.clear();
        }
        prev = ch;
    }
    out
}

/// The SPEC metric a token refers to (histograms only with a series suffix).
fn spec_metric(token: &str) -> Option<&'static str> {
    SPEC_METRICS.iter().find_map(|(name, histogram)| {
        let ok = if *histogram {
            ["_bucket", "_sum", "_count"]
                .iter()
                .any(|s| token == format!("{name}{s}"))
        } else {
            token == *name
        };
        ok.then_some(*name)
    })
}

/// The `process_*` metrics this build exports.
fn process_metrics() -> BTreeSet<String> {
    let text = portcullis::metrics::Metrics::new().unwrap().render();
    text.lines()
        .filter(|l| l.starts_with("process_"))
        .filter_map(|l| l.split([' ', '{']).next())
        .map(str::to_owned)
        .collect()
}

fn collect_queries(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                match (k.as_str(), child) {
                    ("expr", Value::String(s)) => out.push(s.clone()),
                    // Templating variables of type "query" (label_values(...)).
                    ("query", Value::String(s)) if map.get("type") == Some(&"query".into()) => {
                        out.push(s.clone())
                    }
                    ("query", Value::Object(q)) => {
                        if let Some(Value::String(s)) = q.get("query") {
                            out.push(s.clone());
                        }
                    }
                    _ => collect_queries(child, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|i| collect_queries(i, out)),
        _ => {}
    }
}

fn dashboard() -> Value {
    serde_json::from_str(&read("prometheus/grafana-dashboard.json"))
        .expect("grafana-dashboard.json is valid JSON")
}

#[test]
fn grafana_dashboard_queries_name_spec_metrics_only() {
    let dash = dashboard();
    assert!(dash["title"].is_string() && dash["panels"].is_array());
    let mut queries = Vec::new();
    collect_queries(&dash, &mut queries);
    assert!(queries.len() >= 15, "{} queries", queries.len());
    let process = process_metrics();
    assert!(process.contains("process_open_fds"), "{process:?}");
    let mut charted = BTreeSet::new();
    for q in &queries {
        let tokens = metric_tokens(q);
        assert!(
            !tokens.is_empty(),
            "query names no portcullis_/process_ metric: {q}"
        );
        for t in tokens {
            if t.starts_with("portcullis_") {
                let name =
                    spec_metric(&t).unwrap_or_else(|| panic!("{t} is not a SPEC metric (in {q})"));
                charted.insert(name);
            } else {
                assert!(process.contains(&t), "{t} is not exported (in {q})");
            }
        }
    }
    // Every SPEC metric is on the dashboard.
    let all: BTreeSet<&str> = SPEC_METRICS.iter().map(|(n, _)| *n).collect();
    assert_eq!(charted, all, "metrics missing from the dashboard");

    // Panel ids are unique, and every query panel uses the datasource variable.
    let mut ids = BTreeSet::new();
    for p in dash["panels"].as_array().unwrap() {
        assert!(ids.insert(p["id"].as_u64().unwrap()), "duplicate panel id");
        if p["targets"].is_array() {
            assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
        }
    }
}

#[test]
fn alert_rules_name_spec_metrics_only() {
    let process = process_metrics();
    let text = read("prometheus/alerts.yml");
    let tokens = metric_tokens(&text.replace('"', " "));
    assert!(!tokens.is_empty());
    for t in tokens {
        if t.starts_with("portcullis_") {
            assert!(spec_metric(&t).is_some(), "{t} is not a SPEC metric");
        } else {
            assert!(process.contains(&t), "{t} is not exported");
        }
    }
}

#[test]
fn grafana_dashboard_queries_parse_as_promql() {
    let Some(promtool) = tool("promtool", "apt-get install prometheus") else {
        return;
    };
    let mut queries = Vec::new();
    collect_queries(&dashboard(), &mut queries);
    // Grafana's variables replaced by values, each query as a recording rule.
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, q) in queries.iter().enumerate() {
        let promql = q
            .replace("$__rate_interval", "5m")
            .replace("$instance", ".*")
            .replace("$job", "portcullis");
        if promql.starts_with("label_values(") {
            // Grafana's own function: check the selector inside it.
            let inner = promql
                .trim_start_matches("label_values(")
                .rsplit_once(',')
                .map(|(sel, _)| sel.to_owned())
                .unwrap_or_default();
            rules.push_str(&format!(
                "      - record: dashboard:query_{i}\n        expr: {}\n",
                serde_json::to_string(&inner).unwrap()
            ));
            continue;
        }
        rules.push_str(&format!(
            "      - record: dashboard:query_{i}\n        expr: {}\n",
            serde_json::to_string(&promql).unwrap()
        ));
    }
    let scratch = Scratch::new("deploy");
    let file = scratch.write("dashboard-rules.yml", &rules);
    let out = run(Command::new(&promtool).args(["check", "rules"]).arg(&file));
    assert!(
        out.status.success(),
        "promtool rejects a dashboard query:\n{}\n{}\n{rules}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

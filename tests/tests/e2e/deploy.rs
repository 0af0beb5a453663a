//! The deployment files checked by the tools made for them: `yamllint` and
//! `kubernetes-validate` (a current Kubernetes schema, offline) on the manifests,
//! `systemd-analyze verify` and `security` on the unit, a Containerfile lint, and the
//! Grafana dashboard's structure against the metrics the agent really exports.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn deploy() -> PathBuf {
    root().join("deploy")
}

/// Runs a tool; panics naming `cargo xtask setup` if it is missing.
fn tool(program: &str, args: &[&str]) -> std::process::Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("`{program}` could not run ({e}): run `cargo xtask setup`"))
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn manifests() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(deploy().join("kubernetes"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

#[test]
fn yaml_passes_yamllint() {
    let deploy = deploy();
    let out = tool(
        "yamllint",
        &[
            "-s",
            "-c",
            deploy.join(".yamllint.yaml").to_str().unwrap(),
            deploy.join("kubernetes").to_str().unwrap(),
            deploy.join("grafana/provisioning").to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "yamllint:\n{}", text(&out));
}

#[test]
fn manifests_validate_against_kubernetes_1_37_and_kustomize_lists_them() {
    let core: Vec<PathBuf> = manifests()
        .into_iter()
        .filter(|p| {
            let name = p.file_name().unwrap().to_str().unwrap();
            // Custom resources have no upstream schema: checked below.
            name != "kustomization.yaml" && name != "servicemonitor.yaml"
        })
        .collect();
    let mut args = vec!["-k", "1.37.0", "--strict"];
    args.extend(core.iter().map(|p| p.to_str().unwrap()));
    let out = tool("kubernetes-validate", &args);
    let report = text(&out);
    assert!(out.status.success(), "kubernetes-validate:\n{report}");
    assert_eq!(
        report.matches("passed for resource").count(),
        core.len(),
        "{report}"
    );

    let kustomization =
        std::fs::read_to_string(deploy().join("kubernetes/kustomization.yaml")).unwrap();
    let listed: BTreeSet<String> = kustomization
        .split("resources:\n")
        .nth(1)
        .unwrap()
        .lines()
        .map_while(|l| l.strip_prefix("  - "))
        .map(str::to_owned)
        .collect();
    let present: BTreeSet<String> = manifests()
        .iter()
        .map(|p| p.file_name().unwrap().to_str().unwrap().to_owned())
        .filter(|n| n != "kustomization.yaml")
        .collect();
    assert_eq!(listed, present, "the kustomization lists every manifest");

    let monitor = std::fs::read_to_string(deploy().join("kubernetes/servicemonitor.yaml")).unwrap();
    for needle in [
        "apiVersion: monitoring.coreos.com/v1",
        "kind: ServiceMonitor",
        "port: metrics",
        "path: /metrics",
    ] {
        assert!(monitor.contains(needle), "ServiceMonitor lacks {needle:?}");
    }
    let daemonset = std::fs::read_to_string(deploy().join("kubernetes/daemonset.yaml")).unwrap();
    assert!(daemonset.contains("privileged: false") && !daemonset.contains("privileged: true"));
    for needle in [
        "- BPF",
        "- PERFMON",
        "- NET_ADMIN",
        "drop: [\"ALL\"]",
        "path: /readyz",
        "path: /healthz",
        "hostNetwork: true",
        "automountServiceAccountToken: false",
        "/var/run/wireguard",
        "/sys/fs/bpf",
        "/var/lib/wgpulse",
        "secretName: wgpulse-secrets",
    ] {
        assert!(daemonset.contains(needle), "DaemonSet lacks {needle:?}");
    }
    let config = std::fs::read_to_string(deploy().join("kubernetes/configmap.yaml")).unwrap();
    assert!(
        !config.contains("whsec_") && !config.contains("Bearer"),
        "secrets belong in the Secret"
    );
}

#[test]
fn the_configmaps_config_is_valid_for_the_agent() {
    let manifest = std::fs::read_to_string(deploy().join("kubernetes/configmap.yaml")).unwrap();
    let body: String = manifest
        .split("config.toml: |\n")
        .nth(1)
        .unwrap()
        .lines()
        .map(|l| l.strip_prefix("    ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n");
    let config = wgpulse::config::Config::parse(&body, Path::new("configmap.yaml"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.metrics.listen, "0.0.0.0:9586");
    assert!(config.api.token_file.is_some());
}

#[test]
fn the_systemd_unit_verifies_and_scores_well() {
    let dir = tempfile::tempdir().unwrap();
    let unit = std::fs::read_to_string(deploy().join("systemd/wgpulse.service")).unwrap();
    // verify checks that ExecStart exists: point it at the built agent.
    let binary = root().join("target/debug/wgpulse");
    let unit = unit.replace("/usr/local/bin/wgpulse", binary.to_str().unwrap());
    let path = dir.path().join("wgpulse.service");
    std::fs::write(&path, &unit).unwrap();
    let out = tool("systemd-analyze", &["verify", path.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "systemd-analyze verify:\n{}",
        text(&out)
    );
    let out = tool(
        "systemd-analyze",
        &["security", "--offline=true", path.to_str().unwrap()],
    );
    let report = text(&out);
    let score: f64 = report
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for wgpulse.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no score in:\n{report}"));
    eprintln!("systemd-analyze security: {score}");
    assert!(
        score <= 3.0,
        "exposure {score} (lower is better):\n{report}"
    );
    assert!(
        unit.contains("ExecReload=/bin/kill -HUP $MAINPID"),
        "systemctl reload sends SIGHUP"
    );
    let sysusers = std::fs::read_to_string(deploy().join("systemd/wgpulse.sysusers.conf")).unwrap();
    assert!(sysusers.lines().any(|l| l.starts_with("u wgpulse ")));
}

#[test]
fn the_containerfile_follows_the_usual_lint_rules() {
    let file = std::fs::read_to_string(deploy().join("container/Containerfile")).unwrap();
    let instructions: Vec<&str> = file
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
        .filter(|l| !l.starts_with(' '))
        .collect();
    let froms: Vec<&&str> = instructions
        .iter()
        .filter(|l| l.starts_with("FROM "))
        .collect();
    assert!(froms.len() >= 2, "multi-stage build");
    assert!(froms[0].contains(" AS build"), "{froms:?}");
    for from in &froms {
        let image = from.split_whitespace().nth(1).unwrap();
        assert!(
            image.contains(':') && !image.ends_with(":latest"),
            "pinned tag: {image}"
        );
    }
    assert!(froms.last().unwrap().contains("slim") || froms.last().unwrap().contains("distroless"));
    assert!(!file.contains("\nADD "), "COPY, not ADD");
    for run in file.split("\nRUN ").skip(1) {
        let run = run.split("\n\n").next().unwrap();
        if run.contains("apt-get install") {
            assert!(
                run.contains("--no-install-recommends")
                    && run.contains("rm -rf /var/lib/apt/lists"),
                "{run}"
            );
            assert!(
                run.contains("apt-get update"),
                "update and install in one layer: {run}"
            );
        }
    }
    let entry = instructions
        .iter()
        .find(|l| l.starts_with("ENTRYPOINT"))
        .expect("ENTRYPOINT");
    assert!(entry.contains("[\""), "exec form: {entry}");
    assert!(file.contains("COPY --from=build /usr/local/bin/wgpulse"));
    assert!(
        file.contains("cargo build --release --locked -p wgpulse"),
        "builds the agent the way the repository does"
    );
    // The builder installs the toolchain the repository's own setup installs.
    let setup = std::fs::read_to_string(root().join("xtask/src/setup.rs")).unwrap();
    for package in ["llvm-22-dev", "libpolly-22-dev"] {
        assert!(
            setup.contains(package) && file.contains(package),
            "{package}"
        );
    }
    let pinned = setup
        .split("PINNED_NIGHTLY: &str = \"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap();
    assert!(file.contains(pinned), "the eBPF nightly {pinned}");
}

#[test]
fn the_dashboard_uses_only_metrics_the_agent_exports() {
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(deploy().join("grafana/wgpulse.json")).unwrap(),
    )
    .unwrap();
    assert!(dashboard["schemaVersion"].as_u64().unwrap() >= 36);
    assert!(dashboard["uid"].is_string());
    let variables = dashboard["templating"]["list"].as_array().unwrap();
    assert!(variables
        .iter()
        .any(|v| v["type"] == "datasource" && v["query"] == "prometheus"));
    // Every metric name the agent's sources define (metrics/, sink/stats.rs, ...).
    fn sources(dir: &Path, out: &mut String) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                sources(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push_str(&std::fs::read_to_string(&path).unwrap());
            }
        }
    }
    let mut source = String::new();
    sources(&root().join("agent/src"), &mut source);
    let mut used = BTreeSet::new();
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(panels.len() >= 10);
    for panel in panels {
        if panel["type"] == "row" {
            // A row only groups the panels below it: no query of its own.
            assert!(panel["title"].is_string());
            continue;
        }
        assert_eq!(
            panel["datasource"]["uid"], "${datasource}",
            "no hard-coded datasource"
        );
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if word.starts_with("wireguard_") || word.starts_with("wgpulse_") {
                    // A histogram's series are its name with a suffix.
                    let family = ["_bucket", "_sum", "_count"]
                        .iter()
                        .find_map(|suffix| word.strip_suffix(suffix))
                        .filter(|base| source.contains(&format!("\"{base}\"")))
                        .unwrap_or(word);
                    assert!(
                        source.contains(&format!("\"{family}\"")),
                        "{word} is not exported (panel {})",
                        panel["title"]
                    );
                    used.insert(word.to_owned());
                }
            }
        }
    }
    for needed in [
        "wireguard_peer_connected",
        "wireguard_peer_receive_bytes_total",
        "wireguard_peer_socket_drops_total",
        "wireguard_peer_handshakes_completed_total",
        "wgpulse_webhook_requests_total",
    ] {
        assert!(used.contains(needed), "the dashboard shows {needed}");
    }
    let provisioning =
        std::fs::read_to_string(deploy().join("grafana/provisioning/dashboards/wgpulse.yaml"))
            .unwrap();
    assert!(provisioning.contains("type: file"));
}

/// Runs `kubectl kustomize` on a directory (kubectl is on these machines; setup
/// installs Debian's kubernetes-client where it is not).
fn kustomize(dir: &Path) -> std::process::Output {
    tool("kubectl", &["kustomize", dir.to_str().unwrap()])
}

#[test]
fn no_secret_value_is_shipped_and_apply_fails_until_random_ones_are_made() {
    // No committed manifest holds a Secret, and nothing that looks like a value.
    for manifest in manifests() {
        let text = std::fs::read_to_string(&manifest).unwrap();
        assert!(
            !text.contains("kind: Secret")
                && !text.contains("stringData")
                && !text.contains("whsec_"),
            "{} ships a secret",
            manifest.display()
        );
    }
    let ignored = std::fs::read_to_string(root().join(".gitignore")).unwrap();
    assert!(ignored.lines().any(|l| l == "/deploy/kubernetes/secrets/"));

    // A copy of the manifests: without the generated files kustomize refuses.
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(deploy().join("kubernetes")).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
        }
    }
    let out = kustomize(dir.path());
    assert!(!out.status.success(), "apply -k must fail without secrets");
    assert!(text(&out).contains("secrets/api-token"), "{}", text(&out));

    // The one command makes random values the agent accepts, and never overwrites.
    let out = tool(
        "sh",
        &[dir.path().join("make-secrets.sh").to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", text(&out));
    let secrets = dir.path().join("secrets");
    let token = std::fs::read_to_string(secrets.join("api-token")).unwrap();
    assert_eq!(token.trim().len(), 64, "32 random bytes, hex");
    wgpulse::server::auth::Token::from_file("api.token_file", &secrets.join("api-token"))
        .expect("the agent accepts the generated token");
    let signing = std::fs::read_to_string(secrets.join("portal-signing-secret")).unwrap();
    wgpulse::sink::sign::Signer::new(&[signing.trim().to_owned()])
        .expect("the agent accepts the generated signing secret");
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(secrets.join("api-token"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "secret files are private: {mode:o}");
    let out = tool(
        "sh",
        &[dir.path().join("make-secrets.sh").to_str().unwrap()],
    );
    assert!(text(&out).contains("kept"), "{}", text(&out));
    assert_eq!(
        std::fs::read_to_string(secrets.join("api-token")).unwrap(),
        token
    );
    let second = tempfile::tempdir().unwrap();
    std::fs::copy(
        dir.path().join("make-secrets.sh"),
        second.path().join("make-secrets.sh"),
    )
    .unwrap();
    tool(
        "sh",
        &[second.path().join("make-secrets.sh").to_str().unwrap()],
    );
    assert_ne!(
        std::fs::read_to_string(second.path().join("secrets/api-token")).unwrap(),
        token,
        "every run makes new values"
    );

    // Now kustomize renders the Secret, and the DaemonSet mounts that one.
    let out = kustomize(dir.path());
    assert!(out.status.success(), "{}", text(&out));
    let rendered = String::from_utf8_lossy(&out.stdout).into_owned();
    let name = rendered
        .split("kind: Secret\nmetadata:\n  name: ")
        .nth(1)
        .and_then(|rest| rest.lines().next())
        .expect("a Secret in the output")
        .to_owned();
    assert!(name.starts_with("wgpulse-secrets"), "{name}");
    assert!(
        rendered.contains(&format!("secretName: {name}")),
        "{rendered}"
    );
}

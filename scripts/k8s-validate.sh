#!/usr/bin/env bash
# Validates the Kubernetes manifests in deploy/k8s (run by scripts/test.sh; alone it takes about
# a second once its package is installed):
#   1. every file kustomization.yaml lists, with kubernetes-validate --strict against the schema
#      of Kubernetes $K8S_VERSION (unknown fields, wrong types and kinds without a schema fail);
#   2. what no schema sees: kustomization.yaml lists every manifest in the folder; each Service
#      and PodDisruptionBudget selects a workload's pods and names a port they have; each
#      ConfigMap a workload reads exists; each environment name is a setting of the binary that
#      gets it (from the `env = "..."` of its settings, like data-streams/tests/compose.rs), or
#      a helper that a later entry of the same container expands as $(NAME) (POD_IP into the
#      advertised addresses); and each $(NAME) names a variable defined before it, since
#      Kubernetes leaves an unknown reference as literal text.
# kubernetes-validate comes from PyPI into the tests' virtual environment (target/test-venv).
# Any finding fails the script (exit 1).
set -euo pipefail
cd "$(dirname "$0")/.."

# The newest Kubernetes whose schema the pinned package ships (kubernetes-validate 1.N ships
# 1.28 to 1.N). Raise both together.
K8S_VERSION=1.37.0
PACKAGE='kubernetes-validate>=1.37,<2'
dir=deploy/k8s
venv=target/test-venv

has_schema() {
  "$venv/bin/python" -c 'import sys, kubernetes_validate.utils as u; sys.exit(sys.argv[1] not in u.all_versions())' \
    "$K8S_VERSION" 2>/dev/null
}
if [[ ! -x $venv/bin/kubernetes-validate ]] || ! has_schema; then
  echo "k8s-validate: installing $PACKAGE into $venv (pip)" >&2
  mkdir -p target
  [[ -x $venv/bin/python ]] || python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "$PACKAGE" \
    || { echo "k8s-validate: cannot install $PACKAGE from PyPI" >&2; exit 1; }
  has_schema || { echo "k8s-validate: the installed kubernetes-validate has no schema for Kubernetes $K8S_VERSION" >&2; exit 1; }
fi

# The files kustomization.yaml lists (the checks below hold the list against the folder).
mapfile -t files < <("$venv/bin/python" -c '
import sys, yaml
for name in yaml.safe_load(open(sys.argv[1]))["resources"]:
    print(name)' "$dir/kustomization.yaml")
[[ ${#files[@]} -gt 0 ]] || { echo "k8s-validate: $dir/kustomization.yaml lists no resources" >&2; exit 1; }

# kubernetes-validate exits 0 when it finds no schema for a kind (a typo in kind or apiVersion):
# it only prints WARN. So WARN and ERROR lines fail too.
status=0
out=$(cd "$dir" && "../../$venv/bin/kubernetes-validate" --strict -k "$K8S_VERSION" "${files[@]}" 2>&1) || status=$?
printf '%s\n' "$out"
if [[ $status -ne 0 ]] || grep -qE '^(WARN|ERROR|FATAL)' <<<"$out"; then
  echo "k8s-validate: FAILED: $dir does not validate against Kubernetes $K8S_VERSION (see above)" >&2
  exit 1
fi

"$venv/bin/python" - "$dir" <<'PY' || { echo "k8s-validate: FAILED: $dir is not consistent (see above)" >&2; exit 1; }
import pathlib, re, sys, yaml

folder = pathlib.Path(sys.argv[1])
errors = []
kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
listed = set(kustomization["resources"])
present = {p.name for p in folder.iterdir() if p.suffix in (".yaml", ".yml")} - {"kustomization.yaml"}
for name in sorted(present - listed):
    errors.append(f"{name} is not listed in kustomization.yaml")
for name in sorted(listed - present):
    errors.append(f"kustomization.yaml lists {name}, which is not in {folder}")

docs = [d for name in sorted(listed & present)
        for d in yaml.safe_load_all((folder / name).read_text()) if d]
by_kind = {}
for d in docs:
    by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d

# Settings per binary, from the sources: the `env = "NAME"` of each clap argument. The object
# store's AWS_* and S3_FORCE_PATH_STYLE are read outside clap, RUST_LOG by the log filter (the
# same list as data-streams/tests/compose.rs).
def settings(*paths):
    names = set()
    for path in paths:
        names |= set(re.findall(r'env\s*=\s*"([A-Z0-9_]+)"', pathlib.Path(path).read_text()))
    return names | {"AWS_ENDPOINT_URL", "AWS_REGION", "AWS_ACCESS_KEY_ID",
                    "AWS_SECRET_ACCESS_KEY", "S3_FORCE_PATH_STYLE", "RUST_LOG"}
known = {
    "data-streams": settings("data-streams/src/settings.rs", "objects/src/lib.rs"),
    "worker": settings("worker/src/settings.rs", "objects/src/lib.rs"),
}

pods = {}  # workload name -> (pod labels, container port names)
for name, deploy in by_kind.get("Deployment", {}).items():
    spec = deploy["spec"]["template"]["spec"]
    labels = deploy["spec"]["template"]["metadata"]["labels"]
    if not all(labels.get(k) == v for k, v in deploy["spec"]["selector"]["matchLabels"].items()):
        errors.append(f"deployment/{name}: its selector does not match its pod labels")
    ports = set()
    for c in spec["containers"]:
        ports |= {p["name"] for p in c.get("ports", [])}
        binary = (c.get("command") or [""])[0]
        if binary not in known:
            errors.append(f"deployment/{name}: container {c['name']} runs {binary!r}, not one of {sorted(known)}")
            continue
        env = []
        for ref in c.get("envFrom", []):
            cm = ref.get("configMapRef", {}).get("name")
            if cm is None:
                continue
            if cm not in by_kind.get("ConfigMap", {}):
                errors.append(f"deployment/{name}: reads ConfigMap {cm}, which is not in {folder}")
            else:
                env += list(by_kind["ConfigMap"][cm].get("data", {}))
        # envFrom comes first, then env in order: a $(NAME) sees only what is defined before it
        # ($$(NAME) is an escape, not a reference).
        expanded = set()
        for e in c.get("env", []):
            for ref in re.findall(r'(?<!\$)\$\(([A-Za-z_][A-Za-z0-9_]*)\)', e.get("value", "")):
                if ref not in env:
                    errors.append(f"deployment/{name}: {e['name']} expands $({ref}), which is not defined before it")
                expanded.add(ref)
            env.append(e["name"])
        for var in env:
            if var not in known[binary] and var not in expanded:
                errors.append(f"deployment/{name}: {var} is not a setting of {binary}")
    pods[name] = (labels, ports)

def selected(selector):
    return [n for n, (labels, _) in pods.items()
            if all(labels.get(k) == v for k, v in selector.items())]

for name, svc in by_kind.get("Service", {}).items():
    targets = selected(svc["spec"]["selector"])
    if not targets:
        errors.append(f"service/{name}: its selector matches no workload's pods")
    for port in svc["spec"]["ports"]:
        target = port.get("targetPort", port["port"])
        if isinstance(target, str) and any(target not in pods[t][1] for t in targets):
            errors.append(f"service/{name}: targetPort {target} is not a port of {targets}")
for name, pdb in by_kind.get("PodDisruptionBudget", {}).items():
    if not selected(pdb["spec"]["selector"]["matchLabels"]):
        errors.append(f"poddisruptionbudget/{name}: its selector matches no workload's pods")
    # The API server takes exactly one of the two; the schema allows both.
    if ("minAvailable" in pdb["spec"]) == ("maxUnavailable" in pdb["spec"]):
        errors.append(f"poddisruptionbudget/{name}: set exactly one of minAvailable and maxUnavailable")

for e in errors:
    print(f"ERROR {e}")
if errors:
    sys.exit(1)
print(f"k8s-validate: {len(docs)} resources in {len(listed)} files: consistent")
PY
echo "k8s-validate: $dir passed against Kubernetes $K8S_VERSION" >&2

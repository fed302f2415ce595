#!/usr/bin/env bash
# Offline checks of the deployment files; no Docker engine, cluster or network needed.
#
#   bash infra/validate.sh
#
# - docker compose config (base file, CPU override, tools/serve/console profiles) with Compose v2; with the
#   old docker-compose v1 the base file, and the CPU override merged here first (v1 cannot read
#   the `!reset` tag that the override uses)
# - promtool: Prometheus config, rules, rule unit tests, and every PromQL query of the dashboard
# - JSON parse of the Grafana dashboards, YAML parse of every file under infra/
# - Kubernetes manifests: YAML parse and basic shape; `kubectl kustomize` when kubectl exists
# - the image helper scripts: `sh -n`, `node --check`; hadolint on the Dockerfiles if installed
#
# A tool that is not installed is skipped with a message. Exit status: 1 if any check failed.
set -uo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

passed=0 failed=0 skipped=0
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

ok()   { passed=$((passed + 1)); printf 'ok    %s\n' "$1"; }
fail() { failed=$((failed + 1)); printf 'FAIL  %s\n' "$1"; }
skip() { skipped=$((skipped + 1)); printf 'skip  %s: %s\n' "$1" "$2"; }
have() { command -v "$1" >/dev/null 2>&1; }

# check NAME COMMAND...: runs the command, shows its output indented only when it fails.
check() {
  local name="$1"; shift
  if "$@" >"$tmp/out" 2>&1; then ok "$name"; else fail "$name"; sed 's/^/      /' "$tmp/out"; fi
}

have_pyyaml() { have python3 && python3 -c 'import yaml' 2>/dev/null; }

# --- docker compose ---------------------------------------------------------------------------
compose_files=(-f docker-compose.yml)
cpu_files=(-f docker-compose.yml -f infra/compose/docker-compose.cpu.yml)

if have docker && docker compose version >/dev/null 2>&1; then
  check "compose config (GPU, default)" docker compose "${compose_files[@]}" config -q
  check "compose config (CPU override)" docker compose "${cpu_files[@]}" config -q
  check "compose config (tools, serve, console profiles)" docker compose "${compose_files[@]}" --profile tools --profile serve --profile console config -q
  # the CPU variant must not keep the GPU reservation
  if docker compose "${cpu_files[@]}" config 2>/dev/null | grep -q 'driver: nvidia'; then
    fail "compose CPU override drops the GPU reservation"
  else
    ok "compose CPU override drops the GPU reservation"
  fi
elif have docker-compose; then
  check "compose config (GPU, default; docker-compose v1)" docker-compose "${compose_files[@]}" config -q
  if have_pyyaml; then
    # Merge the override the way Compose v2 does (mappings merged, `!reset` removes the key)
    # and let v1 validate the result.
    merge_cpu() {
      python3 - docker-compose.yml infra/compose/docker-compose.cpu.yml <<'PY'
import sys, yaml
RESET = object()
class Loader(yaml.SafeLoader): pass
Loader.add_constructor('!reset', lambda l, n: RESET)
Loader.add_constructor('!override', lambda l, n: l.construct_object(n, deep=True) if not isinstance(n, yaml.MappingNode) else l.construct_mapping(n, deep=True))
def merge(a, b):
    if isinstance(a, dict) and isinstance(b, dict):
        out = dict(a)
        for k, v in b.items():
            if v is RESET: out.pop(k, None)
            else: out[k] = merge(a.get(k), v) if k in a else v
        return out
    return b
base = yaml.load(open(sys.argv[1]), Loader=Loader)
over = yaml.load(open(sys.argv[2]), Loader=Loader)
merged = merge(base, over)
embed = merged['services']['embed']
assert 'devices' not in embed.get('deploy', {}).get('resources', {}).get('reservations', {}), 'GPU reservation still there'
assert embed['build']['dockerfile'] == 'infra/docker/Dockerfile', 'embed does not build the CPU image'
yaml.safe_dump(merged, sys.stdout, sort_keys=False)
PY
    }
    if merge_cpu >"$tmp/cpu-merged.yml" 2>"$tmp/merge.err"; then
      check "compose config (CPU override, merged here; docker-compose v1)" docker-compose -f - config -q <"$tmp/cpu-merged.yml"
    else
      fail "compose CPU override merge"; sed 's/^/      /' "$tmp/merge.err"
    fi
  else
    skip "compose config (CPU override)" "needs python3 with PyYAML to merge for docker-compose v1"
  fi
  check "compose config (tools, serve, console profiles; docker-compose v1)" docker-compose "${compose_files[@]}" --profile tools --profile serve --profile console config -q
else
  skip "compose config" "neither 'docker compose' (v2) nor 'docker-compose' is installed"
fi

# --- Prometheus -------------------------------------------------------------------------------
if have promtool; then
  check "promtool check config" promtool check config infra/prometheus/prometheus.yml
  check "promtool check rules" promtool check rules infra/prometheus/rules/*.yml
  check "promtool test rules" promtool test rules infra/prometheus/tests/*.yml
else
  skip "promtool" "not installed (Debian/Ubuntu: apt-get install prometheus)"
fi

# --- Grafana ----------------------------------------------------------------------------------
if have python3; then
  for f in infra/grafana/dashboards/*.json; do
    check "JSON parses: $f" python3 -m json.tool "$f"
  done
  if have promtool; then
    # Every query of the dashboards, as a recording rule, so promtool parses the PromQL.
    if python3 - infra/grafana/dashboards/*.json >"$tmp/dashboard-rules.yml" <<'PY'
import json, sys
print("groups:")
for path in sys.argv[1:]:
    d = json.load(open(path))
    print(f"  - name: {json.dumps(path)}\n    rules:")
    def panels(ps):
        for p in ps:
            yield p
            yield from panels(p.get("panels", []))
    n = 0
    for p in panels(d.get("panels", [])):
        for t in p.get("targets", []):
            expr = t.get("expr")
            if not expr:
                continue
            for var, value in (("$__rate_interval", "1m"), ("$__interval", "1m"), ("$__range", "1h"), ("${dataset}", ".*"), ("$dataset", ".*")):
                expr = expr.replace(var, value)
            n += 1
            print(f"      - record: dashboard_query_{n}\n        expr: {json.dumps(expr)}")
PY
    then
      check "dashboard PromQL parses (promtool)" promtool check rules "$tmp/dashboard-rules.yml"
    else
      fail "dashboard queries extracted"
    fi
  fi
elif have node; then
  for f in infra/grafana/dashboards/*.json; do
    check "JSON parses: $f" node -e 'JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"))' "$f"
  done
else
  skip "dashboard JSON" "neither python3 nor node is installed"
fi

# --- YAML everywhere, Kubernetes shape --------------------------------------------------------
if have_pyyaml; then
  check "YAML parses: docker-compose.yml and infra/**/*.y*ml" python3 - <<'PY'
import glob, yaml
class Loader(yaml.SafeLoader): pass
for tag in ('!reset', '!override'):
    Loader.add_constructor(tag, lambda l, n: None)
files = ['docker-compose.yml'] + sorted(glob.glob('infra/**/*.yml', recursive=True) + glob.glob('infra/**/*.yaml', recursive=True))
for f in files:
    list(yaml.load_all(open(f), Loader=Loader))
print(len(files), 'files')
PY
  check "Kubernetes manifests (base): kind, apiVersion, names, selectors; resources exist" python3 - <<'PY'
import os, yaml
d = 'infra/k8s/base'
k = yaml.safe_load(open(os.path.join(d, 'kustomization.yaml')))
problems = []
for r in k['resources']:
    p = os.path.join(d, r)
    if not os.path.exists(p):
        problems.append(f'{r}: listed in kustomization.yaml but missing')
        continue
    for doc in yaml.safe_load_all(open(p)):
        if doc is None:
            continue
        for field in ('apiVersion', 'kind'):
            if not doc.get(field):
                problems.append(f'{r}: a document without {field}')
        if not (doc.get('metadata') or {}).get('name'):
            problems.append(f'{r}: {doc.get("kind")} without metadata.name')
        if doc.get('kind') == 'Deployment':
            spec = doc['spec']
            sel = spec['selector']['matchLabels']
            labels = spec['template']['metadata']['labels']
            if any(labels.get(key) != v for key, v in sel.items()):
                problems.append(f'{r}: selector does not match the pod labels')
assert not problems, '\n'.join(problems)
PY
else
  skip "YAML parse" "python3 with PyYAML is not installed (apt-get install python3-yaml)"
fi

if have kubectl; then
  check "kubectl kustomize infra/k8s (GPU)" kubectl kustomize infra/k8s
  check "kubectl kustomize infra/k8s/cpu" kubectl kustomize infra/k8s/cpu
else
  skip "kubectl kustomize" "kubectl is not installed"
fi

# --- image helpers ----------------------------------------------------------------------------
check "sh -n infra/docker/transferline.sh" sh -n infra/docker/transferline.sh
if have node; then
  check "node --check infra/docker/healthcheck.mjs" node --check infra/docker/healthcheck.mjs
else
  skip "healthcheck.mjs" "node is not installed"
fi
if have hadolint; then
  check "hadolint Dockerfiles" hadolint infra/docker/Dockerfile infra/docker/Dockerfile.gpu
else
  skip "hadolint" "not installed"
fi

echo
echo "validate: ${passed} passed, ${failed} failed, ${skipped} skipped"
[ "$failed" -eq 0 ]

"""Checks deploy/ offline, as wedge's CI does (`cargo xtask test` runs it):

- every kustomization renders (`kubectl kustomize`), and every object it renders validates
  strictly (unknown fields refused) against the Kubernetes schemas of kubernetes-validate
  (PyPI); the custom resources of the Prometheus Operator and KServe, which those schemas do
  not cover, are listed as such;
- the alerting rules pass `promtool check rules` and their unit tests `promtool test rules`;
- every query of the Grafana dashboard parses as PromQL (`promtool check rules` on them).

Usage: python deploy/check.py   (with kubernetes-validate importable, kubectl and promtool on PATH)
"""
import json
import os
import subprocess
import sys
import tempfile

import kubernetes_validate
import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
KUSTOMIZATIONS = ["base", "overlays/gpu", "kserve", "monitoring"]
KUBERNETES = "1.33.0"
# kinds that come with operators (their CRDs), not with Kubernetes
CUSTOM = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("serving.kserve.io/v1alpha1", "ServingRuntime"),
    ("serving.kserve.io/v1beta1", "InferenceService"),
}


def run(*args, cwd=HERE):
    out = subprocess.run(args, cwd=cwd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{' '.join(args)} failed:\n{out.stdout}{out.stderr}")
    return out.stdout


def main():
    checked, custom = 0, []
    for k in KUSTOMIZATIONS:
        rendered = run("kubectl", "kustomize", k)
        for doc in yaml.safe_load_all(rendered):
            if not doc:
                continue
            kind, name = doc.get("kind"), doc.get("metadata", {}).get("name")
            if (doc.get("apiVersion"), kind) in CUSTOM:
                custom.append(f"{k}: {kind}/{name}")
                continue
            try:
                kubernetes_validate.validate(doc, KUBERNETES, strict=True)
            except kubernetes_validate.ValidationError as e:
                sys.exit(f"{k}: {kind}/{name} is not valid Kubernetes {KUBERNETES}: {e.message} at {list(e.path)}")
            except kubernetes_validate.SchemaNotFoundError:
                sys.exit(f"{k}: {kind}/{name}: no Kubernetes schema for {doc.get('apiVersion')} {kind}")
            checked += 1
    print(f"manifests: {checked} objects of {len(KUSTOMIZATIONS)} kustomizations valid (Kubernetes {KUBERNETES}, strict)")
    print(f"manifests: custom resources, not covered by Kubernetes' schemas: {', '.join(custom)}")

    monitoring = os.path.join(HERE, "monitoring")
    run("promtool", "check", "rules", "wedge-alerts.yaml", cwd=monitoring)
    run("promtool", "test", "rules", "wedge-alerts.test.yaml", cwd=monitoring)
    with open(os.path.join(monitoring, "wedge-dashboard.json")) as f:
        dashboard = json.load(f)
    queries = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    # Grafana's variables, as a query would see them
    queries = [q.replace("$__rate_interval", "5m").replace("$job", ".+") for q in queries]
    rules = {"groups": [{"name": "dashboard", "rules": [{"record": f"dashboard:q{i}", "expr": q} for i, q in enumerate(queries)]}]}
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        yaml.safe_dump(rules, f)
        f.flush()
        run("promtool", "check", "rules", f.name)
    print(f"monitoring: alert rules checked and unit-tested; {len(queries)} dashboard queries parse")


if __name__ == "__main__":
    main()

"""Checks what the schemas cannot: the promises the README makes about these manifests."""
import sys
from pathlib import Path

import yaml

here = Path(__file__).parent
docs = {}
for f in ("voters.yaml", "replicas.yaml", "gateway.yaml"):
    for d in yaml.safe_load_all((here / f).read_text()):
        docs[(d["kind"], d["metadata"]["name"])] = d


def fail(msg):
    print(f"check.py: {msg}", file=sys.stderr)
    sys.exit(1)


if any(kind == "Secret" for kind, _ in docs):
    fail("no Secret may be shipped: each deployment creates quiver-cluster with its own secret")
if "secret.yaml" in (here / "kustomization.yaml").read_text():
    fail("the kustomization must not ship a cluster secret")

hpa = docs[("HorizontalPodAutoscaler", "quiver-replica")]["spec"]
targets = {m["resource"]["name"]: m["resource"]["target"]["averageUtilization"] for m in hpa["metrics"]}
if (hpa["minReplicas"], hpa["maxReplicas"], targets) != (2, 10, {"cpu": 70, "memory": 80}):
    fail(f"HPA must be min 2, max 10, cpu 70 %, memory 80 %: {hpa}")
if hpa["scaleTargetRef"]["name"] != "quiver-replica":
    fail("HPA must scale the replica Deployment")

voters = docs[("StatefulSet", "quiver-voter")]["spec"]
if voters["replicas"] != 3 or not voters.get("volumeClaimTemplates"):
    fail("voters: 3 replicas with volume claims")
for kind, name, port in (("StatefulSet", "quiver-voter", "http"), ("Deployment", "quiver-replica", "http"),
                         ("Deployment", "quiver-gateway", "http")):
    c = docs[(kind, name)]["spec"]["template"]["spec"]["containers"][0]
    if c["readinessProbe"]["httpGet"]["path"] != "/readyz" or c["livenessProbe"]["httpGet"]["path"] != "/healthz":
        fail(f"{name}: readiness on /readyz, liveness on /healthz")
    if name != "quiver-gateway":
        start = c.get("startupProbe", {})
        if start.get("httpGet", {}).get("path") != "/healthz" or start["periodSeconds"] * start["failureThreshold"] < 600:
            fail(f"{name}: a startup probe on /healthz allowing 10 minutes to load")
    if name != "quiver-gateway":
        env = {e["name"]: e for e in c["env"]}
        ref = env["QUIVER_CLUSTER_SECRET"]["valueFrom"]["secretKeyRef"]
        if ref != {"name": "quiver-cluster", "key": "cluster-secret"}:
            fail(f"{name}: cluster secret must come from the Secret")
        if "cpu" not in c["resources"]["requests"] or "memory" not in c["resources"]["requests"]:
            fail(f"{name}: the HPA needs cpu and memory requests")

labels = lambda d: d["spec"]["template"]["metadata"]["labels"]
for svc, workload in (("quiver-write", ("StatefulSet", "quiver-voter")), ("quiver-read", ("Deployment", "quiver-replica")),
                      ("quiver-gateway", ("Deployment", "quiver-gateway"))):
    sel = docs[("Service", svc)]["spec"]["selector"]
    if any(labels(docs[workload]).get(k) != v for k, v in sel.items()):
        fail(f"Service {svc} selects no pod of {workload}")
print("check.py: HPA, probes, secret references and service selectors as documented")

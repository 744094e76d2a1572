"""The Helm charts (charts/) and the guides (guides/) without a cluster.

Rendered and linted by the real Helm v4 engine (helm-python-sdk), validated against the
Kubernetes 1.33 schemas (kubernetes-validate, strict) and our JSON Schemas of the InferencePool
and HTTPRoute APIs (tests/ops/schemas), and checked for what makes a deployment work: matching block
size, hash seed and KV-event endpoints between the engines and the EPP, the pool wiring, RBAC,
and container flags that `llmd <subcommand> --help` really lists.

    .venv/bin/python -m pytest -q tests/ops/test_charts.py
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from conftest import require
from helm_util import (
    CHARTS,
    ROOT,
    containers,
    cr_errors,
    env,
    flags,
    guides,
    is_llmd,
    kind,
    kube_validate,
    lint,
    one,
    pod_templates,
    render,
)

EPP = CHARTS / "llmd-epp"
MS = CHARTS / "llmd-model-server"
GUIDES = guides()
NS = "llm-d"

# Every values set the charts are rendered with: defaults, each guide variant's values, and the
# optional parts switched on.
CASES = [
    ("llmd-epp-defaults", EPP, {}, "llmd-epp"),
    ("llmd-epp-monitoring", EPP, {"serviceMonitor": {"enabled": True}, "otel": {"endpoint": "http://c:4317"},
                                  "kvEvents": {"mode": "podDiscovery"}, "tokenizer": {"download": {"enabled": False},
                                  "volume": {"persistentVolumeClaim": {"claimName": "hf"}}}}, "llmd-epp"),
    ("llmd-epp-replicas", EPP, {"replicas": 2, "kvEvents": {"mode": "podDiscovery"}}, "llmd-epp"),
    ("llmd-epp-tls-secret-istio", EPP, {"tls": {"secretName": "epp-tls"}, "provider": {"name": "istio"}}, "llmd-epp"),
    ("llmd-epp-plaintext-istio", EPP, {"tls": {"enabled": False}, "provider": {"name": "istio"}}, "llmd-epp"),
    ("llmd-model-server-defaults", MS, {}, "llmd-model-server"),
    ("llmd-model-server-pd-tls-sim", MS, {"engine": "sim", "pd": {"enabled": True, "proxy": {"tls": {"secretName": "t"},
                                          "allowPrefill": ["10.0.0.0/8"]}},
                                          "roles": {"prefill": {"replicas": 1}}, "podMonitor": {"enabled": True},
                                          "otel": {"endpoint": "http://c:4317"}}, "llmd-model-server"),
]
for _g in GUIDES:
    for _r in _g.releases:
        CASES.append((f"{_g.id}-{_r.chart.name}", _r.chart, _r.values, _r.name))
CASE_IDS = [c[0] for c in CASES]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    return {cid: render(chart, values, name=rel, namespace=NS) for cid, chart, values, rel in CASES}


def guide_docs(g) -> tuple[list[dict], list[dict]]:
    epp, ms = g.release("llmd-epp"), g.release("llmd-model-server")
    return (render(epp.chart, epp.values, epp.name, epp.namespace),
            render(ms.chart, ms.values, ms.name, ms.namespace))


# ---- the guides exist as the issue describes them ----------------------------------------------

def test_every_guide_has_a_gpu_and_a_sim_variant_and_a_readme():
    found = {(g.name, g.variant) for g in GUIDES}
    assert found == {(n, v) for n in ("precise-prefix-cache-aware", "pd-disaggregation") for v in ("gpu", "sim")}
    for g in GUIDES:
        assert (g.helmfile.parent / "README.md").is_file()
        assert {r.chart.name for r in g.releases} == {"llmd-epp", "llmd-model-server"}
        for r in g.releases:
            assert r.chart.is_dir(), r.chart
            assert all(f.is_file() for f in r.values_files), r.values_files


# ---- Helm: lint and render ---------------------------------------------------------------------

@pytest.mark.parametrize("cid,chart,values,rel", CASES, ids=CASE_IDS)
def test_lint_clean(cid, chart, values, rel):
    report = lint(chart, values)
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not problems and not report["errors"], report


@pytest.mark.parametrize("cid", CASE_IDS)
def test_rendered_objects_validate(cid, rendered):
    docs = rendered[cid]
    assert docs
    for d in docs:
        if d["kind"] in ("InferencePool", "HTTPRoute"):
            assert cr_errors(d) == [], f"{d['kind']} {d['metadata']['name']}"
        elif d["kind"] in ("ServiceMonitor", "PodMonitor"):
            assert d["apiVersion"] == "monitoring.coreos.com/v1"
        elif d["kind"] == "DestinationRule":
            assert d["apiVersion"] == "networking.istio.io/v1"
            assert set(d["spec"]) <= {"host", "trafficPolicy"} and d["spec"]["host"].endswith(".svc.cluster.local")
        else:
            try:
                kube_validate(d)
            except kubernetes_validate.utils.ValidationError as e:
                pytest.fail(f"{d['kind']} {d['metadata']['name']}: {'.'.join(map(str, e.path))}: {e.message}")


def test_kube_validator_rejects_bad_objects(rendered):
    """The core-kinds validator can fail: a wrong type, an unknown field."""
    dep = next(d for d in rendered["llmd-epp-defaults"] if d["kind"] == "Deployment")
    bad = json.loads(json.dumps(dep))
    bad["spec"]["replicas"] = "three"
    with pytest.raises(kubernetes_validate.utils.ValidationError):
        kube_validate(bad)
    bad = json.loads(json.dumps(dep))
    bad["spec"]["template"]["spec"]["containers"][0]["argz"] = []
    with pytest.raises(kubernetes_validate.utils.ValidationError):
        kube_validate(bad)


class _Del:
    def __repr__(self) -> str:
        return "DEL"


DEL = _Del()  # as a value in the mutations below: delete the field


def _set(obj: dict, path: str, value) -> None:
    """Sets (or, with value DEL, deletes) the dotted `path`; integer parts index lists."""
    keys = [int(k) if k.isdigit() else k for k in path.split(".")]
    for k in keys[:-1]:
        obj = obj[k]
    if value is DEL:
        del obj[keys[-1]]
    else:
        obj[keys[-1]] = value


POOL_RULES = "spec.rules.0.backendRefs.0"

# (kind, [(path, value)], text the errors must contain): each mutation of a rendered object that
# the API rejects must be rejected by our schema, for the reason given.
BAD_CRS = [
    ("InferencePool", [("apiVersion", "inference.networking.x-k8s.io/v1alpha2")], "apiVersion"),
    ("InferencePool", [("metadata.name", DEL)], "'name' is a required property"),
    ("InferencePool", [("metadata.name", "Pool_1")], "metadata.name"),
    ("InferencePool", [("metadata.labelz", {})], "labelz"),
    ("InferencePool", [("spec.targetPorts", DEL)], "'targetPorts' is a required property"),
    ("InferencePool", [("spec.targetPorts", [])], "spec.targetPorts"),
    ("InferencePool", [("spec.targetPorts", [{"number": p} for p in range(8000, 8009)])], "spec.targetPorts"),
    ("InferencePool", [("spec.targetPorts", [{"number": 8000}, {"number": 8000}])], "non-unique"),
    ("InferencePool", [("spec.targetPorts.0.number", 0)], "spec.targetPorts.0.number"),
    ("InferencePool", [("spec.targetPorts.0.number", 65536)], "spec.targetPorts.0.number"),
    ("InferencePool", [("spec.targetPorts.0.number", "8000")], "spec.targetPorts.0.number"),
    ("InferencePool", [("spec.targetPorts.0.port", 8000)], "'port' was unexpected"),
    ("InferencePool", [("spec.targetPortNumber", 8000)], "targetPortNumber"),  # the v1alpha2 field
    ("InferencePool", [("spec.extensionRef", {"name": "epp"})], "extensionRef"),  # the v1alpha2 field
    ("InferencePool", [("spec.selector.matchLabels", {})], "spec.selector.matchLabels"),
    ("InferencePool", [("spec.selector.matchExpressions", [])], "matchExpressions"),
    ("InferencePool", [("spec.selector.matchLabels", {"app": "a b"})], "spec.selector.matchLabels.app"),
    ("InferencePool", [("spec.selector.matchLabels", {"-app": "x"})], "-app"),
    ("InferencePool", [("spec.appProtocol", "grpc")], "spec.appProtocol"),
    ("InferencePool", [("spec.endpointPickerRef.failureMode", "FailSoft")], "FailSoft"),
    ("InferencePool", [("spec.endpointPickerRef.name", DEL)], "'name' is a required property"),
    ("InferencePool", [("spec.endpointPickerRef.port", DEL)], "'port' is a required property"),
    ("InferencePool", [("spec.endpointPickerRef.kind", DEL), ("spec.endpointPickerRef.port", DEL)],
     "'port' is a required property"),
    ("InferencePool", [("spec.endpointPickerRef.port", 9002)], "spec.endpointPickerRef.port"),
    ("InferencePool", [("spec.endpointPickerRef.port.number", 0)], "spec.endpointPickerRef.port.number"),
    ("InferencePool", [("spec.endpointPickerRef.group", "Core")], "spec.endpointPickerRef.group"),
    ("InferencePool", [("spec.endpointPickerRef.failuremode", "FailOpen")], "failuremode"),
    ("HTTPRoute", [("kind", "GRPCRoute")], "kind"),
    ("HTTPRoute", [("spec.parentRef", [])], "parentRef"),
    ("HTTPRoute", [("spec.parentRefs.0.name", DEL)], "'name' is a required property"),
    ("HTTPRoute", [("spec.parentRefs.0.port", 0)], "spec.parentRefs.0.port"),
    ("HTTPRoute", [("spec.parentRefs.0.namespace", "Infra")], "spec.parentRefs.0.namespace"),
    ("HTTPRoute", [("spec.hostnames", ["*"])], "spec.hostnames.0"),
    ("HTTPRoute", [("spec.hostnames", ["Example.com"])], "spec.hostnames.0"),
    ("HTTPRoute", [("spec.rules", [])], "spec.rules"),
    ("HTTPRoute", [("spec.rules.0.matches.0.path.type", "Glob")], "Glob"),
    ("HTTPRoute", [("spec.rules.0.matches.0.path.value", "v1")], "spec.rules.0.matches.0.path.value"),
    ("HTTPRoute", [("spec.rules.0.matches.0.path.value", "/v1//chat")], "spec.rules.0.matches.0.path.value"),
    ("HTTPRoute", [("spec.rules.0.matches.0.path.value", "/v1/..")], "spec.rules.0.matches.0.path.value"),
    ("HTTPRoute", [("spec.rules.0.matches.0.method", "get")], "spec.rules.0.matches.0.method"),
    ("HTTPRoute", [("spec.rules.0.matches.0.headers", [{"name": "x model", "value": "m"}])], "headers.0.name"),
    ("HTTPRoute", [("spec.rules.0.matches.0.headers", [{"name": "x-model"}])], "'value' is a required property"),
    ("HTTPRoute", [("spec.rules.0.matches.0.header", [])], "header"),
    ("HTTPRoute", [(f"{POOL_RULES}.name", DEL)], "'name' is a required property"),
    ("HTTPRoute", [(f"{POOL_RULES}.group", DEL)], "'group' is a required property"),
    ("HTTPRoute", [(f"{POOL_RULES}.group", "")], f"{POOL_RULES}.group"),
    ("HTTPRoute", [(f"{POOL_RULES}.group", ""), (f"{POOL_RULES}.kind", "Service")], "'port' is a required property"),
    ("HTTPRoute", [(f"{POOL_RULES}.group", DEL), (f"{POOL_RULES}.kind", DEL)], "'port' is a required property"),
    ("HTTPRoute", [(f"{POOL_RULES}.weight", -1)], f"{POOL_RULES}.weight"),
    ("HTTPRoute", [(f"{POOL_RULES}.weight", 1000001)], f"{POOL_RULES}.weight"),
    ("HTTPRoute", [(f"{POOL_RULES}.port", 0)], f"{POOL_RULES}.port"),
    ("HTTPRoute", [(f"{POOL_RULES}.backendRef", "x")], "backendRef"),
    ("HTTPRoute", [("spec.rules.0.timeouts", {"request": "30 s"})], "spec.rules.0.timeouts.request"),
    ("HTTPRoute", [("spec.rules.0.timeouts", {"request": "1.5s"})], "spec.rules.0.timeouts.request"),
    ("HTTPRoute", [("spec.rules.0.timeouts", {"idle": "30s"})], "idle"),
    ("HTTPRoute", [("spec.rules.0.filters", [{"type": "RequestHeaderModifier"}])], "'requestHeaderModifier' is a required"),
    ("HTTPRoute", [("spec.rules.0.filters", [{"type": "URLRewrite", "requestHeaderModifier": {}}])], "'RequestHeaderModifier' was expected"),
    ("HTTPRoute", [("spec.rules.0.filters", [{"type": "Rewrite"}])], "Rewrite"),
    ("HTTPRoute", [("spec.rules.0.retry", {"attempts": 2})], "retry"),  # experimental channel only
]


def _mutated(rendered, k: str, changes) -> dict:
    obj = json.loads(json.dumps(one(rendered["llmd-epp-defaults"], k)))
    for path, value in changes:
        _set(obj, path, value)
    return obj


@pytest.mark.parametrize("k,changes,expect", BAD_CRS, ids=[f"{k}-{i}-{c[0][0]}" for i, (k, c, _) in enumerate(BAD_CRS)])
def test_cr_schemas_reject_bad_objects(k, changes, expect, rendered):
    errors = cr_errors(_mutated(rendered, k, changes), as_kind=k)
    assert errors, f"{k} with {changes} passed"
    assert expect in "\n".join(errors), errors


GOOD_CRS = [
    ("InferencePool", [("spec.targetPorts", [{"number": 8000}, {"number": 8001}]), ("spec.appProtocol", "kubernetes.io/h2c"),
                       ("spec.endpointPickerRef.failureMode", "FailOpen"), ("spec.selector.matchLabels", {"llm-d.ai/role": ""})]),
    ("InferencePool", [("spec.endpointPickerRef", {"group": "example.com", "kind": "Picker", "name": "p"})]),
    ("InferencePool", [("spec.endpointPickerRef", DEL), ("spec.appProtocol", DEL)]),
    ("HTTPRoute", [("spec.hostnames", ["*.example.com", "llm.example.com"]), ("spec.parentRefs.0.port", 443),
                   ("spec.rules.0.matches", [{"path": {"type": "RegularExpression", "value": "v[0-9]+//x"},
                                              "headers": [{"type": "RegularExpression", "name": "x-model-name", "value": "llama.*"}],
                                              "queryParams": [{"name": "a", "value": "b"}], "method": "POST"}, {}]),
                   ("spec.rules.0.timeouts", {"request": "1m30s", "backendRequest": "0s"}),
                   ("spec.rules.0.filters", [{"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [{"name": "a", "value": "b"}]}}]),
                   (f"{POOL_RULES}.weight", 0), (f"{POOL_RULES}.group", "inference.networking.x-k8s.io")]),
    ("HTTPRoute", [("spec.rules.0.backendRefs", [{"name": "svc", "port": 8000}, {"name": "svc2", "kind": "Service", "group": "", "port": 1}])]),
    ("HTTPRoute", [("spec.rules", DEL), ("spec.parentRefs", DEL)]),
]


@pytest.mark.parametrize("k,changes", GOOD_CRS, ids=[f"{k}-{i}" for i, (k, _) in enumerate(GOOD_CRS)])
def test_cr_schemas_accept_valid_variants(k, changes, rendered):
    """Controls for the test above: the schemas are not stricter than the API."""
    assert cr_errors(_mutated(rendered, k, changes), as_kind=k) == []


# ---- values.schema.json ------------------------------------------------------------------------

BAD_VALUES = [
    (EPP, {"replicas": "three"}, "replicas"),
    (EPP, {"kvCache": {"hashSeed": "random"}}, "hashSeed"),
    (EPP, {"kvCache": {"blockSize": 48}}, "blockSize"),
    (EPP, {"kvEvents": {"mode": "push"}}, "mode"),
    (EPP, {"schedulerConfig": {"plugins": [{"type": "session-affinity-filter"}],
                               "schedulingProfiles": [{"name": "d", "plugins": [{"pluginRef": "session-affinity-filter"}]}]}}, "type"),
    (EPP, {"otel": {"samplerArg": "10%"}}, "samplerArg"),
    (EPP, {"inferencePool": {"failureMode": "FailSoft"}}, "failureMode"),
    (EPP, {"extraArgs": ["-v"]}, "extraArgs"),
    (EPP, {"bogus": 1}, "bogus"),
    (MS, {"roles": {"decode": {"replicas": "three"}}}, "replicas"),
    (MS, {"roles": {"router": {"replicas": 1}}}, "router"),
    (MS, {"roles": {"decode": {"tensorParallelSize": 0}}}, "tensorParallelSize"),
    (MS, {"engine": "tgi"}, "engine"),
    (MS, {"pd": {"connector": "lmcache"}}, "connector"),
    (MS, {"model": "a@b"}, "model"),
    (MS, {"kvCache": {"hashSeed": 42}}, "hashSeed"),
]


@pytest.mark.parametrize("chart,values,key", BAD_VALUES, ids=[f"{c.name}-{k}" for c, _, k in BAD_VALUES])
def test_schema_rejects_bad_values(chart, values, key):
    import helm_python as helm

    with pytest.raises(helm.HelmValuesError) as e:
        render(chart, values)
    assert key in str(e.value)


def test_conflicting_hash_seed_in_scheduler_config_fails():
    import helm_python as helm

    cfg = {"plugins": [{"type": "precise-prefix-cache-scorer", "parameters": {"hashSeed": "7"}}, {"type": "max-score-picker"}],
           "schedulingProfiles": [{"name": "d", "plugins": [{"pluginRef": "precise-prefix-cache-scorer"}, {"pluginRef": "max-score-picker"}]}]}
    with pytest.raises(helm.HelmRenderError, match="hashSeed"):
        render(EPP, {"schedulerConfig": cfg})
    cfg["plugins"][0]["parameters"] = {"blockSize": 16}
    with pytest.raises(helm.HelmRenderError, match="blockSize"):
        render(EPP, {"schedulerConfig": cfg})


def test_pd_without_prefill_role_fails():
    import helm_python as helm

    with pytest.raises(helm.HelmRenderError, match="roles.prefill"):
        render(MS, {"pd": {"enabled": True}})


# ---- the P/D sidecar ---------------------------------------------------------------------------

@pytest.mark.parametrize("engine", ["vllm", "sim"])
@pytest.mark.parametrize("pd", [False, True])
def test_pd_proxy_sidecar_only_on_decode_pods_with_pd(engine, pd):
    docs = render(MS, {"engine": engine, "pd": {"enabled": pd}, "roles": {"prefill": {"replicas": 1}, "decode": {"replicas": 1}}})
    deps = {d["metadata"]["labels"]["llm-d.ai/role"]: d for d in kind(docs, "Deployment")}
    assert set(deps) == {"prefill", "decode"}
    names = {role: [c["name"] for c in d["spec"]["template"]["spec"]["containers"]] for role, d in deps.items()}
    assert names["prefill"] == [engine]
    assert names["decode"] == (["pd-proxy", engine] if pd else [engine])
    decode_spec = deps["decode"]["spec"]["template"]["spec"]
    eng = next(c for c in decode_spec["containers"] if c["name"] == engine)
    eng_port = int(flags(eng)["--port"])
    if pd:
        proxy = decode_spec["containers"][0]
        assert flags(proxy)["--port"] == "8000" and eng_port == 8200
        assert flags(proxy)["--decoder"] == f"http://127.0.0.1:{eng_port}"
        assert flags(proxy)["--inference-pool"] == f"{NS}/llmd-epp"
        assert decode_spec["automountServiceAccountToken"] is True
        assert one(docs, "Role")
    else:
        assert eng_port == 8000
        assert decode_spec["automountServiceAccountToken"] is False
        assert not kind(docs, "Role"), "no API access without the sidecar"
    if engine == "vllm":
        assert ("--kv-transfer-config" in flags(eng)) == pd
        if pd:
            assert json.loads(flags(eng)["--kv-transfer-config"]) == {"kv_connector": "NixlConnector", "kv_role": "kv_both"}


def test_pd_proxy_tls_secret_is_mounted_at_cert_path(rendered):
    docs = rendered["llmd-model-server-pd-tls-sim"]
    dep = next(d for d in kind(docs, "Deployment") if d["metadata"]["labels"]["llm-d.ai/role"] == "decode")
    spec = dep["spec"]["template"]["spec"]
    proxy = spec["containers"][0]
    cert_path = flags(proxy)["--cert-path"]
    (mount,) = [m for m in proxy["volumeMounts"] if m["mountPath"] == cert_path]
    (vol,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    assert vol["secret"]["secretName"] == "t"
    assert proxy["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"
    assert flags(proxy)["--allow-prefill"] == "10.0.0.0/8"


# ---- block hashing and KV events agree between the engines and the EPP --------------------------

def engine_containers(ms_docs):
    for d, c in containers(ms_docs):
        if c["name"] in ("vllm", "sim"):
            yield d, c


@pytest.mark.parametrize("g", GUIDES, ids=[g.id for g in GUIDES])
def test_block_size_hash_algo_and_seed_agree(g):
    epp_docs, ms_docs = guide_docs(g)
    cfg = yaml.safe_load(one(epp_docs, "ConfigMap")["data"]["config.yaml"])
    (epp_c,) = one(epp_docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    seeds = {env(epp_c)["PYTHONHASHSEED"]}
    engines = list(engine_containers(ms_docs))
    assert engines
    for _, c in engines:
        f = flags(c)
        assert f["--block-size"] == "64"
        if c["name"] == "vllm":
            assert f["--prefix-caching-hash-algo"] == "sha256_cbor"
            assert "--enable-prefix-caching" in f
        seeds.add(env(c)["PYTHONHASHSEED"])
    assert len(seeds) == 1 and seeds != {None}, f"PYTHONHASHSEED differs: {seeds}"
    for p in cfg["plugins"]:
        if p["type"] == "precise-prefix-cache-scorer":
            assert p["parameters"]["hashSeed"] == seeds.pop()
            assert p["parameters"]["blockSize"] == 64
            assert p["parameters"].get("hashAlgorithm", "sha256_cbor") == "sha256_cbor"


def kv_events_of(c) -> tuple[str, str] | None:
    """(endpoint, topic) of an engine container's KV events, or None."""
    f = flags(c)
    if c["name"] == "vllm":
        if "--kv-events-config" not in f:
            return None
        cfg = json.loads(f["--kv-events-config"])
        assert cfg["enable_kv_cache_events"] is True and cfg["publisher"] == "zmq"
        return cfg["endpoint"], cfg["topic"]
    if "--kv-events-endpoint" not in f:
        return None
    return f["--kv-events-endpoint"], f["--kv-events-topic"]


def check_kv_events(epp_docs, ms_docs, model):
    (epp_c,) = one(epp_docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    ef = flags(epp_c)
    cfg = yaml.safe_load(one(epp_docs, "ConfigMap")["data"]["config.yaml"])
    precise = any(p["type"] == "precise-prefix-cache-scorer" for p in cfg["plugins"])
    pool = one(epp_docs, "InferencePool")
    target = pool["spec"]["targetPorts"][0]["number"]
    events = [kv_events_of(c) for _, c in engine_containers(ms_docs)]
    if not precise:
        assert events and all(e is None for e in events), "KV events nobody reads"
        assert "--kv-events-bind" not in ef and "--kv-events-port" not in ef
        return
    assert events and all(e is not None for e in events), "the precise scorer needs every pod's KV events"
    for endpoint, topic in events:
        # The EPP knows a pod as <IP>:<pool target port> and hashes with the request's model.
        assert topic == f"kv@$(POD_IP):{target}@{model}"
        if "--kv-events-bind" in ef:
            svc = one(epp_docs, "Service")
            port = int(ef["--kv-events-bind"].rsplit(":", 1)[1])
            (sp,) = [p for p in svc["spec"]["ports"] if p["targetPort"] == "zmq"]
            (cp,) = [p for p in epp_c["ports"] if p["name"] == "zmq"]
            assert cp["containerPort"] == port
            ns = svc["metadata"]["namespace"]
            assert endpoint == f"tcp://{svc['metadata']['name']}.{ns}.svc.cluster.local:{sp['port']}"
        else:
            port = int(ef["--kv-events-port"])
            assert endpoint == f"tcp://*:{port}"
    if "--kv-events-port" in ef:
        for d, spec in pod_templates(ms_docs):
            eng = next(c for c in spec["containers"] if c["name"] in ("vllm", "sim"))
            assert {"name": "zmq", "containerPort": int(ef["--kv-events-port"]), "protocol": "TCP"} in eng["ports"]


@pytest.mark.parametrize("g", GUIDES, ids=[g.id for g in GUIDES])
def test_kv_events_reach_the_epp(g):
    epp_docs, ms_docs = guide_docs(g)
    model = g.release("llmd-model-server").values["model"]
    check_kv_events(epp_docs, ms_docs, model)
    cfg = yaml.safe_load(one(epp_docs, "ConfigMap")["data"]["config.yaml"])
    if any(p["type"] == "precise-prefix-cache-scorer" for p in cfg["plugins"]):
        # The EPP tokenizes with the served model's tokenizer.
        assert g.release("llmd-epp").values["tokenizer"]["models"] == [model]


@pytest.mark.parametrize("mode", ["central", "podDiscovery"])
def test_kv_events_modes_agree(mode):
    epp_docs = render(EPP, {"kvEvents": {"mode": mode}}, name="llmd-epp")
    ms_docs = render(MS, {"kvEvents": {"mode": mode}, "engine": "sim", "roles": {"decode": {"replicas": 2}}})
    check_kv_events(epp_docs, ms_docs, "meta-llama/Llama-3.1-8B-Instruct")
    # And a mismatch is caught: the publishers dial a Service port nobody binds.
    if mode == "central":
        wrong = render(MS, {"kvEvents": {"mode": mode, "eppService": "other-epp"}, "engine": "sim"})
        with pytest.raises(AssertionError):
            check_kv_events(epp_docs, wrong, "meta-llama/Llama-3.1-8B-Instruct")


# ---- the pool wiring ---------------------------------------------------------------------------

@pytest.mark.parametrize("g", GUIDES, ids=[g.id for g in GUIDES])
def test_inference_pool_and_route_wiring(g):
    epp_docs, ms_docs = guide_docs(g)
    pool, svc, route = one(epp_docs, "InferencePool"), one(epp_docs, "Service"), one(epp_docs, "HTTPRoute")
    (epp_c,) = one(epp_docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    ef = flags(epp_c)
    # EPP follows this pool; the pool's picker is this EPP's ext_proc port.
    assert ef["--pool-name"] == pool["metadata"]["name"] and ef["--pool-namespace"] == pool["metadata"]["namespace"]
    ref = pool["spec"]["endpointPickerRef"]
    assert ref["name"] == svc["metadata"]["name"] and ref.get("kind", "Service") == "Service"
    (sp,) = [p for p in svc["spec"]["ports"] if p["port"] == ref["port"]["number"]]
    (cp,) = [p for p in epp_c["ports"] if p["name"] == sp["targetPort"]]
    assert cp["containerPort"] == int(ef["--grpc-port"])
    # Route: the Gateway named in the values, to the pool.
    (parent,) = route["spec"]["parentRefs"]
    assert parent["name"] == g.release("llmd-epp").values["httpRoute"]["gateway"]["name"]
    (backend,) = route["spec"]["rules"][0]["backendRefs"]
    assert (backend["group"], backend["kind"], backend["name"]) == ("inference.networking.k8s.io", "InferencePool", pool["metadata"]["name"])
    # The pool selects every model-server pod, on the port that serves requests there.
    target = pool["spec"]["targetPorts"][0]["number"]
    selector = pool["spec"]["selector"]["matchLabels"]
    deps = kind(ms_docs, "Deployment")
    assert deps
    for d, spec in pod_templates(ms_docs):
        labels = d["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= labels.items(), d["metadata"]["name"]
        assert labels["llm-d.ai/role"] in ("prefill", "decode", "both")
        front = spec["containers"][0]
        assert int(flags(front)["--port"]) == target, d["metadata"]["name"]
        if front["name"] == "pd-proxy":
            assert flags(front)["--inference-pool"] == f"{pool['metadata']['namespace']}/{pool['metadata']['name']}"
    # EPP selector labels do not select the EPP itself or vice versa.
    epp_labels = one(epp_docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert not selector.items() <= epp_labels.items()


@pytest.mark.parametrize("g", [g for g in GUIDES if g.name == "pd-disaggregation"], ids=lambda g: g.id)
def test_pd_guide_roles_and_tensor_parallelism(g):
    epp_docs, ms_docs = guide_docs(g)
    deps = {d["metadata"]["labels"]["llm-d.ai/role"]: d for d in kind(ms_docs, "Deployment")}
    assert deps["prefill"]["spec"]["replicas"] == 2 and deps["decode"]["spec"]["replicas"] == 1
    for role, tp in (("prefill", "1"), ("decode", "2")):
        spec = deps[role]["spec"]["template"]["spec"]
        eng = next(c for c in spec["containers"] if c["name"] in ("vllm", "sim"))
        assert flags(eng)["--tensor-parallel-size"] == tp
        if eng["name"] == "vllm":
            assert eng["resources"]["limits"]["nvidia.com/gpu"] == int(tp)
    cfg = yaml.safe_load(one(epp_docs, "ConfigMap")["data"]["config.yaml"])
    # llm-d's current P/D shape: the decision uses the chosen decode pod's uncached tokens.
    assert [p for p in cfg["plugins"] if p["type"] == "disagg-profile-handler"]
    (decider,) = [p for p in cfg["plugins"] if p["type"] == "prefix-based-pd-decider"]
    assert decider["parameters"]["nonCachedTokens"] > 0
    assert {p["name"] for p in cfg["schedulingProfiles"]} == {"prefill", "decode"}
    for profile in cfg["schedulingProfiles"]:
        refs = [r["pluginRef"] for r in profile["plugins"]]
        assert "precise-prefix-cache-scorer" in refs, profile["name"]


@pytest.mark.parametrize("g", [g for g in GUIDES if g.name == "precise-prefix-cache-aware"], ids=lambda g: g.id)
def test_precise_guide_has_four_decode_pods_and_no_sidecar(g):
    _, ms_docs = guide_docs(g)
    (dep,) = kind(ms_docs, "Deployment")
    assert dep["metadata"]["labels"]["llm-d.ai/role"] == "decode" and dep["spec"]["replicas"] == 4
    assert [c["name"] for c in dep["spec"]["template"]["spec"]["containers"]] in (["vllm"], ["sim"])


# ---- RBAC --------------------------------------------------------------------------------------

def allowed(docs, sa: str, group: str, resource: str) -> set[str]:
    """Verbs the ServiceAccount `sa` has on `resource` through the rendered Roles."""
    roles = {r["metadata"]["name"]: r for r in kind(docs, "Role")}
    verbs: set[str] = set()
    for b in kind(docs, "RoleBinding"):
        if not any(s["kind"] == "ServiceAccount" and s["name"] == sa for s in b["subjects"]):
            continue
        for rule in roles[b["roleRef"]["name"]]["rules"]:
            if group in rule["apiGroups"] and resource in rule["resources"]:
                verbs |= set(rule["verbs"])
    return verbs


@pytest.mark.parametrize("cid", ["llmd-epp-defaults", "llmd-model-server-pd-tls-sim"]
                         + [f"{g.id}-llmd-epp" for g in GUIDES]
                         + [f"{g.id}-llmd-model-server" for g in GUIDES if g.name == "pd-disaggregation"])
def test_rbac_grants_what_the_epp_and_proxy_use(cid, rendered):
    docs = rendered[cid]
    users = [(d, spec) for d, spec in pod_templates(docs)
             if any(c["name"] in ("epp", "pd-proxy") for c in spec["containers"])]
    assert users
    for d, spec in users:
        sa = spec["serviceAccountName"]
        assert one(docs, "ServiceAccount", sa)
        assert {"get"} <= allowed(docs, sa, "inference.networking.k8s.io", "inferencepools")
        assert {"list"} <= allowed(docs, sa, "", "pods")
        # Nothing more than reading.
        for r in kind(docs, "Role"):
            for rule in r["rules"]:
                assert set(rule["verbs"]) <= {"get", "list", "watch"}


# ---- our image: flags exist, non-root, probes on real ports -------------------------------------

@pytest.fixture(scope="module")
def llmd_help(llmd_bin):
    cache: dict[str, str] = {}

    def get(sub: str) -> str:
        if sub not in cache:
            cache[sub] = subprocess.run([str(llmd_bin), sub, "--help"], capture_output=True, text=True, check=True, timeout=30).stdout
        return cache[sub]

    return get


def test_every_llmd_flag_is_in_the_subcommands_help(rendered, llmd_help):
    seen = set()
    for cid, docs in rendered.items():
        for _, c in containers(docs):
            if not is_llmd(c):
                continue
            sub = c["args"][0]
            assert sub in ("epp", "pd-proxy", "sim"), c["args"]
            help_text = llmd_help(sub)
            for f in flags(c):
                assert re.search(rf"^\s+(-\w, )?{re.escape(f)}\b", help_text, re.M), f"{cid}: llmd {sub} has no {f}"
                seen.add((sub, f))
    assert {s for s, _ in seen} == {"epp", "pd-proxy", "sim"}
    # The check bites: a flag llm-d's sidecar has and ours does not.
    assert not re.search(r"^\s+--moriio-write-mode\b", llmd_help("pd-proxy"), re.M)


def test_llmd_containers_are_hardened_and_probed(rendered):
    for cid, docs in rendered.items():
        for d, spec in pod_templates(docs):
            for c in spec.get("initContainers", []) + spec["containers"]:
                assert c.get("resources", {}).get("requests") or c.get("resources", {}).get("limits"), f"{cid} {c['name']}"
                if not is_llmd(c) and c["name"] != "tokenizer-download":
                    continue
                sc = {**spec.get("securityContext", {}), **c.get("securityContext", {})}
                assert sc.get("runAsNonRoot") is True and sc.get("allowPrivilegeEscalation") is False, f"{cid} {c['name']}"
                assert sc.get("readOnlyRootFilesystem") is True
            for c in spec["containers"]:
                ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
                f = flags(c)
                for probe in ("readinessProbe", "livenessProbe"):
                    p = c.get(probe)
                    assert p, f"{cid} {c['name']} has no {probe}"
                    if "grpc" in p:
                        # EPP: grpc.health.v1 on --grpc-health-port, a service it reports.
                        assert p["grpc"]["port"] == int(f["--grpc-health-port"]) == ports["grpc-health"]
                        assert p["grpc"]["service"] in ("liveness", "readiness")
                    else:
                        port = p["httpGet"]["port"]
                        port = ports[port] if isinstance(port, str) else port
                        assert p["httpGet"]["path"] == "/health" and port == int(f["--port"]), f"{cid} {c['name']}"


def test_standard_labels(rendered):
    for cid, docs in rendered.items():
        for d in docs:
            labels = d["metadata"].get("labels", {})
            for k in ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/version",
                      "app.kubernetes.io/managed-by", "app.kubernetes.io/part-of", "helm.sh/chart"):
                assert k in labels, f"{cid} {d['kind']} {d['metadata']['name']} lacks {k}"
            assert d["metadata"]["namespace"] == NS


def test_monitors_scrape_declared_ports(rendered):
    docs = rendered["llmd-epp-monitoring"]
    sm, svc = one(docs, "ServiceMonitor"), one(docs, "Service")
    assert {e["port"] for e in sm["spec"]["endpoints"]} <= {p["name"] for p in svc["spec"]["ports"]}
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    docs = rendered["llmd-model-server-pd-tls-sim"]
    pm = one(docs, "PodMonitor")
    pod_ports = {p["name"] for _, c in containers(docs) for p in c.get("ports", [])}
    assert {e["port"] for e in pm["spec"]["podMetricsEndpoints"]} <= pod_ports
    for d, _ in pod_templates(docs):
        assert pm["spec"]["selector"]["matchLabels"].items() <= d["spec"]["template"]["metadata"]["labels"].items()


# ---- tracing -----------------------------------------------------------------------------------

def test_otel_settings(rendered):
    # Off by default: no OTEL variables at all.
    for cid in ("llmd-epp-defaults", "llmd-model-server-defaults"):
        for _, c in containers(rendered[cid]):
            assert not any(k.startswith("OTEL_") for k in env(c)), cid
            assert "--otlp-traces-endpoint" not in flags(c)
    # Guides: every component points at the collector, 100% sampling.
    for g in GUIDES:
        for docs in guide_docs(g):
            for _, c in containers(docs):
                if c["name"] == "tokenizer-download":
                    continue
                e = env(c)
                assert e["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector.observability.svc.cluster.local:4317", c["name"]
                assert e["OTEL_TRACES_SAMPLER"] == "parentbased_always_on"
                assert e["OTEL_SERVICE_NAME"]
                if c["name"] == "vllm":
                    assert flags(c)["--otlp-traces-endpoint"] == e["OTEL_EXPORTER_OTLP_ENDPOINT"]
    # Chart defaults are the production ones.
    for chart in (EPP, MS):
        otel = yaml.safe_load((chart / "values.yaml").read_text())["otel"]
        assert (otel["sampler"], otel["samplerArg"]) == ("parentbased_traceidratio", "0.1")


def test_otel_collector_example():
    cfg = yaml.safe_load((ROOT / "docs" / "otel-collector.yaml").read_text())
    protocols = cfg["receivers"]["otlp"]["protocols"]
    assert protocols["grpc"]["endpoint"].endswith(":4317") and protocols["http"]["endpoint"].endswith(":4318")
    assert "batch" in cfg["processors"]
    traces = cfg["service"]["pipelines"]["traces"]
    assert traces["receivers"] == ["otlp"] and "batch" in traces["processors"]
    assert "debug" in traces["exporters"] and any(e == "otlp" or e.startswith("otlp/") for e in traces["exporters"])
    for e in traces["exporters"] + traces["processors"]:
        assert e in cfg["exporters"] or e in cfg["processors"], e


# ---- the EPP accepts each guide's scheduler config ----------------------------------------------

def start_epp(llmd_bin: Path, config: str, tmp_path: Path) -> tuple[bool, str]:
    """Starts `llmd epp` on loopback with `config`; (serving, output)."""
    (tmp_path / "config.yaml").write_text(config)
    (tmp_path / "endpoints.yaml").write_text("endpoints: []\n")
    proc = subprocess.Popen(
        [str(llmd_bin), "epp", "--log-format=json", "--host=127.0.0.1", "--grpc-port=0", "--grpc-health-port=0",
         "--metrics-port=0", f"--config={tmp_path / 'config.yaml'}", f"--endpoints-file={tmp_path / 'endpoints.yaml'}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = []
    deadline = time.monotonic() + 20
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            out.append(line)
            if "llmd-epp serving" in line:
                return True, "".join(out)
            if time.monotonic() > deadline:
                break
        return False, "".join(out)
    finally:
        proc.kill()
        proc.wait(timeout=10)


@pytest.mark.parametrize("g", GUIDES, ids=[g.id for g in GUIDES])
def test_epp_starts_with_the_guide_config(g, llmd_bin, tmp_path):
    epp_docs, _ = guide_docs(g)
    serving, out = start_epp(llmd_bin, one(epp_docs, "ConfigMap")["data"]["config.yaml"], tmp_path)
    assert serving, out


def test_epp_refuses_a_broken_config(llmd_bin, tmp_path):
    """Control for the test above: a config the EPP rejects is seen as rejected."""
    cfg = "plugins:\n  - type: decode-filter\n    parameters: {colour: red}\nschedulingProfiles:\n  - name: d\n    plugins: [{pluginRef: decode-filter}]\n"
    serving, out = start_epp(llmd_bin, cfg, tmp_path)
    assert not serving and "takes no parameters" in out


# ---- llm-d's values shape (inferenceExtension, inferencePool, pluginsCustomConfig) ---------------

LLMD_VALUES = sorted((ROOT / "tests" / "ops" / "llm-d").glob("*.values.yaml"))


def run_rendered_epp(llmd_bin: Path, args: list[str], config: str, tmp_path: Path,
                     endpoints: list[dict] | None = None, probe=None) -> tuple[bool, str, object]:
    """Starts `llmd epp` with a rendered container's arguments, on loopback and without a cluster:
    ports 0, the config in a file, an endpoints file (`endpoints`) instead of the InferencePool.
    Once it serves, calls `probe(metrics address)` and returns (serving, output, what it returned)."""
    (tmp_path / "config.yaml").write_text(config)
    (tmp_path / "endpoints.yaml").write_text(yaml.safe_dump({"endpoints": endpoints or []}))
    argv = [str(llmd_bin)]
    for a in args:
        name = a.split("=", 1)[0]
        if name in ("--pool-name", "--pool-namespace", "--discovery-interval-ms"):
            continue
        if name in ("--grpc-port", "--grpc-health-port", "--metrics-port"):
            a = f"{name}=0"
        elif name == "--config":
            a = f"--config={tmp_path / 'config.yaml'}"
        elif name == "--kv-events-bind":
            a = "--kv-events-bind=tcp://127.0.0.1:0"
        argv.append(a)
    argv += ["--host=127.0.0.1", f"--endpoints-file={tmp_path / 'endpoints.yaml'}"]
    hub = ROOT / ".cache" / "hf" / "hub"
    env_ = {**__import__("os").environ, "HF_HUB_CACHE": str(hub)}
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env_)
    out: list[str] = []
    deadline = time.monotonic() + 60
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            out.append(line)
            if "llmd-epp serving" in line:
                m = re.search(r'"metrics":"([^"]+)"', line)
                return True, "".join(out), probe(m.group(1)) if probe and m else None
            if time.monotonic() > deadline:
                break
        return False, "".join(out), None
    finally:
        proc.kill()
        proc.wait(timeout=10)


def start_sims(llmd_bin: Path, roles: list[str], tmp_path: Path) -> tuple[list[subprocess.Popen], list[dict]]:
    """One `llmd sim` per role on loopback, serving Llama-3.1-8B-Instruct (the guides' model)."""
    import prom_util as pu

    snaps = sorted((ROOT / ".cache" / "hf" / "hub" / "models--meta-llama--Llama-3.1-8B-Instruct" / "snapshots").glob("*"))
    require(bool(snaps), "no Llama-3.1 tokenizer in .cache/hf (scripts/fetch-tokenizers.sh)")
    procs, endpoints = [], []
    for i, role in enumerate(roles):
        port = pu.free_port()
        log = (tmp_path / f"sim-{i}.log").open("w")
        procs.append(subprocess.Popen([str(llmd_bin), "sim", "--host", "127.0.0.1", "--port", str(port), "--model",
                                       "meta-llama/Llama-3.1-8B-Instruct", "--tokenizer", str(snaps[0]), "--role", role],
                                      stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
        endpoints.append({"address": "127.0.0.1", "port": port, "role": role, "model": "meta-llama/Llama-3.1-8B-Instruct"})
    deadline = time.monotonic() + 60
    import urllib.request
    for e in endpoints:
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{e['port']}/metrics", timeout=5).read()
                break
            except OSError:
                assert time.monotonic() < deadline, (tmp_path / "sim-0.log").read_text()
                time.sleep(0.2)
    return procs, endpoints


@pytest.mark.parametrize("vf", LLMD_VALUES, ids=lambda p: p.stem)
def test_llm_d_values_render_a_working_epp(vf, llmd_bin, llmd_help, tmp_path):
    """A helmfile's values written for llm-d render with our chart, as valid objects wired the way
    llm-d's are, and the EPP they describe starts and serves llm-d's metric names."""
    values = yaml.safe_load(vf.read_text())
    docs = render(EPP, values, name="gaie", namespace=NS)
    for d in docs:
        if d["kind"] in ("InferencePool", "HTTPRoute"):
            assert cr_errors(d) == [], f"{d['kind']} {d['metadata']['name']}"
        elif d["kind"] not in ("ServiceMonitor", "PodMonitor"):
            kube_validate(d)
    ie, ip = values.get("inferenceExtension", {}), values["inferencePool"]
    pool = one(docs, "InferencePool")
    if "targetPorts" in ip:
        assert pool["spec"]["targetPorts"] == ip["targetPorts"]
    assert pool["spec"]["selector"]["matchLabels"] == ip["modelServers"]["matchLabels"]
    assert pool["spec"]["endpointPickerRef"]["port"]["number"] == ie.get("extProcPort", 9002)
    dep = one(docs, "Deployment")
    spec = dep["spec"]["template"]["spec"]
    assert [c["name"] for c in spec["containers"]] == ["epp"], "the UDS tokenizer sidecar is not rendered"
    epp = spec["containers"][0]
    f = flags(epp)
    for k, v in ie.get("flags", {}).items():
        assert f[f"--{k}"] == str(v), k
    for name in f:
        assert re.search(rf"^\s+(-\w, )?{re.escape(name)}\b", llmd_help("epp"), re.M), f"llmd epp has no {name}"
    if "tracing" in ie:
        assert f["--tracing"] == str(ie["tracing"]["enabled"]).lower()
    ports = [p["containerPort"] for p in epp["ports"]]
    assert len(ports) == len(set(ports)), f"duplicate container ports {ports}"
    svc_ports = [p["port"] for p in one(docs, "Service")["spec"]["ports"]]
    assert len(svc_ports) == len(set(svc_ports)), f"duplicate service ports {svc_ports}"
    if ie.get("monitoring", {}).get("prometheus", {}).get("enabled"):
        assert one(docs, "ServiceMonitor")
    config = one(docs, "ConfigMap")["data"]["config.yaml"]
    file = ie.get("pluginsConfigFile") or ip.get("pluginsConfigFile")
    custom = {**ip.get("pluginsCustomConfig", {}), **ie.get("pluginsCustomConfig", {})}
    if file in custom:
        assert yaml.safe_load(config) == yaml.safe_load(custom[file]), "the config as written"
    else:
        assert {p["type"] for p in yaml.safe_load(config)["plugins"]} == {"queue-scorer", "kv-cache-utilization-scorer", "prefix-cache-scorer"}
    # The EPP those objects describe starts, serves llm-d's metric names, and routes a request
    # to a model server of the right role (decode when the config filters by role).
    types = {p["type"] for p in yaml.safe_load(config)["plugins"]}
    pd = "decode-filter" in types
    sims, endpoints = start_sims(llmd_bin, ["decode", "prefill"] if pd else ["decode", "decode"], tmp_path)

    def probe(metrics_addr: str) -> tuple[str, dict]:
        import urllib.request

        metrics = urllib.request.urlopen(f"http://{metrics_addr}/metrics", timeout=10).read().decode()
        body = json.dumps({"model": "meta-llama/Llama-3.1-8B-Instruct", "prompt": "word " * 200, "max_tokens": 1}).encode()
        req = urllib.request.Request(f"http://{metrics_addr}/debug/route", data=body, headers={"content-type": "application/json"})
        route = json.loads(urllib.request.urlopen(req, timeout=60).read())
        return metrics, route

    try:
        serving, out, got = run_rendered_epp(llmd_bin, epp["args"], config, tmp_path, endpoints, probe)
    finally:
        for p in sims:
            p.kill()
            p.wait(timeout=10)
    assert serving, out
    metrics, route = got
    assert "llm_d_epp_info" in metrics and "inference_extension_info" in metrics, metrics
    assert route.get("endpoints"), f"{route}\n{out}"
    picked = route["endpoints"][0]
    want = [f"127.0.0.1:{e['port']}" for e in endpoints if not pd or e["role"] == "decode"]
    assert picked in want, f"{picked} not in {want}: {route}"


def test_llm_d_values_with_a_missing_config_file_fail():
    values = {"inferenceExtension": {"pluginsConfigFile": "nope.yaml", "pluginsCustomConfig": {"other.yaml": "plugins: []"}}}
    with pytest.raises(Exception, match="nope.yaml"):
        render(EPP, values, name="gaie", namespace=NS)


def test_replicas_get_a_disruption_budget_that_selects_them(rendered):
    assert not kind(rendered["llmd-epp-defaults"], "PodDisruptionBudget"), "one replica: no budget"
    docs = rendered["llmd-epp-replicas"]
    (pdb,) = kind(docs, "PodDisruptionBudget")
    dep = one(docs, "Deployment")
    assert dep["spec"]["replicas"] == 2
    assert pdb["spec"]["maxUnavailable"] == 1
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()


# ---- TLS on the ext_proc port, and the gateway side that dials it --------------------------------

def ext_proc_tls(docs) -> tuple[bool, str, dict | None]:
    """(the EPP serves TLS, the Service port's appProtocol, the DestinationRule's trafficPolicy)."""
    f = flags(one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0])
    port = next(p for p in one(docs, "Service")["spec"]["ports"] if p["name"] == "grpc-ext-proc")
    rules = kind(docs, "DestinationRule")
    return f["--secure-serving"] == "true", port["appProtocol"], rules[0]["spec"].get("trafficPolicy") if rules else None


def test_ext_proc_serves_tls_by_default_and_istio_dials_it(rendered):
    """llm-d's default: TLS on ext_proc. The Service says h2 over TLS, and with provider istio the
    DestinationRule originates TLS without verification (the certificate is self-signed); the
    health port stays cleartext for kubelet's gRPC probes."""
    secure, proto, _ = ext_proc_tls(rendered["llmd-epp-defaults"])
    assert secure and proto == "http2"
    assert not kind(rendered["llmd-epp-defaults"], "DestinationRule"), "no provider: no gateway objects"
    docs = rendered["llmd-epp-tls-secret-istio"]
    secure, proto, policy = ext_proc_tls(docs)
    assert secure and proto == "http2" and policy == {"tls": {"mode": "SIMPLE", "insecureSkipVerify": True}}
    rule = one(docs, "DestinationRule")
    svc = one(docs, "Service")
    assert rule["spec"]["host"] == f"{svc['metadata']['name']}.{NS}.svc.cluster.local"
    health = next(p for p in svc["spec"]["ports"] if p["name"] == "grpc-health")
    assert health["appProtocol"] == "kubernetes.io/h2c"
    # The secret is mounted where --cert-path points.
    spec = one(docs, "Deployment")["spec"]["template"]["spec"]
    c = spec["containers"][0]
    vol = next(v for v in spec["volumes"] if v.get("secret", {}).get("secretName") == "epp-tls")
    mount = next(m for m in c["volumeMounts"] if m["name"] == vol["name"])
    assert flags(c)["--cert-path"] == mount["mountPath"] and mount["readOnly"]
    # Every guide runs behind Istio with the EPP's default TLS.
    for g in GUIDES:
        epp_docs, _ = guide_docs(g)
        assert ext_proc_tls(epp_docs) == (True, "http2", {"tls": {"mode": "SIMPLE", "insecureSkipVerify": True}}), g.id


def test_plaintext_ext_proc_is_cleartext_end_to_end(rendered):
    """Control: tls.enabled=false is plaintext on both sides (h2c, no TLS origination), and
    llm-d's inferenceExtension.flags.secure-serving wins over tls.enabled, rendered once."""
    assert ext_proc_tls(rendered["llmd-epp-plaintext-istio"]) == (False, "kubernetes.io/h2c", None)
    docs = render(EPP, {"inferenceExtension": {"flags": {"secure-serving": False}}, "provider": {"name": "istio"}},
                  name="gaie", namespace=NS)
    assert ext_proc_tls(docs) == (False, "kubernetes.io/h2c", None)
    args = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert sum(a.startswith("--secure-serving") for a in args) == 1, args

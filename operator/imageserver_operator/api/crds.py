"""CustomResourceDefinitions generated from the pydantic models (`models.py`).

pydantic's JSON Schema becomes a structural OpenAPI v3 schema: references inlined, optional
fields unwrapped, titles dropped, defaults kept (so the API server fills them in, nested
objects included), and the models' CEL rules carried over as `x-kubernetes-validations`.
"""

from __future__ import annotations

from typing import Any

import yaml
from pydantic import BaseModel

from imageserver_operator.api.models import (
    GROUP,
    MAX_NAME,
    RELEASE_EXCEPTION_ANNOTATION,
    RELEASES_FROZEN,
    VERSION,
    ImageServerSpec,
    ImageServerStatus,
    PostmortemSpec,
    cel,
)

# Keywords a structural schema may carry; anything else pydantic emits is dropped.
KEPT = {
    "type",
    "description",
    "default",
    "enum",
    "pattern",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "maxProperties",
    "items",
    "properties",
    "required",
    "x-kubernetes-validations",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
}


def _resolved(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """Follow a $ref, and turn Optional[X] into X (an absent field already means None)."""
    if "$ref" in node:
        target = dict(defs[node["$ref"].rsplit("/", 1)[-1]])
        target.update({k: v for k, v in node.items() if k != "$ref"})
        return _resolved(target, defs)
    if "anyOf" in node:
        branches = [b for b in node["anyOf"] if b.get("type") != "null"]
        if len(branches) != 1:
            raise ValueError(f"cannot express a union in a structural schema: {node['anyOf']}")
        merged = {**{k: v for k, v in node.items() if k not in ("anyOf", "default")}, **branches[0]}
        if node.get("default") is not None:
            merged["default"] = node["default"]
        return _resolved(merged, defs)
    return node


def _exclusive_bounds(node: dict[str, Any]) -> None:
    """JSON Schema 2020 exclusive bounds are numbers; OpenAPI v3.0 (CRDs) has booleans."""
    for exclusive, bound in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        value = node.get(exclusive)
        if isinstance(value, int | float) and not isinstance(value, bool):
            node[bound] = node.pop(exclusive)
            node[exclusive] = True


def _structural(node: Any, defs: dict[str, Any]) -> Any:
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in _resolved(node, defs).items():
        if key == "properties":
            out[key] = {name: _structural(child, defs) for name, child in value.items()}
        elif key == "items" or (key == "additionalProperties" and isinstance(value, dict)):
            out[key] = _structural(value, defs)  # a list's items, a map's values (not `false`)
        elif key in KEPT:
            out[key] = value
    if "properties" in out:
        out.setdefault("type", "object")
    _exclusive_bounds(out)
    return out


def _plain(value: Any) -> Any:
    """A default as the API server takes it: models (alone or in a list) as their JSON."""
    if isinstance(value, BaseModel):
        return value.model_dump(by_alias=True, exclude_none=True)
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


def _factory_defaults(model: type[BaseModel], node: dict[str, Any]) -> None:
    """pydantic leaves out defaults made by default_factory; the API server needs them to
    default nested objects, so they are written in from the model."""
    for name, field in model.model_fields.items():
        child = node.get("properties", {}).get(field.alias or name)
        if child is None:
            continue
        if field.default_factory is not None:
            value = field.default_factory()  # type: ignore[call-arg]
            child["default"] = _plain(value)
        annotation = field.annotation
        nested = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
        if nested is None:
            nested = next(
                (
                    a
                    for a in getattr(annotation, "__args__", ())
                    if isinstance(a, type) and issubclass(a, BaseModel)
                ),
                None,
            )
        if nested is not None:
            _factory_defaults(nested, child.get("items", child) if child.get("type") == "array" else child)


def openapi(model: type[BaseModel]) -> dict[str, Any]:
    schema = model.model_json_schema(by_alias=True, mode="validation")
    structural = dict(_structural(schema, schema.get("$defs", {})))
    _factory_defaults(model, structural)
    return structural


def _column(name: str, type_: str, path: str, description: str, priority: int = 0) -> dict[str, Any]:
    column = {"name": name, "type": type_, "jsonPath": path, "description": description}
    return {**column, "priority": priority} if priority else column


def _crd(
    kind: str,
    short_name: str,
    *,
    columns: list[dict[str, Any]],
    description: str,
    properties: dict[str, Any],
    validations: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A namespaced CRD of our group with one version; status subresource when it has a status."""
    plural = kind.lower() + "s"
    root: dict[str, Any] = {"type": "object", "description": description, "required": ["spec"]}
    if validations:
        root["x-kubernetes-validations"] = validations
    root["properties"] = {
        "apiVersion": {"type": "string"},
        "kind": {"type": "string"},
        "metadata": {"type": "object"},
        **properties,
    }
    version: dict[str, Any] = {"name": VERSION, "served": True, "storage": True}
    if "status" in properties:
        version["subresources"] = {"status": {}}
    version["additionalPrinterColumns"] = columns
    version["schema"] = {"openAPIV3Schema": root}
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": [short_name],
                "categories": ["imageserver"],
            },
            "scope": "Namespaced",
            "versions": [version],
        },
    }


AGE = _column("Age", "date", ".metadata.creationTimestamp", "Time since creation.")


def imageserver_crd() -> dict[str, Any]:
    spec = openapi(ImageServerSpec)
    spec["description"] = "What to run: image and version, datacenters, shards, storage, SLOs and automation."
    status = openapi(ImageServerStatus)
    status["description"] = "What the operator sees and has done."
    return _crd(
        "ImageServer",
        "imgs",
        columns=[
            _column(
                "Ready", "string", '.status.conditions[?(@.type=="Ready")].status', "Every workload is ready."
            ),
            _column("Datacenters", "string", ".status.datacenterSummary", "Datacenters, drained marked."),
            _column("Shards", "integer", ".spec.shards", "Shards per datacenter."),
            _column("Version", "string", ".status.rollout.target", "The version rolled out last."),
            _column(
                "Rollout", "string", ".status.rollout.phase", "Progressing, Paused, Complete or Aborted."
            ),
            _column("Budget", "string", ".status.errorBudgetRemaining", "Error budget left."),
            AGE,
        ],
        description="A distributed image service: sharded, replicated storage and stateless frontends in one "
        "or more datacenters, watched against its SLOs.",
        properties={"spec": spec, "status": status},
        validations=[
            cel(
                f"self.metadata.name.size() <= {MAX_NAME}",
                f"the name must be at most {MAX_NAME} characters: the names of the objects it owns add the "
                "datacenter and shard to it",
            )
        ],
    )


def postmortem_crd() -> dict[str, Any]:
    spec = openapi(PostmortemSpec)
    spec["description"] = (
        "The incident, in the Google SRE postmortem form: drafted by the operator, finished by people."
    )
    return _crd(
        "Postmortem",
        "pm",
        columns=[
            _column("ImageServer", "string", ".spec.imageServer", "The ImageServer hit."),
            _column("State", "string", ".spec.state", "Open or Resolved."),
            _column("Title", "string", ".spec.title", "What happened."),
            _column("Started", "string", ".spec.startedAt", "First burn seen."),
            AGE,
        ],
        description="One incident of an ImageServer, exportable as markdown "
        "(imageserver-operator postmortem export NAME).",
        properties={"spec": spec},
    )


FREEZE_POLICY = "imageserver-release-freeze"


def release_freeze_policy() -> list[dict[str, Any]]:
    """A ValidatingAdmissionPolicy (Kubernetes >= 1.30) and its binding: while the SLO loop
    says releases are frozen (status condition ReleasesFrozen=True, from spec.budgetPolicy),
    a changed spec.version is refused by the API server, with the budget left and how to make
    an exception, unless the object carries the exception annotation with a reason."""
    frozen = f"oldObject.status.conditions.filter(c, c.type == '{RELEASES_FROZEN}' && c.status == 'True')"
    annotation = RELEASE_EXCEPTION_ANNOTATION
    policy = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": FREEZE_POLICY},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {
                "resourceRules": [
                    {
                        "apiGroups": [GROUP],
                        "apiVersions": [VERSION],
                        "operations": ["UPDATE"],
                        "resources": ["imageservers"],
                    }
                ]
            },
            "variables": [
                {
                    "name": "frozen",
                    "expression": "has(oldObject.status) && has(oldObject.status.conditions) && "
                    f"{frozen}.size() > 0",
                },
                {
                    "name": "exception",
                    "expression": "has(object.metadata.annotations) && "
                    f"'{annotation}' in object.metadata.annotations && "
                    f"object.metadata.annotations['{annotation}'].trim() != ''",
                },
            ],
            "validations": [
                {
                    # Back to the stable version is a retreat, not a release.
                    "expression": "object.spec.version == oldObject.spec.version || !variables.frozen "
                    "|| variables.exception || (has(oldObject.status.rollout) "
                    "&& object.spec.version == oldObject.status.rollout.stable)",
                    "messageExpression": f"'releases of ' + object.metadata.name + ' are frozen: ' + "
                    f"{frozen}[0].message + '. spec.version stays ' + oldObject.spec.version + "
                    f'\'. For a P0 or security fix, apply it with the annotation {annotation}="<reason>" '
                    "(recorded in an Event, in Slack and in the next Postmortem)'",
                    "reason": "Forbidden",
                }
            ],
        },
    }
    binding = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": FREEZE_POLICY},
        "spec": {"policyName": FREEZE_POLICY, "validationActions": ["Deny"]},
    }
    return [policy, binding]


def all_crds() -> dict[str, dict[str, Any]]:
    """File name in crds/ → object: the CRDs, and the admission policy that goes with them.
    Installed like CRDs (Helm's crds/: created once per cluster, skipped when present, never
    deleted by an uninstall), so several releases in one cluster share one; one object per
    file, so a present policy does not keep a missing binding from being created."""
    policy, binding = release_freeze_policy()
    return {
        f"{GROUP}_imageservers.yaml": imageserver_crd(),
        f"{GROUP}_postmortems.yaml": postmortem_crd(),
        f"{GROUP}_release-freeze-policy.yaml": policy,
        f"{GROUP}_release-freeze-binding.yaml": binding,
    }


def to_yaml(crd: dict[str, Any]) -> str:
    header = "# Generated by `imageserver-operator crds` from the operator's models.py. Do not edit.\n"
    return header + yaml.safe_dump(crd, sort_keys=False, width=100, allow_unicode=True)

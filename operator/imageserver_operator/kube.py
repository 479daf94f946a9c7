"""The Kubernetes API, as thin as it can be: apply, status, events, annotations, discovery.

Blocking calls of the official client; the controller runs them in threads. Everything the
operator writes goes through `FIELD_MANAGER` with server-side apply.
"""

from __future__ import annotations

import base64
import datetime
import logging
import os
from typing import Any

from kubernetes import client, config
from kubernetes.client import ApiException
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import ResourceNotFoundError

from imageserver_operator.models import GROUP, VERSION
from imageserver_operator.render import Manifest

log = logging.getLogger(__name__)
FIELD_MANAGER = "imageserver-operator"
OPTIONAL_APIS = {
    "gateway_api": "httproutes.gateway.networking.k8s.io",
    "service_monitor": "servicemonitors.monitoring.coreos.com",
    "prometheus_rule": "prometheusrules.monitoring.coreos.com",
}


def api_client() -> client.ApiClient:
    """In-cluster credentials when running in a pod, else the kubeconfig ($KUBECONFIG)."""
    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        # The client reads $KUBECONFIG once, at import; read it now instead.
        config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))  # type: ignore[no-untyped-call]
    return client.ApiClient()


class Kube:
    def __init__(self, api: client.ApiClient, instance: str = FIELD_MANAGER) -> None:
        self.api = api
        self.instance = instance  # this replica, in the Events it posts
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.extensions = client.ApiextensionsV1Api(api)
        self.coordination = client.CoordinationV1Api(api)
        self._dynamic: DynamicClient | None = None

    @property
    def dynamic(self) -> DynamicClient:
        if self._dynamic is None:  # discovery is slow: only when the first object is applied
            self._dynamic = DynamicClient(self.api)  # type: ignore[no-untyped-call]
        return self._dynamic

    def apply(self, obj: Manifest) -> None:
        try:
            resource = self.dynamic.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
        except ResourceNotFoundError:  # a CRD installed after discovery ran
            self.dynamic.resources.invalidate_cache()
            resource = self.dynamic.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
        resource.server_side_apply(
            body=obj,
            name=obj["metadata"]["name"],
            namespace=obj["metadata"].get("namespace"),
            field_manager=FIELD_MANAGER,
            force_conflicts=True,
        )

    def create_secret_once(self, obj: Manifest) -> None:
        """Create a Secret unless one of that name exists (409), without reading it: the
        operator may create Secrets, never get or list them."""
        try:
            self.core.create_namespaced_secret(obj["metadata"]["namespace"], obj)  # type: ignore[arg-type]  # a dict body is sent as it is
        except ApiException as error:
            if error.status != 409:
                raise

    def delete(self, obj: Manifest) -> None:
        resource = self.dynamic.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
        try:
            resource.delete(
                name=obj["metadata"]["name"],
                namespace=obj["metadata"].get("namespace"),
                body={"propagationPolicy": "Background"},
            )
        except ApiException as error:
            if error.status != 404:
                raise

    def patch_status(
        self, namespace: str, name: str, status: dict[str, Any], resource_version: str | None = None
    ) -> bool:
        """Merge `status` in; with `resource_version`, only onto that version of the object
        (the other loop may have written since this copy was read): False on a conflict."""
        body: dict[str, Any] = {"status": status}
        if resource_version:
            body["metadata"] = {"resourceVersion": resource_version}
        try:
            self.custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, "imageservers", name, body
            )
        except ApiException as error:
            if error.status == 409 and resource_version:
                return False
            raise
        return True

    def annotate(self, namespace: str, name: str, annotations: dict[str, str | None]) -> None:
        """Set (or, with None, remove) annotations on an ImageServer."""
        self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, "imageservers", name, {"metadata": {"annotations": annotations}}
        )

    def get_imageserver(self, namespace: str, name: str) -> dict[str, Any]:
        body = self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "imageservers", name)
        assert isinstance(body, dict)
        return body

    def set_version(self, namespace: str, name: str, version: str, annotations: dict[str, str]) -> None:
        """A rollback: the spec itself names the previous version, so reconciles keep it."""
        self.custom.patch_namespaced_custom_object(
            GROUP,
            VERSION,
            namespace,
            "imageservers",
            name,
            {"metadata": {"annotations": annotations}, "spec": {"version": version}},
        )

    def create_postmortem(self, namespace: str, name: str, spec: dict[str, Any]) -> None:
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "Postmortem",
            "metadata": {"name": name, "namespace": namespace},
            "spec": spec,
        }
        try:
            self.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "postmortems", body)
        except ApiException as error:
            if error.status != 409:  # already there: opened before a restart
                raise

    def append_timeline(self, namespace: str, name: str, entry: dict[str, str], resolution: str = "") -> None:
        """A timeline entry; with `resolution`, also what mitigated it (added to what is there)."""
        spec = self.get_postmortem(namespace, name).get("spec", {})
        patch: dict[str, Any] = {"timeline": [*spec.get("timeline", []), entry]}
        if resolution:
            patch["resolution"] = "\n".join(filter(None, [spec.get("resolution", ""), resolution]))
        self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, "postmortems", name, {"spec": patch}
        )

    def resolve_postmortem(
        self, namespace: str, name: str, resolved_at: str, impact: dict[str, float] | None = None
    ) -> None:
        body = self.get_postmortem(namespace, name)
        spec = body.get("spec", {})
        started = spec.get("startedAt", resolved_at)
        seconds = int(
            (
                datetime.datetime.fromisoformat(resolved_at.replace("Z", "+00:00"))
                - datetime.datetime.fromisoformat(started.replace("Z", "+00:00"))
            ).total_seconds()
        )
        timeline = [
            *spec.get("timeline", []),
            {"time": resolved_at, "event": "incident resolved: burn back under budget", "actor": "operator"},
        ]
        patch = {
            "spec": {
                "state": "Resolved",
                "resolvedAt": resolved_at,
                "timeline": timeline,
                "impact": {**spec.get("impact", {}), **(impact or {}), "durationSeconds": max(seconds, 0)},
            }
        }
        self.custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, "postmortems", name, patch)

    def secret_value(self, namespace: str, name: str, key: str) -> str:
        """One key of one Secret, read by name (the operator may not list Secrets)."""
        secret = self.core.read_namespaced_secret(name, namespace)
        data = (secret.data or {}).get(key)
        if data is None:
            raise KeyError(f"secret {namespace}/{name} has no key {key!r}")
        return base64.b64decode(data).decode().strip()

    def get_postmortem(self, namespace: str, name: str) -> dict[str, Any]:
        body = self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "postmortems", name)
        assert isinstance(body, dict)
        return body

    def event(self, owner: Manifest, type_: str, reason: str, message: str) -> None:
        """A Kubernetes Event on the ImageServer (kubectl describe imgs NAME shows them)."""
        meta = owner["metadata"]
        now = datetime.datetime.now(datetime.UTC)
        body = client.CoreV1Event(
            metadata=client.V1ObjectMeta(generate_name=f"{meta['name']}.", namespace=meta["namespace"]),
            involved_object=client.V1ObjectReference(
                api_version=f"{GROUP}/{VERSION}",
                kind="ImageServer",
                name=meta["name"],
                namespace=meta["namespace"],
                uid=meta["uid"],
                resource_version=meta.get("resourceVersion"),
            ),
            type=type_,
            reason=reason,
            message=message[:1024],
            first_timestamp=now,
            last_timestamp=now,
            count=1,
            source=client.V1EventSource(component=FIELD_MANAGER, host=self.instance),
            reporting_component=FIELD_MANAGER,
            reporting_instance=self.instance,
        )
        try:
            self.core.create_namespaced_event(meta["namespace"], body)
        except ApiException as error:  # an event is worth a log line, never a failed reconcile
            log.warning("could not post event %s: %s", reason, error.reason)

    def optional_apis(self) -> dict[str, bool]:
        present = {}
        for flag, crd in OPTIONAL_APIS.items():
            try:
                self.extensions.read_custom_resource_definition(crd)
                present[flag] = True
            except ApiException as error:
                if error.status != 404:
                    raise
                present[flag] = False
        return present

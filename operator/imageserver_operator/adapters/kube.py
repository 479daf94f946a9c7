"""The Kubernetes API, as thin as it can be: apply, status, events, annotations, discovery.

Blocking calls of the official client; the controller runs them in threads. Everything the
operator writes goes through `FIELD_MANAGER` with server-side apply.
"""

from __future__ import annotations

import base64
import datetime
import logging
import os
from collections.abc import Callable
from typing import Any

from kubernetes import client, config
from kubernetes.client import ApiException
from kubernetes.client.rest import RESTResponse
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import ResourceNotFoundError

from imageserver_operator.api.models import GROUP, VERSION
from imageserver_operator.core.render import Manifest

log = logging.getLogger(__name__)
FIELD_MANAGER = "imageserver-operator"  # children and the reconcile loop's status fields
SLO_FIELD_MANAGER = "imageserver-operator-slo"  # the SLO loop's status fields
SLACK_THREAD_ANNOTATION = f"{GROUP}/slack-thread"  # on a Postmortem: its incident's thread ts
JSON_PATCH = "application/json-patch+json"  # RFC 6902: a `test` makes a write conditional on a field
OPTIONAL_APIS = {
    "gateway_api": "httproutes.gateway.networking.k8s.io",
    "service_monitor": "servicemonitors.monitoring.coreos.com",
    "prometheus_rule": "prometheusrules.monitoring.coreos.com",
}


REQUEST_TIMEOUT = (5.0, 15.0)  # seconds: to connect, then between bytes read
RequestTimeout = float | tuple[float, float]


class TimeoutApiClient(client.ApiClient):
    """Every request carries a timeout unless its caller sets one: the client waits forever
    by default, and a stalled connection would hold a worker thread (or a lease renewal)."""

    def __init__(self, timeout: RequestTimeout = REQUEST_TIMEOUT) -> None:
        super().__init__()
        self.default_timeout = timeout

    def call_api(
        self,
        method: str,
        url: str,
        header_params: dict[str, str] | None = None,
        body: Any = None,
        post_params: Any = None,
        _request_timeout: RequestTimeout | None = None,
    ) -> RESTResponse:
        if _request_timeout is None:
            _request_timeout = self.default_timeout
        return super().call_api(method, url, header_params, body, post_params, _request_timeout)


def api_client(timeout: RequestTimeout = REQUEST_TIMEOUT) -> client.ApiClient:
    """In-cluster credentials when running in a pod, else the kubeconfig ($KUBECONFIG)."""
    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        # The client reads $KUBECONFIG once, at import; read it now instead.
        config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))  # type: ignore[no-untyped-call]
    return TimeoutApiClient(timeout)


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
    ) -> str | None:
        """Merge `status` in; with `resource_version`, only onto that version of the object
        (the other loop may have written since this copy was read). Returns the new version,
        None on a conflict."""
        return self._patch(namespace, name, {"status": status}, resource_version, subresource="status")

    def apply_status(
        self, namespace: str, name: str, status: dict[str, Any], manager: str, resource_version: str | None
    ) -> str | None:
        """Server-side apply of the status fields `manager` owns (and only those: fields it
        applied before and leaves out now are removed), onto `resource_version`. Returns the
        new version, None on a conflict."""
        resource = self.dynamic.resources.get(api_version=f"{GROUP}/{VERSION}", kind="ImageServer")
        meta: dict[str, Any] = {"name": name, "namespace": namespace}
        if resource_version:
            meta["resourceVersion"] = resource_version
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ImageServer", "metadata": meta, "status": status}
        try:
            written = resource.subresources["status"].server_side_apply(
                body=body, name=name, namespace=namespace, field_manager=manager, force_conflicts=True
            )
        except ApiException as error:
            if error.status == 409 and resource_version:
                return None
            raise
        return str(written.metadata.resourceVersion)

    def annotate(
        self,
        namespace: str,
        name: str,
        annotations: dict[str, str | None],
        resource_version: str | None = None,
    ) -> str | None:
        """Set (or, with None, remove) annotations on an ImageServer; the new version, or None
        when `resource_version` is no longer current."""
        return self._patch(namespace, name, {"metadata": {"annotations": annotations}}, resource_version)

    def swap_annotation(self, namespace: str, name: str, key: str, expected: str, value: str) -> str | None:
        """Replace one annotation while it still holds `expected`, whatever else was written
        since (a JSON Patch whose `test` the API server checks with the write); the new
        version, or None when the annotation holds something else now (422)."""
        path = "/metadata/annotations/" + key.replace("~", "~0").replace("/", "~1")
        operations = [
            {"op": "test", "path": path, "value": expected},
            {"op": "replace", "path": path, "value": value},
        ]
        try:
            written = self.custom.patch_namespaced_custom_object(
                GROUP, VERSION, namespace, "imageservers", name, operations, _content_type=JSON_PATCH
            )
        except ApiException as error:
            if error.status != 422:
                raise
            # 422 is also how validation refuses: only a record that changed is "not swapped".
            annotations = self.get_imageserver(namespace, name)["metadata"].get("annotations") or {}
            if annotations.get(key) == expected:
                raise
            return None
        assert isinstance(written, dict)
        return str(written["metadata"]["resourceVersion"])

    def _patch(
        self,
        namespace: str,
        name: str,
        body: dict[str, Any],
        resource_version: str | None,
        *,
        subresource: str = "",
    ) -> str | None:
        if resource_version:  # a precondition: the API server refuses a stale one with 409
            body = {**body, "metadata": {**body.get("metadata", {}), "resourceVersion": resource_version}}
        patch = (
            self.custom.patch_namespaced_custom_object_status
            if subresource == "status"
            else self.custom.patch_namespaced_custom_object
        )
        try:
            written = patch(GROUP, VERSION, namespace, "imageservers", name, body)
        except ApiException as error:
            if error.status == 409 and resource_version:
                return None
            raise
        assert isinstance(written, dict)
        return str(written["metadata"]["resourceVersion"])

    def configmap_data(self, namespace: str, name: str) -> dict[str, str] | None:
        """One ConfigMap's data by name, or None when there is none: listed with a field
        selector (the operator lists and watches its children; it has no `get` on ConfigMaps)."""
        found = self.core.list_namespaced_config_map(namespace, field_selector=f"metadata.name={name}")
        return dict(found.items[0].data or {}) if found.items else None

    def get_imageserver(self, namespace: str, name: str) -> dict[str, Any]:
        body = self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "imageservers", name)
        assert isinstance(body, dict)
        return body

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

    def update_postmortem(
        self, namespace: str, name: str, change: Callable[[dict[str, Any]], dict[str, Any]], attempts: int = 5
    ) -> None:
        """Read, change (`change` gives the patch of the spec from the spec as it stands),
        write onto the version read: an entry someone (a person, another replica) wrote in
        between is never overwritten."""
        for _ in range(attempts):
            body = self.get_postmortem(namespace, name)
            patch = change(body.get("spec", {}))
            if not patch:
                return
            body_patch = {"metadata": {"resourceVersion": body["metadata"]["resourceVersion"]}, "spec": patch}
            try:
                self.custom.patch_namespaced_custom_object(
                    GROUP, VERSION, namespace, "postmortems", name, body_patch
                )
                return
            except ApiException as error:
                if error.status != 409:
                    raise
        raise RuntimeError(f"postmortem {namespace}/{name} kept changing; gave up after {attempts} attempts")

    def slack_thread(self, namespace: str, name: str) -> str | None:
        """The incident's Slack thread (its first message's ts), as its Postmortem records it."""
        try:
            body = self.get_postmortem(namespace, name)
        except ApiException as error:
            if error.status == 404:  # a notice that is no incident, or not opened yet
                return None
            raise
        return (body["metadata"].get("annotations") or {}).get(SLACK_THREAD_ANNOTATION) or None

    def remember_slack_thread(self, namespace: str, name: str, ts: str, permalink: str) -> None:
        patch: dict[str, Any] = {"metadata": {"annotations": {SLACK_THREAD_ANNOTATION: ts}}}
        if permalink:
            patch["spec"] = {"links": {"slackThread": permalink}}
        try:
            self.custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, "postmortems", name, patch)
        except ApiException as error:
            if error.status != 404:
                raise

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

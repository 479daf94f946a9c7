"""What the operator knows of the cluster, kept current by watch events (no API reads).

ImageServers by namespace and name; their children by the owner's uid and the child's
(apiVersion, kind, name). A reconcile reads only from here, so an idle operator makes no
API calls at all.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from typing import Any

from imageserver_operator.api.models import GROUP
from imageserver_operator.core.render import Manifest, key

ObjectKey = tuple[str, str]  # namespace, name


def owner_uid(obj: Manifest) -> str | None:
    for ref in obj.get("metadata", {}).get("ownerReferences", []):
        if ref.get("kind") == "ImageServer" and ref.get("apiVersion", "").startswith(f"{GROUP}/"):
            return str(ref["uid"])
    return None


class Store:
    def __init__(self) -> None:
        self.imageservers: dict[ObjectKey, Manifest] = {}
        self._by_uid: dict[str, ObjectKey] = {}
        self._children: defaultdict[str, dict[tuple[str, str, str], Manifest]] = defaultdict(dict)

    def imageserver_event(self, event_type: str, body: Manifest) -> ObjectKey:
        meta = body["metadata"]
        where = (meta["namespace"], meta["name"])
        if event_type == "DELETED":
            self.imageservers.pop(where, None)
            self._by_uid.pop(meta.get("uid", ""), None)
            self._children.pop(meta.get("uid", ""), None)
        else:
            self.imageservers[where] = body
            self._by_uid[meta["uid"]] = where
        return where

    def child_event(self, event_type: str, body: Manifest) -> ObjectKey | None:
        """Record a child; returns its owner ImageServer's key when known."""
        uid = owner_uid(body)
        if uid is None:
            return None
        if event_type == "DELETED":
            self._children[uid].pop(key(body), None)
        else:
            self._children[uid][key(body)] = body
        return self._by_uid.get(uid)

    def children(self, uid: str) -> Mapping[tuple[str, str, str], Manifest]:
        return dict(self._children.get(uid, {}))

    def get(self, where: ObjectKey) -> Manifest | None:
        return self.imageservers.get(where)

    def names(self) -> list[ObjectKey]:
        return list(self.imageservers)


def status_of(body: Mapping[str, Any]) -> Mapping[str, Any]:
    status = body.get("status") or {}
    return status if isinstance(status, Mapping) else {}

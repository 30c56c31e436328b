"""The embedded registry's document routes: the API root, the catalog, tag lists, manifests
(pushed only when every blob they name is present) and the referrers API.
"""

from __future__ import annotations

import json
import logging
from urllib.parse import quote

from imagesmith.errors import ImagesmithError, LayoutError, ManifestError, ReferenceFormatError
from imagesmith.oci import mediatypes as mt
from imagesmith.oci.digests import Digest
from imagesmith.oci.model import MAX_MANIFEST_SIZE, Descriptor, Index, Manifest, parse_manifest_document
from imagesmith.oci.references import validate_tag
from imagesmith.registry.serving.framing import Fail
from imagesmith.registry.serving.handler import Handler
from imagesmith.store.layout import OCILayout

__all__ = ["ManifestRoutes"]

log = logging.getLogger("imagesmith.serve")

MAX_PAGE = 10_000


class ManifestRoutes(Handler):
    """``/v2/``, ``/v2/_catalog``, ``/v2/<name>/tags/list``, ``/v2/<name>/manifests/...`` and
    ``/v2/<name>/referrers/...``."""

    def _base(self) -> None:
        self._send_json(200, {})

    def _catalog(self) -> None:
        names, next_last = page_of(self.storage.repositories(), self._q("n"), self._q("last"))
        headers = {}
        if next_last is not None:
            headers["Link"] = f'</v2/_catalog?n={len(names)}&last={quote(next_last, safe="/")}>; rel="next"'
        self._send_json(200, {"repositories": names}, headers)

    def _tags_list(self, name: str) -> None:
        name = self._name(name)
        tags = [t for t in self._layout(name).tags() if is_tag(t)]
        page, next_last = page_of(tags, self._q("n"), self._q("last"))
        headers = {}
        if next_last is not None:
            headers["Link"] = f'</v2/{name}/tags/list?n={len(page)}&last={next_last}>; rel="next"'
        self._send_json(200, {"name": name, "tags": page}, headers)

    def _reference(self, reference: str) -> tuple[str | None, Digest | None]:
        if ":" in reference:
            return None, self._digest(reference)
        return self._tag(reference), None

    def _manifest_put(self, name: str, reference: str) -> None:
        name = self._name(name)
        tag, expected = self._reference(reference)

        def too_large() -> Fail:
            return Fail(
                413,
                "MANIFEST_INVALID",
                "manifest too large",
                f"manifests are limited to {MAX_MANIFEST_SIZE} bytes",
            )

        data = self._require_body().read_limited(MAX_MANIFEST_SIZE, too_large)
        try:
            doc = parse_manifest_document(data, self.headers.get("Content-Type"))
            subject = subject_of(data)
        except ManifestError as exc:
            raise Fail(400, "MANIFEST_INVALID", "manifest invalid", str(exc)) from None
        digest = Digest.of(data, expected.algorithm if expected is not None else "sha256")
        if expected is not None and digest != expected:
            raise Fail(
                400,
                "DIGEST_INVALID",
                "the manifest does not match the digest it was pushed by",
                {"expected": str(expected), "got": str(digest)},
            )
        needed = [doc.config, *doc.layers] if isinstance(doc, Manifest) else list(doc.manifests)
        layout = self.storage.layout(name)
        # Foreign layers (with urls) are fetched from elsewhere and never pushed.
        missing = [
            str(d.digest)
            for d in needed
            if not d.urls and (layout is None or not layout.has_blob(d.digest, d.size))
        ]
        if missing:
            raise Fail(
                400,
                "MANIFEST_BLOB_UNKNOWN",
                "manifest references blobs unknown to the repository",
                {"missing": missing},
            )
        layout = self.storage.layout(name, create=True)
        assert layout is not None
        try:
            # A moved tag leaves its old manifest listed, untagged: pulls by digest of what
            # an earlier push reported keep working until the manifest itself is deleted.
            entry = layout.add_manifest(data, doc.media_type, tag=tag, keep_untagged=True)
        except ManifestError as exc:
            raise Fail(400, "MANIFEST_INVALID", "manifest invalid", str(exc)) from None
        headers = {
            "Location": f"/v2/{name}/manifests/{entry.digest}",
            "Docker-Content-Digest": str(entry.digest),
        }
        if subject is not None:
            headers["OCI-Subject"] = str(subject.digest)
        self._send(201, headers=headers)

    def _find_manifest(self, layout: OCILayout, tag: str | None, digest: Digest | None) -> Descriptor:
        if digest is None:
            try:
                return layout.resolve(tag)
            except LayoutError as exc:
                raise Fail(404, "MANIFEST_UNKNOWN", "manifest unknown to registry", str(exc)) from None
        found = layout.find_manifest(digest)
        if found is not None:
            return found
        # Layouts written by other tools (skopeo copy --all) list only the index: its children
        # are found through it.
        for entry in layout.manifests():
            if not mt.is_index(entry.media_type):
                continue
            try:
                index = parse_manifest_document(layout.read_blob(entry, MAX_MANIFEST_SIZE), entry.media_type)
            except ImagesmithError as exc:
                log.warning("cannot read index %s of %s: %s", entry.digest, layout.root, exc)
                continue
            if isinstance(index, Index):
                for child in index.manifests:
                    if child.digest == digest:
                        return Descriptor(child.media_type, digest, child.size)
        raise Fail(404, "MANIFEST_UNKNOWN", "manifest unknown to registry", str(digest))

    def _manifest_get(self, name: str, reference: str) -> None:
        name = self._name(name)
        tag, digest = self._reference(reference)
        layout = self._layout(name)
        entry = self._find_manifest(layout, tag, digest)
        try:
            data = layout.read_blob(entry, MAX_MANIFEST_SIZE)
        except LayoutError as exc:
            raise Fail(404, "MANIFEST_UNKNOWN", "manifest unknown to registry", str(exc)) from None
        self._send(
            200,
            data,
            {"Docker-Content-Digest": str(entry.digest), "ETag": f'"{entry.digest}"'},
            entry.media_type,
        )

    def _manifest_delete(self, name: str, reference: str) -> None:
        name = self._name(name)
        tag, digest = self._reference(reference)
        layout = self._layout(name)
        if digest is not None:
            if not layout.remove_manifest(digest):
                raise Fail(404, "MANIFEST_UNKNOWN", "manifest unknown to registry", str(digest))
        else:
            assert tag is not None
            try:
                layout.remove_tag(tag, keep_untagged=True)
            except LayoutError as exc:
                raise Fail(404, "MANIFEST_UNKNOWN", "manifest unknown to registry", str(exc)) from None
        self._send(202)

    def _referrers(self, name: str, digest: str) -> None:
        name = self._name(name)
        d = self._digest(digest)
        layout = self.storage.layout(name)
        # An unknown repository has no referrers; a 404 would tell clients the API is missing.
        found = layout.referrers(d) if layout is not None else []
        headers = {}
        artifact_type = self._q("artifactType")
        if artifact_type is not None:
            found = [x for x in found if x.artifact_type == artifact_type]
            headers["OCI-Filters-Applied"] = "artifactType"
        body = Index(mt.OCI_INDEX, tuple(found)).to_bytes()
        self._send(200, body, headers, mt.OCI_INDEX)


def is_tag(text: str) -> bool:
    try:
        validate_tag(text)
    except ReferenceFormatError:
        return False
    return True


def subject_of(data: bytes) -> Descriptor | None:
    # model.Index does not keep ``subject`` (image-spec 1.1 allows it on an index too).
    obj = json.loads(data)
    subject = obj.get("subject") if isinstance(obj, dict) else None
    return Descriptor.from_json(subject, "manifest subject") if subject else None


def page_of(items: list[str], n: str | None, last: str | None) -> tuple[list[str], str | None]:
    """One page of sorted ``items`` after ``last``; the second value is the ``last`` of the
    next page, or None when nothing remains."""
    if last:
        items = [i for i in items if i > last]
    if n is None or n == "":
        return items, None
    if not n.isdigit():
        raise Fail(400, "PAGINATION_NUMBER_INVALID", "invalid number of results requested", n[:20])
    count = min(int(n), MAX_PAGE)
    page = items[:count]
    return page, (page[-1] if page and len(items) > count else None)

"""The template service's identification gallery: built from the store's identification
templates (in this process or sharded, as the service's ``gallery_spec`` says), kept up to date
with the store's event log, dropped on :meth:`IdentificationMixin.refresh` or a lost shard, and
the 1:N threshold at its size. A mixin of :class:`~iom.service.service.TemplateService`, whose
``store``, ``pipeline``, ``policy``, ``calibration`` and ``gallery_spec``, gallery state
(``_gallery``, ``_gallery_lock``) and code helpers (``_identification_keying``, ``_stored``,
``_made_here``) it uses."""

from __future__ import annotations

import numpy as np

from iom.errors import ClusterError, InvalidInputError, TemplateError
from iom.search.packing import unpack_codes
from iom.service.calibration import identification_threshold
from iom.store.base import TemplateRecord


class IdentificationMixin:
    """The identification gallery of :class:`~iom.service.service.TemplateService`."""

    def identification_point(self) -> dict:
        """The 1:N operating point of an identification now: the gallery's size, the FPIR
        target, the threshold and the TAR the calibration set expects at it (``None`` for an
        empty gallery or a calibration without genuine histogram)."""
        from iom.service.calibration import rates_at

        gallery, _ = self._current_gallery()
        n = len(gallery)
        threshold = self.identification_threshold(n) if n else None
        tar = rates_at(self.calibration, threshold)[0] if threshold is not None else None
        return {"gallery_size": n, "fpir_target": self.policy.fpir, "threshold": threshold,
                "expected_tar": tar, "calibration_set": str(self.calibration.get("dataset", ""))}

    def identification_threshold(self, gallery_size: int) -> float:
        """The similarity a candidate needs in a gallery of ``gallery_size`` (FPIR policy);
        :class:`TemplateError` when the calibration cannot bound that FPIR at that size
        (identification then refuses rather than accept at an uncertified threshold)."""
        try:
            return identification_threshold(self.calibration, gallery_size, self.policy.fpir)
        except InvalidInputError as e:
            raise TemplateError(f"identification at policy fpir={self.policy.fpir:g}: {e}") from None

    def refresh(self) -> None:
        """Forget the identification gallery (rebuilt from the store on the next identify;
        changes of other processes are picked up anyway from the event log). A sharded
        gallery's shards stop once no search uses them any more."""
        with self._gallery_lock:
            self._gallery = None

    def _gallery_entries(self, records: list[TemplateRecord]) -> tuple[np.ndarray, np.ndarray, dict]:
        """Ids, gallery-space codes and subjects of identification records of this model."""
        keep = [r for r in records if r.purpose == "identify" and r.active and self._made_here(r)]
        if not keep:
            return np.zeros(0, np.int64), np.zeros((0, self.m), np.uint8), {}
        codes = np.concatenate([
            self._identification_keying(r.subject_id, r.salt, r.key_version).invert(
                unpack_codes(self._stored(r)[None], self.m, self.q))
            for r in keep])
        return (np.asarray([r.template_id for r in keep], np.int64), codes,
                {r.template_id: r.subject_id for r in keep})

    def _current_gallery(self):
        """The gallery (in this process, or its shards on a cluster: :attr:`gallery_spec`),
        brought up to date with the event log (other processes' changes included)."""
        with self._gallery_lock:
            return self._updated_gallery()

    def _updated_gallery(self):
        """:meth:`_current_gallery` for a caller that holds ``_gallery_lock``."""
        if self._gallery is None:
            head, records = self.store.identify_gallery(self.pipeline.model_id)
            ids, codes, subjects = self._gallery_entries(records)
            gallery = self.gallery_spec.make(self.m, self.q, capacity=len(ids))
            if len(ids):
                gallery.add(ids, codes)
            self._gallery = (head, gallery, subjects)
        elif (head := self.store.head()) != self._gallery[0]:
            seen, gallery, subjects = self._gallery
            events = self.store.events_since(seen)
            gone = {i for e in events for i in e.revoked_ids if i in subjects}
            new = [i for e in events for i in e.new_ids]
            ids, codes, added = self._gallery_entries(self.store.templates(new) if new else [])
            try:                                # each id reaches its shard (sharded gallery)
                if gone:
                    gallery.remove(np.asarray(sorted(gone), np.int64))
                if len(ids):
                    gallery.add(ids, codes)
            except ClusterError:
                self._gallery = None            # half applied: rebuilt from the store next time
                raise
            for i in gone:
                subjects.pop(i)
            subjects.update(added)
            self._gallery = (events[-1].seq if events else head, gallery, subjects)
        return self._gallery[1], self._gallery[2]

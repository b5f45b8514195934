"""Options added after results were cached or reported, and how fingerprints leave them out.

A stage's cached output and an experiment cell's finished run are found again by a fingerprint of their settings.
A new option would change every fingerprint and make finished work look stale, so each new option is declared
with the value that reproduces how kpod behaved before it existed, and left out of fingerprints while it has it.
"""

from __future__ import annotations

from typing import ClassVar


class LaterOptions:
    """Mixed into the pydantic settings models (before BaseModel)."""

    # Options added after runs were cached, each with the value that reproduces how kpod behaved before it existed.
    # Stage fingerprints leave an option out while it has that value, so earlier runs keep their cached stages.
    ADDED_LATER: ClassVar[dict[str, object]] = {}
    # The subset added after experiment cells were first fingerprinted (see `RunConfig.fingerprint_dump`).
    ADDED_AFTER_CELLS: ClassVar[tuple[str, ...]] = ()
    # The training methods that read these settings, where only some do (an option no method of a cell reads
    # cannot change its result, whatever its value).
    READ_ONLY_BY: ClassVar[tuple[str, ...]] = ()

    def fingerprint_fields(self) -> dict:
        """The settings as JSON for a stage fingerprint, without the later options at their old-behaviour values,
        here and in nested settings."""
        return self._without_old_values(self.model_dump(mode="json"))

    def _without_old_values(self, dump: dict) -> dict:
        for key, old in self.ADDED_LATER.items():
            if getattr(self, key) == old:
                del dump[key]
        for settings, part in self._nested(dump):
            settings._without_old_values(part)
        return dump

    def without_options_added_after_cells(self, dump: dict, method: str) -> dict:
        """`dump` (this model's JSON dump) without the options in ADDED_AFTER_CELLS, here and in nested settings,
        while they have their old-behaviour values or belong to settings that the cell's `method` does not read."""
        unread = bool(self.READ_ONLY_BY) and method not in self.READ_ONLY_BY
        for key in self.ADDED_AFTER_CELLS:
            if unread or getattr(self, key) == self.ADDED_LATER[key]:
                del dump[key]
        for settings, part in self._nested(dump):
            settings.without_options_added_after_cells(part, method)
        return dump

    def _nested(self, dump: dict):
        """(settings, its part of `dump`) for every nested settings model that `dump` still holds."""
        for key in type(self).model_fields:
            value = getattr(self, key)
            if isinstance(value, LaterOptions) and key in dump:
                yield value, dump[key]

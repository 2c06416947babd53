"""The one error type of the interop layer.

Ingestion reports every rejected input to a person (the hospital's IT team, through
`medledger ingest`), so an error must say where to look: the file, the entry in it and the
field, in words a FHIR or HL7 integrator uses. It must also be safe to log: messages name
fields and expected types, never the values found there (a value may be a name, a birth date
or an INS).
"""

from __future__ import annotations

from collections.abc import Sequence


class InputError(ValueError):
    """Bad input, located as precisely as we can.

    `entry` is the position of the offending item: an int is a Bundle entry index (0-based, as
    in the FHIRPath `Bundle.entry[3]`), a str is a ready-made label such as ``"line 4"`` (NDJSON)
    or ``"message 2"`` (HL7 v2). `field` is a FHIR path inside the resource
    (``valueQuantity.value``, ``code.coding[0].system``) or an HL7 v2 position (``PID-3``).

    One bad file may have several problems; they are all kept in `problems` (this error first,
    then `others`) so that a report can list every rejected entry, while `str()` stays one
    readable line.
    """

    def __init__(
        self,
        source: str,
        entry: str | int | None,
        field: str | None,
        message: str,
        *,
        resource_type: str | None = None,
        others: Sequence[InputError] = (),
    ) -> None:
        self.source = source
        self.entry = entry
        self.field = field
        # The FHIR version the input's resources passed validation as, when only resolving
        # its references failed (a validation worker's parse: the home parse skips the models).
        self.validated_as: str | None = None
        self.message = message
        self.resource_type = resource_type
        self._others: tuple[InputError, ...] = tuple(others)
        super().__init__(self._describe())

    @property
    def problems(self) -> tuple[InputError, ...]:
        """Every problem found in the input, this one first."""
        return (self, *self._others)

    def location(self) -> str:
        """`labs.json, entry 3 (Observation), field valueQuantity.value`."""
        parts = [self.source]
        if self.entry is not None:
            label = f"entry {self.entry}" if isinstance(self.entry, int) else self.entry
            if self.resource_type:
                label += f" ({self.resource_type})"
            parts.append(label)
        elif self.resource_type:
            parts.append(self.resource_type)
        if self.field:
            parts.append(f"field {self.field}")
        return ", ".join(parts)

    def _describe(self) -> str:
        text = f"{self.location()}: {self.message}"
        if self._others:
            more = len(self._others)
            text += f" (and {more} more problem{'s' if more > 1 else ''})"
        return text

    def with_others(self, others: Sequence[InputError]) -> InputError:
        """A copy of this error that also carries `others` (further problems of the input)."""
        return InputError(
            self.source,
            self.entry,
            self.field,
            self.message,
            resource_type=self.resource_type,
            others=others,
        )

    def __reduce__(self) -> tuple[object, ...]:  # keep the error picklable (multiprocessing)
        return (
            _rebuild,
            (self.source, self.entry, self.field, self.message, self.resource_type, self._others),
        )


def _rebuild(
    source: str,
    entry: str | int | None,
    field: str | None,
    message: str,
    resource_type: str | None,
    others: tuple[InputError, ...],
) -> InputError:
    return InputError(source, entry, field, message, resource_type=resource_type, others=others)


def raise_all(problems: Sequence[InputError]) -> None:
    """Raise the first problem carrying all of them, if there is any."""
    if problems:
        flat = [p for problem in problems for p in problem.problems]
        raise flat[0].with_others(flat[1:])

"""Request bodies take what the JSON said, not what it could be coerced into.

FastAPI validates a body in pydantic's *python* mode after `json.loads`, and pydantic's lax
mode there turns `true` into 1, `10.0` into 10, `"12"` into 12, `5` into `"5"` and
`1700000000` into a datetime. The contract (§3) wants such input refused with 422
`validation_error` and nothing changed. So every request body derives from `RequestModel`:

- strict: an integer field takes a JSON integer only (not `true`, `10.0` or `"12"`), a string
  field a JSON string, a boolean `true`/`false`, a number field a JSON number (integers too);
- the types JSON can only carry as strings are annotated with the types below, which take an
  RFC 3339 string (and, from Python callers, the object itself) and nothing else: `AwareDatetime`,
  `Date`, `Time`. A field of a type strict mode would take only as a Python object (`datetime`,
  `UUID`, `Decimal`, an `Enum`, ...) or a nested model that is not a `RequestModel` (which
  would stay lax) is refused when the class is defined, not at a client's first request;
- unknown fields are refused (`extra="forbid"`).

The JSON Schemas (and so the OpenAPI documents) are the same as with the plain types. Use
`Literal[...]` for enumerations and integers in minor units for amounts (contract §4).

A value that the service's own parser judges (a segment rule, a campaign trigger: it names
every problem at its place in the value) is annotated `DocumentedAs(model)`: validated as the
field's type says, documented as the model's schema.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from enum import Enum
from typing import Annotated, Any, get_args, get_origin
from uuid import UUID

import pydantic
from pydantic import BaseModel, ConfigDict, GetCoreSchemaHandler, GetJsonSchemaHandler, Strict
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, PydanticCustomError, core_schema

__all__ = ["TIME_ZONE_SCHEMA", "AwareDatetime", "Date", "DocumentedAs", "RequestModel", "Time"]

# What an IANA time zone name looks like (every name of `zoneinfo.available_timezones()` does):
# the JSON Schema of a field whose validator looks the name up.
TIME_ZONE_SCHEMA: dict[str, Any] = {
    "pattern": r"^[A-Za-z][A-Za-z0-9_+/-]*$",
    "maxLength": 64,
    "examples": ["Asia/Shanghai"],
}


@dataclass(frozen=True)
class FromString:
    """Annotation: the value arrives as a string of `shape` (a regex matched at the start), or,
    from Python, as an instance of `python_type`; pydantic parses the string as it would in
    lax mode (`Strict(False)` goes before this in the `Annotated`)."""

    python_type: type
    shape: str
    error_type: str
    expected: str

    def check(self, value: Any) -> Any:
        if isinstance(value, str):
            if re.match(self.shape, value):
                return value
            kind = "parsing"  # a string, but not of the shape
        elif isinstance(value, self.python_type):
            return value
        else:
            kind = "type"  # a number, a boolean, a list...
        raise PydanticCustomError(
            f"{self.error_type}_{kind}", "Input should be {expected}", {"expected": self.expected}
        )

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> CoreSchema:
        return core_schema.no_info_before_validator_function(self.check, handler(source))


@dataclass(frozen=True)
class DocumentedAs:
    """Annotation: the JSON Schema of the field is `shape`'s (a model, with its definitions),
    while validation stays the field's own type's (`Any`, say): for a value that code parses
    and judges itself, so the schema says what the parser takes without a second validation
    that would answer other errors. Use it on request fields: a model used for both requests
    and responses is split by FastAPI into `-Input` and `-Output` schemas."""

    shape: type[BaseModel]

    def __get_pydantic_json_schema__(
        self, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return handler(self.shape.__pydantic_core_schema__)


_AWARE = FromString(
    datetime,
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}",
    "datetime",
    "an RFC 3339 date-time string with an offset, e.g. 2024-05-01T09:30:00+08:00",
)
_DATE = FromString(date, r"\d{4}-\d{2}-\d{2}\Z", "date", "a date string YYYY-MM-DD")
_TIME = FromString(time, r"\d{2}:\d{2}", "time", "a time string HH:MM[:SS]")

# A time with its offset: "2024-05-01T09:30:00+08:00" or "...Z"; never a number.
AwareDatetime = Annotated[pydantic.AwareDatetime, Strict(False), _AWARE]
# A calendar day: "2024-05-01"; never a number or a date-time.
Date = Annotated[date, Strict(False), _DATE]
# A time of day: "09:30" or "09:30:00"; never a number of seconds.
Time = Annotated[time, Strict(False), _TIME]

# Types that strict python-mode validation takes only as Python objects: a JSON body could
# never give one. They need an annotation above (or a Literal, or a str).
_PYTHON_ONLY: tuple[type, ...] = (
    datetime,
    date,
    time,
    timedelta,
    UUID,
    Decimal,
    Enum,
    bytes,
    pydantic.AwareDatetime,
    pydantic.NaiveDatetime,
    pydantic.PastDatetime,
    pydantic.FutureDatetime,
    pydantic.PastDate,
    pydantic.FutureDate,
)


class RequestModel(BaseModel):
    """The base of every request body: strict, JSON-friendly, no unknown fields."""

    model_config = ConfigDict(strict=True, extra="forbid")

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        if not cls.model_config.get("strict"):
            return  # e.g. a response model that reuses a request's fields (strict=False)
        for name, field in cls.model_fields.items():
            if any(isinstance(m, FromString) for m in field.metadata):
                continue
            for loose in _python_only(field.annotation):
                raise TypeError(
                    f"{cls.__qualname__}.{name}: {getattr(loose, '__name__', loose)} cannot come "
                    "from a strict JSON body; use loyalty_shared.api_types.AwareDatetime, Date "
                    "or Time, a Literal, or a nested RequestModel"
                )


def _python_only(annotation: Any) -> Iterator[Any]:
    """The parts of a field's type a strict JSON body could not give (see `_PYTHON_ONLY`)."""
    origin = get_origin(annotation)
    if origin is Annotated:
        inner, *metadata = get_args(annotation)
        if not any(isinstance(m, FromString) for m in metadata):
            yield from _python_only(inner)
        return
    if origin is None and isinstance(annotation, type):
        if issubclass(annotation, BaseModel):
            if not issubclass(annotation, RequestModel):
                yield annotation  # a nested model keeps its own (lax) configuration
            return
        if issubclass(annotation, _PYTHON_ONLY):
            yield annotation
        return
    for arg in get_args(annotation):
        yield from _python_only(arg)

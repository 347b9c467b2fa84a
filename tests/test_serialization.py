"""The JSON codec: every supported family round-trips through real JSON to its declared type.

This module uses ``from __future__ import annotations`` on purpose: every annotation below is
a string, so the tests also prove that forward references are resolved.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import inspect
import json
import subprocess
import sys
import uuid
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Annotated, Any, Literal, NamedTuple, NewType, NotRequired, Optional, TypedDict

import pytest

from celery_romancy.errors import SerializationError
from celery_romancy.serialization import check_json, decode, encode


def roundtrip(value: object, hint: object) -> Any:
    """Encode, pass through real (strict) JSON text, decode."""
    return decode(json.loads(json.dumps(encode(value), allow_nan=False)), hint)


class Status(enum.Enum):
    NEW = "new"
    PAID = "paid"


class Priority(enum.IntEnum):
    LOW = 1
    HIGH = 2


class Colour(enum.StrEnum):
    RED = "red"
    BLUE = "blue"


@dataclasses.dataclass
class Order:
    id: uuid.UUID
    customer: Customer  # defined below: a forward reference
    items: list[Item]
    created: dt.datetime
    status: Status
    note: Optional[str] = None  # noqa: UP045 (the typing spelling is under test)
    coupon: str | None = None


@dataclasses.dataclass
class Item:
    sku: str
    price: Decimal
    quantity: int = 1


@dataclasses.dataclass(frozen=True)
class Customer:
    name: str
    email: str


@dataclasses.dataclass
class WithDerived:
    width: int
    height: int
    area: int = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        self.area = self.width * self.height


@dataclasses.dataclass
class Positive:
    n: int

    def __post_init__(self) -> None:
        if self.n <= 0:
            raise ValueError("n must be positive")


class Movie(TypedDict):
    title: str
    year: int
    rating: NotRequired[float]


class Options(TypedDict, total=False):
    verbose: bool
    level: int


class Point(NamedTuple):
    x: float
    y: float
    label: str = ""


UserId = NewType("UserId", int)


def make_order() -> Order:
    tz = dt.timezone(dt.timedelta(hours=2))
    return Order(
        id=uuid.UUID("12345678-1234-5678-1234-567812345678"),
        customer=Customer("Ada", "ada@example.com"),
        items=[Item("A-1", Decimal("19.99"), 2), Item("B-2", Decimal("0.10"))],
        created=dt.datetime(2024, 5, 17, 9, 30, 15, 123456, tzinfo=tz),
        status=Status.PAID,
        note="leave at the door",
    )


# --- round trips --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "hint"),
    [(None, type(None)), (True, bool), (False, bool), (7, int), (2.5, float), ("text", str)],
)
def test_primitives_round_trip_as_is(value: object, hint: type) -> None:
    assert encode(value) == value
    result = roundtrip(value, hint)
    assert result == value
    assert type(result) is hint


def test_float_hint_accepts_an_int() -> None:
    result = decode(3, float)
    assert result == 3.0
    assert type(result) is float


def test_bool_is_not_an_int_or_float_when_decoding() -> None:
    with pytest.raises(SerializationError, match="got bool True"):
        decode(True, int)
    with pytest.raises(SerializationError):
        decode(False, float)


def test_nested_dataclass_round_trip_keeps_every_type() -> None:
    order = make_order()
    data = encode(order)
    assert isinstance(data, dict)
    assert data["items"] == [
        {"sku": "A-1", "price": "19.99", "quantity": 2},
        {"sku": "B-2", "price": "0.10", "quantity": 1},
    ]
    assert data["created"] == "2024-05-17T09:30:15.123456+02:00"
    assert data["status"] == "paid"

    result = roundtrip(order, Order)
    assert result == order
    assert type(result) is Order
    assert type(result.customer) is Customer
    assert all(type(item) is Item for item in result.items)
    assert type(result.items[0].price) is Decimal
    assert result.created.utcoffset() == dt.timedelta(hours=2)
    assert result.status is Status.PAID
    assert result.coupon is None


def test_dataclass_fields_with_defaults_may_be_missing() -> None:
    result = decode({"sku": "C-3", "price": "5"}, Item)
    assert result == Item("C-3", Decimal("5"), 1)


def test_dataclass_init_false_fields_are_not_stored_and_are_recomputed() -> None:
    data = encode(WithDerived(2, 3))
    assert data == {"width": 2, "height": 3}
    assert decode(data, WithDerived).area == 6


def test_dataclass_ignores_unknown_keys() -> None:
    assert decode({"sku": "A", "price": "1", "removed_field": 1}, Item) == Item("A", Decimal(1))


def test_pydantic_model_round_trip() -> None:
    pydantic = pytest.importorskip("pydantic")

    class Shipment(pydantic.BaseModel):  # type: ignore[name-defined,misc]
        model_config = pydantic.ConfigDict(strict=True)
        when: dt.datetime
        weight: Decimal
        tags: tuple[str, ...]

    shipment = Shipment(
        when=dt.datetime(2024, 1, 2, 3, 4, tzinfo=dt.UTC),
        weight=Decimal("1.25"),
        tags=("fragile",),
    )
    assert encode(shipment) == {
        "when": "2024-01-02T03:04:00Z",
        "weight": "1.25",
        "tags": ["fragile"],
    }
    result = roundtrip(shipment, Shipment)
    assert result == shipment
    assert type(result) is Shipment


def test_pydantic_model_inside_a_dataclass_field_round_trips() -> None:
    pydantic = pytest.importorskip("pydantic")

    class Money(pydantic.BaseModel):  # type: ignore[name-defined,misc]
        amount: Decimal
        currency: str

    @dataclasses.dataclass
    class Invoice:
        total: Any

    data = encode(Invoice(Money(amount=Decimal("3.50"), currency="EUR")))
    assert data == {"total": {"amount": "3.50", "currency": "EUR"}}
    assert decode(data["total"], Money) == Money(amount=Decimal("3.50"), currency="EUR")


def test_pydantic_validation_failure_is_a_serialization_error() -> None:
    pydantic = pytest.importorskip("pydantic")

    class Model(pydantic.BaseModel):  # type: ignore[name-defined,misc]
        n: int

    with pytest.raises(SerializationError, match="cannot decode value as"):
        decode({"n": "not a number"}, Model)


def test_serialization_does_not_import_pydantic() -> None:
    code = "import sys, celery_romancy.serialization; print('pydantic' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_typeddict_round_trip_with_not_required_key() -> None:
    full: Movie = {"title": "Alien", "year": 1979, "rating": 8.5}
    partial: Movie = {"title": "Heat", "year": 1995}
    assert roundtrip(full, Movie) == full
    result = roundtrip(partial, Movie)
    assert result == partial
    assert type(result) is dict


def test_typeddict_total_false_keys_may_be_missing() -> None:
    assert decode({}, Options) == {}
    assert decode({"level": 3}, Options) == {"level": 3}


def test_typeddict_missing_required_key_raises() -> None:
    with pytest.raises(SerializationError, match="missing key 'year'"):
        decode({"title": "Alien"}, Movie)


def test_namedtuple_is_stored_as_a_list_and_rebuilt() -> None:
    point = Point(1.5, 2.0, "origin-ish")
    assert encode(point) == [1.5, 2.0, "origin-ish"]
    result = roundtrip(point, Point)
    assert result == point
    assert type(result) is Point
    assert decode([1, 2], Point) == Point(1.0, 2.0, "")
    assert type(decode([1, 2], Point).x) is float


@pytest.mark.parametrize(
    ("member", "stored"),
    [(Status.NEW, "new"), (Priority.HIGH, 2), (Colour.BLUE, "blue")],
)
def test_enums_are_stored_as_their_value(member: enum.Enum, stored: object) -> None:
    assert encode(member) == stored
    assert type(encode(member)) is type(stored)
    result = roundtrip(member, type(member))
    assert result is member


@pytest.mark.parametrize(
    ("value", "stored"),
    [
        (dt.datetime(2024, 2, 29, 23, 59, 59), "2024-02-29T23:59:59"),
        (dt.datetime(2024, 2, 29, 12, 0, tzinfo=dt.UTC), "2024-02-29T12:00:00+00:00"),
        (dt.date(2024, 2, 29), "2024-02-29"),
        (dt.time(8, 15, 0, 500), "08:15:00.000500"),
        (dt.timedelta(days=1, seconds=3, microseconds=7), 86403.000007),
        (
            Decimal("123456789012345678901234567890.000000001"),
            "123456789012345678901234567890.000000001",
        ),
        (uuid.UUID(int=42), "00000000-0000-0000-0000-00000000002a"),
    ],
)
def test_scalar_types_are_stored_as_strings_or_seconds(value: object, stored: object) -> None:
    assert encode(value) == stored
    result = roundtrip(value, type(value))
    assert result == value
    assert type(result) is type(value)


def test_timezone_is_preserved() -> None:
    tz = dt.timezone(dt.timedelta(hours=-5, minutes=-30))
    result = roundtrip(dt.datetime(2024, 1, 1, tzinfo=tz), dt.datetime)
    assert result.utcoffset() == dt.timedelta(hours=-5, minutes=-30)


@pytest.mark.parametrize(
    ("value", "hint", "expected_type"),
    [
        ([1, 2, 3], list[int], list),
        ((1, 2, 3), tuple[int, ...], tuple),
        ((1, "a", 2.5), tuple[int, str, float], tuple),
        ({"b", "a"}, set[str], set),
        (frozenset({3, 1}), frozenset[int], frozenset),
        ({"a": 1, "b": 2}, dict[str, int], dict),
        ([1, 2], Sequence[int], list),
        ({"a": [dt.date(2024, 1, 1)]}, Mapping[str, list[dt.date]], dict),
        ([[1, 2], [3]], list[list[int]], list),
    ],
)
def test_containers_round_trip(value: object, hint: object, expected_type: type) -> None:
    result = roundtrip(value, hint)
    assert result == value
    assert type(result) is expected_type


def test_sets_are_stored_sorted_so_the_json_is_deterministic() -> None:
    assert encode({"pear", "apple", "fig"}) == ["apple", "fig", "pear"]


def test_unannotated_nested_containers_encode_recursively() -> None:
    value = {"a": [1, (2, 3), {"b": None}], "c": Decimal("1.5")}
    assert encode(value) == {"a": [1, [2, 3], {"b": None}], "c": "1.5"}


def test_dict_with_enum_and_int_keys_round_trips() -> None:
    by_status = {Status.NEW: 1, Status.PAID: 2}
    assert encode(by_status) == {"new": 1, "paid": 2}
    result = roundtrip(by_status, dict[Status, int])
    assert result == by_status
    assert all(type(key) is Status for key in result)

    by_priority = {Priority.LOW: "l", Priority.HIGH: "h"}
    assert encode(by_priority) == {"1": "l", "2": "h"}
    assert roundtrip(by_priority, dict[Priority, str]) == by_priority

    by_number = {1: "one", 20: "twenty"}
    assert encode(by_number) == {"1": "one", "20": "twenty"}
    assert roundtrip(by_number, dict[int, str]) == by_number


def test_union_prefers_the_exact_json_type() -> None:
    assert decode("5", int | str) == "5"
    assert decode(5, int | str) == 5
    assert type(decode(5, float | int)) is int
    assert type(decode(5.0, float | int)) is float


def test_union_tries_members_in_order() -> None:
    hint = Item | Customer
    assert decode({"name": "Ada", "email": "a@b"}, hint) == Customer("Ada", "a@b")
    assert decode({"sku": "X", "price": "1"}, hint) == Item("X", Decimal(1))
    assert decode("2024-01-01", dt.date | str) == dt.date(2024, 1, 1)


def test_optional_accepts_none_and_the_type() -> None:
    assert decode(None, Optional[Item]) is None  # noqa: UP045
    assert decode(None, Item | None) is None
    assert decode({"sku": "X", "price": "2"}, Item | None) == Item("X", Decimal(2))


def test_union_mismatch_lists_what_was_tried() -> None:
    with pytest.raises(SerializationError, match="no member fits"):
        decode([1], int | str)


def test_literal_values() -> None:
    assert decode("a", Literal["a", "b"]) == "a"
    assert decode(Status.NEW.value, Literal[Status.NEW]) is Status.NEW
    with pytest.raises(SerializationError):
        decode(True, Literal[1])


@pytest.mark.parametrize("hint", [Any, object, inspect.Parameter.empty, None])
def test_missing_or_any_hint_returns_the_data_unchanged(hint: object) -> None:
    data: Any = {"a": [1, "2", None]}
    assert decode(data, hint) is data


def test_newtype_and_annotated_use_the_underlying_type() -> None:
    assert decode(7, UserId) == 7
    assert decode("1.5", Annotated[Decimal, "money"]) == Decimal("1.5")
    with pytest.raises(SerializationError):
        decode("7", UserId)


def test_check_json_passes_silently_for_supported_values() -> None:
    check_json(make_order())


# --- errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "type_name"),
    [(object(), "object"), (lambda: None, "function"), (b"raw", "bytes")],
)
def test_encode_rejects_unsupported_types_naming_type_and_path(
    value: object, type_name: str
) -> None:
    expected = rf"value\['payload'\]\[1\]: unsupported type {type_name}"
    with pytest.raises(SerializationError, match=expected):
        encode({"payload": [1, value]})


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_encode_rejects_non_finite_floats(bad: float) -> None:
    with pytest.raises(SerializationError, match=r"cannot encode value\[0\]: float"):
        encode([bad])


def test_encode_error_names_the_path_inside_dataclasses() -> None:
    order = make_order()
    order.items.append(Item("C-3", object()))  # type: ignore[arg-type]
    expected = r"order\.items\[2\]\.price: unsupported type object"
    with pytest.raises(SerializationError, match=expected):
        encode(order, path="order")
    with pytest.raises(SerializationError, match=r"order\.items\[2\]\.price"):
        check_json(order, path="order")


def test_encode_rejects_keys_that_are_not_stored_as_strings() -> None:
    with pytest.raises(SerializationError, match="dict key"):
        encode({(1, 2): "tuple key"})
    with pytest.raises(SerializationError, match="both stored as '1'"):
        encode({1: "a", "1": "b"})


def test_encode_rejects_circular_data() -> None:
    loop: list[object] = []
    loop.append(loop)
    with pytest.raises(SerializationError, match="circular"):
        encode(loop)


def test_decode_str_where_dataclass_expected() -> None:
    with pytest.raises(SerializationError, match=r"cannot decode value as .*Item: got str"):
        decode("not an item", Item)


def test_decode_missing_required_dataclass_field() -> None:
    with pytest.raises(SerializationError, match="missing field 'price'"):
        decode({"sku": "A-1"}, Item)


def test_decode_error_names_the_path_of_nested_data() -> None:
    data = encode(make_order(), path="order")
    assert isinstance(data, dict) and isinstance(data["items"], list)
    data["items"][1] = {"sku": "B-2", "price": "ten euros"}
    with pytest.raises(SerializationError, match=r"order\.items\[1\]\.price as .*Decimal"):
        decode(data, Order, path="order")


def test_decode_literal_mismatch() -> None:
    with pytest.raises(SerializationError, match="value as Literal"):
        decode("c", Literal["a", "b"])


def test_decode_bad_decimal_string() -> None:
    with pytest.raises(SerializationError, match="Decimal"):
        decode("12,50", Decimal)


@pytest.mark.parametrize(
    ("data", "hint"),
    [
        ("yesterday", dt.datetime),
        ("not-a-uuid", uuid.UUID),
        ("5", dt.timedelta),
        ("purple", Colour),
        ([1, 2, 3], tuple[int, int]),
        ({"a": 1}, list[int]),
        ([1, "x"], list[int]),
        (1, type(None)),
        ({"x": 1}, Point),
        ({"7": "x", "y": "z"}, dict[int, str]),
        ({"n": 0}, Positive),
    ],
)
def test_decode_wrong_shaped_data_raises(data: Any, hint: object) -> None:
    with pytest.raises(SerializationError, match="cannot decode"):
        decode(data, hint)


def test_serialization_error_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        encode(object())


def test_unsupported_hint_is_reported() -> None:
    with pytest.raises(SerializationError, match="unsupported type hint"):
        decode(1, complex)


# -- strings no database stores the same way, and where a value does not fit ----------------------


@pytest.mark.parametrize(
    ("value", "path"),
    [
        ("a\x00b", r"value: the string holds '\\x00' at index 1"),
        (["ok", "bad\ud800"], r"value\[1\]: the string holds '\\ud800' at index 3"),
        ({"k\x00": 1}, r"value key 'k\\x00': the string holds '\\x00'"),
        (Item("mug\x00", Decimal("1")), r"value\.sku: the string holds '\\x00'"),
    ],
)
def test_encode_refuses_nul_and_lone_surrogates_naming_the_path(value: object, path: str) -> None:
    with pytest.raises(SerializationError, match=f"cannot encode {path}"):
        encode(value)


def test_encode_refuses_nul_inside_a_pydantic_model() -> None:
    pydantic = pytest.importorskip("pydantic")

    class Note(pydantic.BaseModel):  # type: ignore[name-defined,misc]
        lines: list[str]

    with pytest.raises(SerializationError, match=r"cannot encode value\[\'lines\'\]\[1\]"):
        encode(Note(lines=["fine", "nul\x00"]))


def test_a_decode_mismatch_carries_its_path_and_problem() -> None:
    with pytest.raises(SerializationError) as mismatch:
        decode({"sku": "mug", "price": "x"}, Item, path="item")

    assert mismatch.value.path == "item.price"
    assert mismatch.value.problem is not None
    assert mismatch.value.problem.startswith("expected decimal.Decimal: ")
    with pytest.raises(SerializationError) as unsupported:
        decode(1, complex)
    assert (unsupported.value.path, unsupported.value.problem) == (None, None)

"""Jinja2 with a budget: the sandbox stops code, this also stops cost.

`jinja2.sandbox.SandboxedEnvironment` keeps a template away from Python's internals, but not
from the machine: `{{ "x" * 10**9 }}` allocates a gigabyte (when the template *compiles*: the
code generator folds constant expressions), `{{ 9**(9**9) }}` computes a number of a billion
bits, two nested `range(100000)` loops run 10^10 times, a macro that calls itself twice per
level runs 2^n times. `LimitedSandbox` is the sandbox with limits on all of that, for operators'
message templates (the notifier renders them; the console previews them):

- **No evaluation at compile time.** Every arithmetic operator is intercepted
  (`intercepted_binops`), which also makes Jinja2 refuse to fold it into a constant
  (`BinExpr.as_const`); the optimizer is off (`optimized=False`) and `finalize` takes the
  context, so neither filters nor outputs are folded either. Compiling costs what parsing costs.
- **Sizes are checked before a value is made.** `*`, `**`, `+`, `%`, `~` (concatenation), the
  string methods and filters that pad, repeat, join or format, and `range()` compute the size of
  their result first and refuse anything over the limits (a value of `value_weight`, a range of
  `range_items`, an integer of `int_bits`). A value's size (`weight`) counts every character
  and item reachable from it, so a list holding the same long string many times is as big as its
  printed text. Templates may not mutate lists and dicts (`ImmutableSandboxedEnvironment`).
- **Every step is counted and timed.** Each loop iteration, call (macros included), filter,
  operator, attribute lookup and output ticks a per-rendering budget: past `seconds` of wall time
  or `steps` ticks the rendering raises `RenderLimitExceeded`, at the template's next step.
  Macro calls nest at most `call_depth` deep. Everything the rendering produces is charged to
  `work_weight`, so text repeated by loops inside macros or `{% set %}` blocks is bounded too,
  and the output of one rendering is at most `output_chars`.
- **Off the event loop.** `run_off_loop` renders in a small pool of worker threads, so a costly
  template delays no request. A thread cannot be killed: the limits above are what stop a
  rendering, from inside, at its next step; the coroutine waiting for it also gives up a few
  seconds after the time limit, in case a thread is ever stuck in a single long C call (the
  size checks exist so that no operation a template can reach is that long; one that did would
  also hold the GIL while it runs).

Only jinja2 and the standard library are used here, so that whoever renders these templates (the
console's preview too) renders them the same way.
"""

from __future__ import annotations

import asyncio
import functools
import re
import string
import threading
import time
import types
from collections import abc
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from jinja2 import nodes, pass_context
from jinja2.environment import Template
from jinja2.exceptions import SecurityError
from jinja2.runtime import Context, Undefined, markup_join, str_join
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import Namespace
from jinja2.visitor import NodeTransformer

T = TypeVar("T")


@dataclass(frozen=True)
class Limits:
    """What one rendering may cost. The defaults are far above what a message needs (an SMS is a
    few hundred characters, an email a few thousand) and far below what hurts a service."""

    seconds: float = 1.0  # wall time of one rendering (subject and body together)
    output_chars: int = 64 * 1024  # the rendered text of one template
    steps: int = 100_000  # loop iterations, calls, filters, operators, lookups, outputs
    range_items: int = 10_000  # the longest range()
    value_weight: int = 256 * 1024  # the largest single value (characters and items)
    work_weight: int = 4 * 1024 * 1024  # everything one rendering produces, together
    int_bits: int = 4096  # the largest integer arithmetic may make (about 1,200 digits)
    call_depth: int = 50  # macros calling macros


DEFAULT_LIMITS = Limits()


class RenderLimitExceeded(SecurityError):
    """A template needs more than the rendering limits allow. `limit` names which one; the
    message quotes the limit, never a value of the template's context."""

    def __init__(self, limit: str, message: str) -> None:
        super().__init__(message)
        self.limit = limit


# ---------------------------------------------------------------------------------------------
# The budget of the rendering running in this thread
# ---------------------------------------------------------------------------------------------


class _Budget:
    __slots__ = ("deadline", "depth", "limits", "steps", "work")

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.deadline = time.monotonic() + limits.seconds
        self.steps = limits.steps
        self.work = limits.work_weight
        self.depth = 0

    def tick(self) -> None:
        self.steps -= 1
        if self.steps < 0:
            raise RenderLimitExceeded(
                "steps", f"the template takes more than {self.limits.steps} steps to render"
            )
        if time.monotonic() > self.deadline:
            raise RenderLimitExceeded(
                "time", f"the template takes longer than {self.limits.seconds:g} s to render"
            )

    def charge(self, weight: int) -> None:
        self.work -= weight
        if self.work < 0:
            raise RenderLimitExceeded(
                "work",
                f"the template produces more than {self.limits.work_weight} characters "
                "while it renders",
            )


_local = threading.local()


def _budget(limits: Limits) -> _Budget:
    """The budget of the rendering in progress; outside one (a template used in some other
    way), a fresh one, so that each operation is still checked on its own."""
    active: _Budget | None = getattr(_local, "budget", None)
    return active if active is not None else _Budget(limits)


class _Active:
    """`with budget(limits):` one budget for everything rendered inside (nested: the outer)."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.owner = False

    def __enter__(self) -> _Budget:
        active: _Budget | None = getattr(_local, "budget", None)
        if active is not None:
            return active
        self.owner = True
        _local.budget = _Budget(self.limits)
        return _local.budget  # type: ignore[no-any-return]

    def __exit__(self, *exc: object) -> None:
        if self.owner:
            _local.budget = None


def budget(limits: Limits = DEFAULT_LIMITS) -> _Active:
    return _Active(limits)


# ---------------------------------------------------------------------------------------------
# Sizes
# ---------------------------------------------------------------------------------------------
_MAX_NESTING = 32


def weight(value: Any, limit: int) -> int:
    """How big a value is when printed or copied: characters of strings, items of containers
    (and what they hold, however often the same object is held), digits of numbers. Counting
    stops soon after `limit`, so this costs at most about `limit` steps."""
    total = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (str, bytes, bytearray)):
            total += len(item)
        elif item is None or isinstance(item, (bool, float, Undefined)):
            total += 1
        elif isinstance(item, int):
            total += item.bit_length() // 3 + 1
        elif isinstance(item, dict):
            total += len(item)
            if depth < _MAX_NESTING:
                for k, v in item.items():
                    stack.append((k, depth + 1))
                    stack.append((v, depth + 1))
                    if len(stack) > limit:
                        return limit + 1
        elif isinstance(item, (list, tuple, set, frozenset, abc.KeysView, abc.ValuesView)):
            total += len(item)
            if depth < _MAX_NESTING and total <= limit:
                stack.extend((v, depth + 1) for v in item)
        elif isinstance(item, abc.ItemsView):
            total += len(item)
            if depth < _MAX_NESTING and total <= limit:
                stack.extend((v, depth + 1) for pair in item for v in pair)
        elif isinstance(item, Namespace):
            stack.append((object.__getattribute__(item, "_Namespace__attrs"), depth + 1))
        else:  # ranges, macros, loops, iterators, cyclers...: small until iterated
            total += 16
        if total > limit:
            return total
    return total


def _plain_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _too_big(what: str, limits: Limits) -> RenderLimitExceeded:
    return RenderLimitExceeded(
        "value", f"{what} would make a value of more than {limits.value_weight} characters"
    )


_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[#0\- +]*(\*|\d+)?(?:\.(\*|\d+))?[hlL]?[a-zA-Z%]?")


def _check_percent_format(fmt: str, limits: Limits) -> None:
    """`"%999999999s" % x` would pad to a gigabyte: widths and precisions are checked."""
    for match in _PERCENT_SPEC.finditer(fmt):
        for number in match.groups():
            if number == "*" or (number and (len(number) > 9 or int(number) > limits.value_weight)):
                raise _too_big("a % format with this width", limits)


def _check_brace_format(fmt: str, limits: Limits) -> None:
    """`"{:>999999999}".format(x)` likewise; widths taken from the arguments are refused."""
    try:
        parsed = list(string.Formatter().parse(fmt))
    except ValueError:
        return  # the call itself fails with the parse error
    for _, _, spec, _ in parsed:
        if not spec:
            continue
        if "{" in spec:
            raise RenderLimitExceeded(
                "value", "a format width or precision must be written in the template"
            )
        for number in re.findall(r"\d+", spec):
            if len(number) > 9 or int(number) > limits.value_weight:
                raise _too_big("a format with this width", limits)


# ---------------------------------------------------------------------------------------------
# The environment
# ---------------------------------------------------------------------------------------------


class _LimitedIterator:
    """What a `{% for %}` loop (and a lazy filter's result) iterates: each item ticks the
    budget and charges the loop body's fixed text, which is output once per item."""

    __slots__ = ("_cost", "_it", "_limits")

    def __init__(self, iterable: Any, cost: int, limits: Limits) -> None:
        self._it = iter(iterable)
        self._cost = cost
        self._limits = limits

    def __iter__(self) -> _LimitedIterator:
        return self

    def __next__(self) -> Any:
        item = next(self._it)
        spent = _budget(self._limits)
        spent.tick()
        if self._cost:
            spent.charge(self._cost)
        return item


def _text_in(body: list[nodes.Node]) -> int:
    """The fixed text a loop body outputs per iteration (an upper bound: both branches of an
    `if` count). Inner loops charge their own; macro and call bodies are charged when called."""
    total = 0
    stack: list[nodes.Node] = list(body)
    while stack:
        node = stack.pop()
        if isinstance(node, nodes.For):
            stack.extend(node.else_)
            continue
        if isinstance(node, (nodes.Macro, nodes.CallBlock)):
            continue
        if isinstance(node, nodes.TemplateData):
            total += len(node.data)
        stack.extend(node.iter_child_nodes())
    return total


class _Guard(NodeTransformer):
    """Rewrites the parsed template: `a ~ b` becomes a checked concatenation and every loop
    iterates through `_LimitedIterator`."""

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        self.generic_visit(node)
        return nodes.Call(
            nodes.EnvironmentAttribute("limited_concat", lineno=node.lineno),
            list(node.nodes),
            [],
            None,
            None,
            lineno=node.lineno,
        )

    def visit_For(self, node: nodes.For) -> nodes.Node:
        self.generic_visit(node)
        node.iter = nodes.Call(
            nodes.EnvironmentAttribute("limited_iter", lineno=node.lineno),
            [node.iter, nodes.Const(_text_in(node.body), lineno=node.lineno)],
            [],
            None,
            None,
            lineno=node.lineno,
        )
        return node


# Filters whose result can be much larger than their input: input sizes multiply (and for the
# width filters, a number is a size too).
_AMPLIFYING_FILTERS = frozenset({"format", "join", "replace", "urlize", "wordwrap", "xmlattr"})
_WIDTH_FILTERS = frozenset({"center", "indent", "tojson"})
# Filters taking a count of items to make.
_COUNT_FILTERS = frozenset({"batch", "slice"})
# str methods whose result can be much larger than the string and its arguments' sizes.
_AMPLIFYING_METHODS = frozenset({"join", "replace", "translate", "format", "format_map"})


class _LimitedTemplate(Template):
    def render(self, *args: Any, **kwargs: Any) -> str:
        """As `Template.render`, under a budget and with the output capped."""
        environment: LimitedSandbox = self.environment  # type: ignore[assignment]
        limits = environment.limits
        with budget(limits):
            context = self.new_context(dict(*args, **kwargs))
            parts: list[str] = []
            size = 0
            try:
                for part in self.root_render_func(context):
                    size += len(part)
                    if size > limits.output_chars:
                        raise RenderLimitExceeded(
                            "output",
                            f"the template renders more than {limits.output_chars} characters",
                        )
                    parts.append(part)
            except Exception:
                self.environment.handle_exception()
            return "".join(parts)


class LimitedSandbox(ImmutableSandboxedEnvironment):
    """`ImmutableSandboxedEnvironment` with the limits of this module. Use it like any
    environment (`from_string(...).render(...)`); render through `run_off_loop` from async code.
    Filters may be added to `filters` after it is made: they are guarded when a template that
    uses them compiles."""

    intercepted_binops = frozenset({"+", "-", "*", "/", "//", "%", "**"})
    template_class = _LimitedTemplate

    def __init__(self, *args: Any, limits: Limits = DEFAULT_LIMITS, **kwargs: Any) -> None:
        kwargs["optimized"] = False  # no constant folding: compiling evaluates nothing
        kwargs["finalize"] = self._finalize
        super().__init__(*args, **kwargs)
        self.limits = limits
        self.globals["range"] = self._range
        self.globals.pop("lipsum", None)  # lipsum(n) writes n paragraphs in one call
        self._guard_filters()

    # -- what the compiled template calls --------------------------------------------------------

    def _spend(self) -> _Budget:
        spent = _budget(self.limits)
        spent.tick()
        return spent

    @pass_context
    def _finalize(self, context: Context, value: Any) -> Any:
        """Every `{{ ... }}` output: checked before it becomes text."""
        spent = self._spend()
        size = weight(value, self.limits.output_chars)
        if size > self.limits.output_chars:
            raise RenderLimitExceeded(
                "output", f"an output would be longer than {self.limits.output_chars} characters"
            )
        spent.charge(size)
        return value

    def _range(self, *args: int) -> range:
        numbers = range(*args)
        try:
            count = len(numbers)
        except OverflowError:
            count = self.limits.range_items + 1
        if count > self.limits.range_items:
            raise RenderLimitExceeded(
                "range", f"range() may make at most {self.limits.range_items} numbers"
            )
        return numbers

    def limited_iter(self, iterable: Any, cost: int) -> _LimitedIterator:
        return _LimitedIterator(iterable, cost, self.limits)

    def limited_concat(self, *values: Any) -> str:
        limits = self.limits
        if weight(values, limits.value_weight) > limits.value_weight:  # all together
            raise _too_big("joining these with ~", limits)
        joined = markup_join(values) if self.autoescape else str_join(values)
        _budget(limits).charge(len(joined))
        return joined

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        spent = self._spend()
        limits = self.limits
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if _plain_int(times) and isinstance(seq, (str, bytes, list, tuple)):
                    if times > 0 and weight(seq, limits.value_weight) * times > limits.value_weight:
                        raise _too_big("this repetition", limits)
            if _plain_int(left) and _plain_int(right):
                if left.bit_length() + right.bit_length() > limits.int_bits:
                    raise self._too_large_number()
        elif operator == "**":
            if _plain_int(left) and _plain_int(right) and right > 0 and abs(left) > 1:
                if right > limits.int_bits or abs(left).bit_length() * right > limits.int_bits:
                    raise self._too_large_number()
        elif operator == "+":
            if isinstance(left, (str, bytes, list, tuple)) and isinstance(
                right, (str, bytes, list, tuple)
            ):
                size = weight(left, limits.value_weight) + weight(right, limits.value_weight)
                if size > limits.value_weight:
                    raise _too_big("this sum", limits)
        elif operator == "%" and isinstance(left, str):
            _check_percent_format(left, limits)
            self._check_product(left, [right])
        result = self.binop_table[operator](left, right)
        if not isinstance(result, (int, float)):
            spent.charge(self._checked_size(result))
        return result

    def _too_large_number(self) -> RenderLimitExceeded:
        return RenderLimitExceeded(
            "number", f"the arithmetic would make a number of more than {self.limits.int_bits} bits"
        )

    def getattr(self, obj: Any, attribute: str) -> Any:
        self._spend()
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        self._spend()
        return super().getitem(obj, argument)

    def call(self, context: Context, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        """Every call from a template: functions, methods, macros, `caller()`, `loop()`."""
        spent = self._spend()
        if not self.is_safe_callable(obj):
            raise SecurityError(f"{obj!r} is not safely callable")
        func = getattr(obj, "__func__", None)
        if func is LimitedSandbox.limited_iter or func is LimitedSandbox.limited_concat:
            return context.call(obj, *args, **kwargs)  # they check their own inputs
        self._check_call(obj, args, kwargs)
        spent.depth += 1
        try:
            if spent.depth > self.limits.call_depth:
                raise RenderLimitExceeded(
                    "depth", f"macros may call each other at most {self.limits.call_depth} deep"
                )
            result = context.call(obj, *args, **kwargs)
        finally:
            spent.depth -= 1
        return self._checked(result)

    # -- checks ------------------------------------------------------------------------------------

    def _arguments(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Any]:
        values = list(args)
        values.extend(v for k, v in kwargs.items() if k not in ("_loop_vars", "_block_vars"))
        return values

    def _check_inputs(self, values: list[Any]) -> None:
        """What a call or filter is given, all together (so that sizing them costs at most
        about `value_weight` steps, however many arguments there are)."""
        limits = self.limits
        if weight(values, limits.value_weight) > limits.value_weight:
            raise RenderLimitExceeded(
                "value", f"the values given are larger than {limits.value_weight} characters"
            )

    def _check_product(self, base: Any, others: list[Any], ints_count: bool = False) -> None:
        """For operations whose result may be as big as the product of their inputs' sizes
        (`s.replace("", t)`, `t.join(items)`, `"{0}{0}{0}".format(t)`)."""
        limits = self.limits
        numbers = sum((abs(o) if ints_count else 1) for o in others if _plain_int(o))
        rest = weight([o for o in others if not _plain_int(o)], limits.value_weight)
        size = weight(base, limits.value_weight)
        if size > limits.value_weight or size * max(1, numbers + rest) > limits.work_weight:
            raise _too_big("this operation", limits)

    def _check_call(self, obj: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        limits = self.limits
        values = self._arguments(args, kwargs)
        wrapped = getattr(obj, "__wrapped__", None)  # the sandbox wraps str.format
        method = wrapped if isinstance(wrapped, types.BuiltinMethodType) else obj
        owner = getattr(method, "__self__", None)
        self._check_inputs(values)
        if isinstance(method, (types.BuiltinMethodType, types.MethodWrapperType)) and not (
            isinstance(owner, types.ModuleType)
        ):
            self._check_inputs([owner])
            name = getattr(method, "__name__", "")
            if name in ("format", "format_map") and isinstance(owner, str):
                _check_brace_format(owner, limits)
            elif name != "get":
                # ljust, center, zfill, to_bytes, expandtabs...: a number asks for that much
                for value in values:
                    if _plain_int(value) and abs(value) > limits.value_weight:
                        raise _too_big(f"{name}() with this number", limits)
            if name == "expandtabs" and isinstance(owner, (str, bytes)):
                size = self._tabs(owner, values)
                if size > limits.value_weight:
                    raise _too_big("expandtabs()", limits)
            if name in _AMPLIFYING_METHODS and isinstance(owner, (str, bytes)):
                self._check_product(owner, values)

    @staticmethod
    def _tabs(text: str | bytes, values: list[Any]) -> int:
        size = values[0] if values and _plain_int(values[0]) else 8
        tab = "\t" if isinstance(text, str) else b"\t"
        return len(text) + text.count(tab) * max(size, 0)  # type: ignore[arg-type]

    def _checked_size(self, value: Any) -> int:
        size = weight(value, self.limits.value_weight)
        if size > self.limits.value_weight:
            raise RenderLimitExceeded(
                "value", f"a value would be larger than {self.limits.value_weight} characters"
            )
        return size

    def _checked(self, result: Any) -> Any:
        """A result: an iterator iterates under the budget; anything else is sized and charged."""
        if isinstance(result, abc.Iterator) and not isinstance(result, _LimitedIterator):
            return _LimitedIterator(result, 0, self.limits)
        if not isinstance(result, _LimitedIterator):
            _budget(self.limits).charge(self._checked_size(result))
        return result

    def _guard_filters(self) -> None:
        for name, func in list(self.filters.items()):
            if not getattr(func, "_loyalty_limited", False):
                self.filters[name] = self._guarded_filter(name, func)

    def _guarded_filter(self, name: str, func: Callable[..., Any]) -> Callable[..., Any]:
        passes_first = hasattr(func, "jinja_pass_arg")  # context, eval context or environment

        @functools.wraps(func)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            self._spend()
            values = self._arguments(args[1:] if passes_first else args, kwargs)
            self._check_inputs(values)
            if values and (name in _AMPLIFYING_FILTERS or name in _WIDTH_FILTERS):
                self._check_product(values[0], values[1:], ints_count=name in _WIDTH_FILTERS)
                if name == "format" and isinstance(values[0], str):
                    _check_percent_format(values[0], self.limits)
            if name in _COUNT_FILTERS:
                for value in values[1:]:
                    if _plain_int(value) and value > self.limits.range_items:
                        raise RenderLimitExceeded(
                            "range", f"{name} may make at most {self.limits.range_items} items"
                        )
            return self._checked(func(*args, **kwargs))

        guarded._loyalty_limited = True  # type: ignore[attr-defined]
        return guarded

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        self._guard_filters()  # filters added since the environment was made
        tree = super()._parse(source, name, filename)
        return _Guard().visit(tree)  # type: ignore[no-any-return]


# ---------------------------------------------------------------------------------------------
# Off the event loop
# ---------------------------------------------------------------------------------------------
_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()
_GRACE_SECONDS = 4.0


def _pool() -> ThreadPoolExecutor:
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="template-render")
        return _executor


async def run_off_loop(
    fn: Callable[..., T], *args: Any, limits: Limits = DEFAULT_LIMITS, **kwargs: Any
) -> T:
    """`fn(*args, **kwargs)` (a rendering) in a template worker thread, under one budget. The
    rendering stops itself at its time limit; this waits a few seconds more at most, then gives
    up waiting (RenderLimitExceeded "time")."""

    def run() -> T:
        with budget(limits):
            return fn(*args, **kwargs)

    future = asyncio.get_running_loop().run_in_executor(_pool(), run)
    try:
        return await asyncio.wait_for(future, limits.seconds + _GRACE_SECONDS)
    except TimeoutError:
        raise RenderLimitExceeded(
            "time", f"the template takes longer than {limits.seconds:g} s to render"
        ) from None

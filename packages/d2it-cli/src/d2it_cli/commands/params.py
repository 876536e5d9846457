"""Click option types shared by every command: finite numbers with ranges, counts, seeds and devices.

A bad value is a click usage error naming the option ("invalid value for '--lr': ..."), raised
while parsing, before any work starts.
"""

import math

import click

SEED_LIMIT = 2**64  # torch.manual_seed accepts seeds below 2**64
# sane bounds, checked while parsing: no device holds a larger (micro-)batch; more images than MAX_COUNT would
# overflow the index and label arrays sized by them (commands also check a --num against memory before drawing)
MAX_BATCH = 2**20
MAX_COUNT = 2**40


class FiniteFloat(click.ParamType):
    """A finite float (no nan/inf) within optional bounds; `min_open`/`max_open` exclude the bound itself."""

    name = "float"

    def __init__(self, min=None, max=None, min_open=False, max_open=False):
        self.min, self.max, self.min_open, self.max_open = min, max, min_open, max_open

    def _describe(self) -> str:
        parts = []
        if self.min is not None:
            parts.append(f"{'>' if self.min_open else '>='} {self.min:g}")
        if self.max is not None:
            parts.append(f"{'<' if self.max_open else '<='} {self.max:g}")
        return "a finite number" + (" " + " and ".join(parts) if parts else "")

    def convert(self, value, param, ctx):
        if isinstance(value, float) and math.isfinite(value):
            number = value
        else:
            try:
                number = float(value)
            except (TypeError, ValueError):
                self.fail(f"{value!r} is not a number", param, ctx)
        ok = math.isfinite(number)
        if ok and self.min is not None:
            ok = number > self.min if self.min_open else number >= self.min
        if ok and self.max is not None:
            ok = number < self.max if self.max_open else number <= self.max
        if not ok:
            self.fail(f"{value!r} is not {self._describe()}", param, ctx)
        return number

    def __repr__(self):
        return f"FiniteFloat({self._describe()})"


class Device(click.ParamType):
    """A torch device name that exists on this machine: cpu, cuda, cuda:N (N < the GPU count), mps."""

    name = "device"

    def convert(self, value, param, ctx):
        import torch  # here, not at import time: `d2it --help` stays fast

        text = str(value).strip()
        try:
            device = torch.device(text)
        except (RuntimeError, ValueError):
            self.fail(f"{value!r} is not a device; use cpu, cuda, cuda:N or mps", param, ctx)
        if device.type == "cpu":
            return text
        if device.type == "cuda":
            if not torch.cuda.is_available():
                self.fail(f"{value!r} was asked for but CUDA is not available on this machine", param, ctx)
            count = torch.cuda.device_count()
            if device.index is not None and device.index >= count:
                self.fail(f"{value!r} does not exist: this machine has {count} CUDA device(s)", param, ctx)
            return text
        if device.type == "mps":
            if not torch.backends.mps.is_available():
                self.fail(f"{value!r} was asked for but MPS is not available on this machine", param, ctx)
            return text
        self.fail(f"{value!r} is not supported; use cpu, cuda, cuda:N or mps", param, ctx)


FINITE = FiniteFloat()
POSITIVE_FLOAT = FiniteFloat(min=0, min_open=True)
NON_NEGATIVE_FLOAT = FiniteFloat(min=0)
UNIT_INTERVAL = FiniteFloat(min=0, max=1)
OPEN_UNIT_INTERVAL = FiniteFloat(min=0, max=1, min_open=True, max_open=True)
POSITIVE_INT = click.IntRange(min=1)
NON_NEGATIVE_INT = click.IntRange(min=0)
SEED = click.IntRange(min=0, max=SEED_LIMIT - 1)
BATCH = click.IntRange(min=1, max=MAX_BATCH)
COUNT = click.IntRange(min=1, max=MAX_COUNT)
DEVICE = Device()

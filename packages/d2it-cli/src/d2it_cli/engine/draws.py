"""Training randomness keyed by sample: a function of (run seed, optimizer step, purpose, offset in the global batch).

Per optimizer step and purpose, one generator on the training device draws the tensor for the
whole global batch (G rows) and each micro-batch takes the rows of its own offsets (rank r,
micro-batch m: offsets m·B·W + r·B onwards). So a sample's timestep, noise, posterior draw,
label dropout and masks do not depend on the number of ranks, the per-rank batch or gradient
accumulation, and a run resumed on another world size is the same run up to floating-point
reduction order. On a GPU this costs one kernel per purpose and step (noise for G latents is a
few MB); per-sample generators would cost a generator and a kernel launch per sample.
"""

import inspect
import zlib

import torch

from d2it.errors import D2itError


class SampleDraws:
    """Random rows for the current micro-batch, drawn over the global batch of the current optimizer step."""

    def __init__(self, seed: int, global_batch: int, device):
        self.seed, self.global_batch, self.device = int(seed), int(global_batch), torch.device(device)
        self.step, self.start = 0, 0
        self._cache: dict[tuple, torch.Tensor] = {}

    def focus(self, step: int, start: int):
        """Point at the micro-batch whose first sample has offset `start` in the global batch of step `step`."""
        if step != self.step:
            self._cache.clear()
        self.step, self.start = int(step), int(start)

    def generator(self, purpose: str) -> torch.Generator:
        """A fresh generator on the device, seeded by (run seed, step, purpose) only."""
        key = zlib.crc32(purpose.encode())
        seed = (((self.seed % 2**61) * 1_000_003 + self.step) * 1_000_033 + key) % (2**63 - 1)
        return torch.Generator(device=self.device).manual_seed(seed)

    def _window(self, n: int) -> slice:
        if self.start + n > self.global_batch:
            raise D2itError(
                f"rows {self.start}..{self.start + n - 1} lie outside the global batch of {self.global_batch}"
            )
        return slice(self.start, self.start + n)

    def _full(self, key: tuple, make) -> torch.Tensor:
        full = self._cache.get(key)
        if full is None:  # drawn once per step, shared by the step's micro-batches
            full = self._cache[key] = make(self.generator(repr(key)))
        return full

    def _rows(self, key: tuple, n: int, make) -> torch.Tensor:
        return self._full(key, make)[self._window(n)]

    def rand(self, purpose: str, n: int, *shape: int) -> torch.Tensor:
        """(n, *shape) uniform [0, 1) float32 draws of this micro-batch's samples."""
        return self.rand_all(purpose, *shape)[self._window(n)]

    def rand_all(self, purpose: str, *shape: int) -> torch.Tensor:
        """(G, *shape) uniform draws of the whole global batch (what `rand` slices), e.g. to count over it."""
        size = (self.global_batch, *shape)
        return self._full(("rand", purpose, shape), lambda g: torch.rand(size, generator=g, device=self.device))

    def randn(self, purpose: str, n: int, *shape: int) -> torch.Tensor:
        """(n, *shape) standard normal float32 draws of this micro-batch's samples."""
        size = (self.global_batch, *shape)
        return self._rows(("randn", purpose, shape), n, lambda g: torch.randn(size, generator=g, device=self.device))

    def randint(self, purpose: str, high: int, n: int, *shape: int) -> torch.Tensor:
        """(n, *shape) int64 draws in [0, high) of this micro-batch's samples."""
        size = (self.global_batch, *shape)
        return self._rows(
            ("randint", purpose, high, shape),
            n,
            lambda g: torch.randint(0, high, size, generator=g, device=self.device),
        )

    def through(self, purpose: str, fn, *tensors: torch.Tensor):
        """Rows of `fn(*global_tensors, generator=g)` for this micro-batch, `fn` row-wise and drawing with `g`.

        Each tensor (or list of tensors) of this micro-batch is placed at its rows of a global-batch
        tensor (zeros elsewhere), so a component that draws for its whole input with one generator
        (a VAE's posterior sample, multi-grained diffusion noise) makes the same draw for a sample
        whatever the split of the global batch.
        """
        n = _rows_of(tensors[0])
        window = self._window(n)

        def spread(t):
            if isinstance(t, (list, tuple)):
                return type(t)(spread(x) for x in t)
            full = t.new_zeros((self.global_batch, *t.shape[1:]))
            full[window] = t
            return full

        return fn(*(spread(t) for t in tensors), generator=self.generator(f"through:{purpose}"))[window]


def _rows_of(t) -> int:
    return _rows_of(t[0]) if isinstance(t, (list, tuple)) else t.shape[0]


def accepts(fn, name: str) -> bool:
    """True when callable `fn` takes a parameter called `name` (a component's optional keyword)."""
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def label_drop(draws: SampleDraws, model, fn, n: int) -> dict:
    """`force_drop_ids` keyed by sample for `fn` (a call into `model`), or {} where the model draws its own."""
    p = getattr(model, "label_dropout", None)
    if not p or not accepts(fn, "force_drop_ids"):
        return {}
    return {"force_drop_ids": (draws.rand("label-drop", n) < p).long()}

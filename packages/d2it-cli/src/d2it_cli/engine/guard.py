"""Never write from a diverged state: the non-finite loss guard and the weight blow-up guard.

A device-side record of the first step with a non-finite value is kept without a host sync and
read on the CPU every step, and on GPUs at log intervals and before anything is written.
"""

import torch

from d2it import dist
from d2it.errors import CheckpointError, D2itError
from d2it_cli.engine import checkpoint as ckpt

MAX_SKIPPED = 10  # consecutive skipped steps after which --nan-policy skip-step gives up
NO_STEP = 2**62  # "no non-finite step yet" in the device-side record
# weights whose L2 norm (one per trained module and EMA copy) grew more than GROWTH_LIMIT times over the weights the
# run started from (the system's, or the resumed checkpoint's: the last good write; norms below 1 count as 1) are
# never written; no optimizer step that trains gets there, an exploding one does
GROWTH_LIMIT = 1e4


class TrainingDiverged(D2itError):
    """The loss or the weights became non-finite; nothing was written from the diverged state."""


def all_finite(values, device) -> torch.Tensor:
    """A device bool: every value is finite (no host sync)."""
    flags = [torch.isfinite(torch.as_tensor(v)).all() for v in values]
    if not flags:
        return torch.ones((), dtype=torch.bool, device=device)
    return torch.stack([f.to(device) for f in flags]).all()


def weight_norms(modules: dict, ema: dict) -> dict[str, torch.Tensor]:
    """The L2 norm (float64, on the device) of each trained module's and EMA copy's floating-point tensors."""
    groups = {name: [*m.parameters(), *m.buffers()] for name, m in modules.items()}
    groups.update({f"{name} (EMA)": list(e.shadow.values()) for name, e in ema.items()})
    norms = {}
    for name, tensors in groups.items():
        floats = [t.detach() for t in tensors if t.is_floating_point()]
        squares = [torch.linalg.vector_norm(t, dtype=torch.float64) ** 2 for t in floats]
        norms[name] = torch.stack(squares).sum().sqrt() if squares else torch.zeros((), dtype=torch.float64)
    return norms


class DivergenceGuard:
    """Stops every rank at a non-finite loss or non-finite / exploded weights, naming the last good checkpoint."""

    def __init__(self, run_dir, device, nan_policy: str = "stop"):
        self.run_dir, self.device, self.nan_policy = run_dir, device, nan_policy
        self.first_bad = torch.full((), NO_STEP, dtype=torch.int64, device=device)
        self.every_step = device.type != "cuda" or nan_policy == "skip-step"
        self.skipped_in_a_row = 0
        self.start_norms: dict[str, torch.Tensor] = {}

    def start(self, modules: dict, ema: dict):
        """Remember the norms of the weights the run starts from (the blow-up guard's reference)."""
        self.start_norms = weight_norms(modules, ema)

    def check_step(self, values, step: int) -> bool:
        """Record (device-side) the first step with a non-finite value; True when this step is to be skipped."""
        finite = all_finite(values, self.device)
        if self.nan_policy == "skip-step":
            skip = not dist.all_true(finite)
            self.skipped_in_a_row = self.skipped_in_a_row + 1 if skip else 0
            if self.skipped_in_a_row > MAX_SKIPPED:
                self.first_bad.fill_(step + 1 - MAX_SKIPPED)
                self.raise_if_diverged(f"{MAX_SKIPPED} steps in a row were skipped")
            return skip
        seen = finite | (self.first_bad < NO_STEP)
        self.first_bad = torch.where(seen, self.first_bad, torch.full_like(self.first_bad, step + 1))
        if self.every_step:
            self.raise_if_diverged()
        return False

    def raise_if_diverged(self, why: str = ""):
        """Stop (all ranks) when a step's loss was non-finite, naming the step and the last good checkpoint."""
        first = dist.min_int(self.first_bad)
        if first >= NO_STEP:
            return
        reason = why or f"the loss became non-finite at step {first}"
        raise TrainingDiverged(
            f"training diverged: {reason}; nothing was written from the diverged weights and {self.last_good()} "
            "(resume from it with a lower --lr or a --max-grad-norm, or train with --nan-policy skip-step)"
        )

    def check_weights(self, modules: dict, ema: dict, step: int):
        """Refuse to write when a loss was non-finite or a weight (or EMA copy) is NaN, infinite or blew up."""
        self.raise_if_diverged()
        tensors = [t for m in modules.values() for t in (*m.parameters(), *m.buffers())]
        tensors += [t for e in ema.values() for t in e.shadow.values()]
        floats = [t for t in tensors if t.is_floating_point()]
        if floats and not dist.all_true(all_finite(floats, self.device)):
            raise TrainingDiverged(
                f"training diverged: the weights hold NaN or infinite values at step {step} although the loss "
                f"was finite; nothing was written from them and {self.last_good()} (lower --lr or set --max-grad-norm)"
            )
        self._check_growth(weight_norms(modules, ema), step)

    def _check_growth(self, now: dict, step: int):
        names = [n for n in self.start_norms if n in now]
        if not names:
            return
        start = self.start_norms
        ratio = torch.stack([now[n].to(self.device) / start[n].to(self.device).clamp(min=1.0) for n in names])
        if dist.all_true((ratio <= GROWTH_LIMIT).all()):
            return
        worst = names[int(ratio.argmax())]
        raise TrainingDiverged(
            f"training diverged: the weights of {worst} grew from norm {float(start[worst]):.3g} to "
            f"{float(now[worst]):.3g} by step {step} (more than {GROWTH_LIMIT:.0e} times, a blow-up); nothing "
            f"was written from them and {self.last_good()} (lower --lr or set --max-grad-norm)"
        )

    def last_good(self) -> str:
        """Where the run can be resumed from, in words."""
        try:
            last = ckpt.latest_checkpoint(self.run_dir)
        except CheckpointError:
            last = None
        return f"the last good checkpoint is {last}" if last else "no checkpoint had been written"

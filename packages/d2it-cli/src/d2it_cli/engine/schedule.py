"""The learning-rate schedule: a linear warm-up to each param group's configured rate, times a batch-size factor."""

from d2it_cli.engine.config import parse_warmup


class WarmupSchedule:
    """Sets every param group's `lr` to its configured rate x `batch_factor` x the warm-up factor of the step.

    The configured rates are the optimizers' at construction (this run's --lr); `batch_factor`, the product of the
    --lr-scale rules applied when the global batch changed on resume, is the schedule's checkpointed state.
    """

    def __init__(self, optimizers: dict, warmup: str, steps_per_epoch: int = 1):
        self.optimizers = optimizers
        self.warmup_steps = parse_warmup(warmup, steps_per_epoch)
        self.base = {k: [g["lr"] for g in o.param_groups] for k, o in optimizers.items()}
        self.batch_factor = 1.0

    def factor(self, step: int) -> float:
        """The warm-up factor of optimizer step `step` (0-based): linear up to 1."""
        return min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps > 0 else 1.0

    def apply(self, step: int) -> float:
        """Set the learning rates of step `step`; returns the warm-up factor."""
        factor = self.factor(step)
        for name, opt in self.optimizers.items():
            for group, base in zip(opt.param_groups, self.base[name]):
                group["lr"] = base * self.batch_factor * factor
        return factor

    def base_lrs(self) -> dict[str, float]:
        """Each optimizer's first group's rate after warm-up."""
        return {k: rates[0] * self.batch_factor for k, rates in self.base.items()}

    def state_dict(self) -> dict:
        """The batch-size factor (the rates themselves are this run's options)."""
        return {"batch_factor": self.batch_factor}

    def load_state_dict(self, state: dict):
        """Restore the batch-size factor."""
        self.batch_factor = float(state.get("batch_factor", 1.0))

"""Hook specifications: one hook per component kind, each returning a list of ComponentSpec."""

import pluggy

PROJECT = "d2it"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

# kind -> hook name; the order is the order `d2it plugins` lists kinds in.
KIND_HOOKS = {
    "vae": "d2it_vaes",
    "regularizer": "d2it_regularizers",
    "grain_coder": "d2it_grain_coders",
    "grain_predictor": "d2it_grain_predictors",
    "backbone": "d2it_backbones",
    "refiner": "d2it_refiners",
    "sampler": "d2it_samplers",
    "schedule": "d2it_schedules",
    "spacing": "d2it_spacings",
    "attention": "d2it_attention",
    "metric": "d2it_metrics",
    "dataset": "d2it_datasets",
    "tracker": "d2it_trackers",
}
KINDS = tuple(KIND_HOOKS)


class D2itSpec:
    """The hooks a d2it plugin may implement."""

    @hookspec
    def d2it_vaes(self):
        """Return VAE specs (factory(config, *, image_size) -> VAE module)."""

    @hookspec
    def d2it_regularizers(self):
        """Return latent regularizer specs (factory(config, *, channels) -> module)."""

    @hookspec
    def d2it_grain_coders(self):
        """Return grain coder specs (factory(config) -> module scoring image regions)."""

    @hookspec
    def d2it_grain_predictors(self):
        """Return grain predictor specs (factory(config, *, grid, grains, num_classes, attention))."""

    @hookspec
    def d2it_backbones(self):
        """Return backbone specs (factory(config, *, input_size, in_channels, num_classes, grains, attention))."""

    @hookspec
    def d2it_refiners(self):
        """Return refiner specs (factory(config, *, backbone, attention) -> content transformer)."""

    @hookspec
    def d2it_samplers(self):
        """Return sampler specs (factory(config) -> sampler)."""

    @hookspec
    def d2it_schedules(self):
        """Return noise schedule specs (factory(config) -> betas as a float64 tensor)."""

    @hookspec
    def d2it_spacings(self):
        """Return timestep spacing specs (factory(config) -> spacing(alphas_cumprod, steps) -> kept steps)."""

    @hookspec
    def d2it_attention(self):
        """Return attention backend specs (factory(config) -> attention function)."""

    @hookspec
    def d2it_metrics(self):
        """Return evaluation metric specs."""

    @hookspec
    def d2it_datasets(self):
        """Return dataset specs (factory(config, *, root, image_size, train) -> torch Dataset)."""

    @hookspec
    def d2it_trackers(self):
        """Return experiment tracker specs (factory(config, *, run_dir, task, settings) -> Tracker)."""

    @hookspec
    def d2it_commands(self, cli):
        """Add click commands to the `d2it` group `cli`."""

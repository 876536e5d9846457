"""d2it-core's built-in components: the attention backends of `d2it.attention`."""

from d2it.hookspecs import hookimpl
from d2it.spec import ComponentSpec

# Factories are "module:attr" references, imported when a backend is built: listing components
# (`d2it plugins`) then imports no torch.
ATTENTION = [
    ComponentSpec(
        "auto", "attention", "d2it.attention:make_auto", summary="xformers on CUDA fp16/bf16 when installed, else sdpa"
    ),
    ComponentSpec("sdpa", "attention", "d2it.attention:make_sdpa", summary="torch scaled_dot_product_attention"),
    ComponentSpec("math", "attention", "d2it.attention:make_math", summary="explicit softmax(QK^T)V reference"),
    ComponentSpec(
        "xformers",
        "attention",
        "d2it.attention:make_xformers",
        summary="xformers memory-efficient attention (CUDA, fp16/bf16)",
    ),
]


@hookimpl
def d2it_attention():
    """The attention backends."""
    return list(ATTENTION)
